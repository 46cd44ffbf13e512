"""No password is ever printed: a sweep of passwords with every URL-special character, blanks,
quotes and non-ASCII, in every DSN form syncd accepts, through every command that prints (logs
at debug, status, verify, rejects, cutover, errors) and the daemon's health endpoints.

The PostgreSQL here asks for the password (SCRAM), so each form must also really carry it:
init and run succeed only when syncd parsed the DSN right.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.integration.operator_support import (
    SecurePostgres,
    end_helpers,
    keyword_dsn,
    leaks,
    open_dir,
    syncd_argv,
    to_toml,
    url_dsn,
)
from tests.pg_tcp import free_port

PASSWORDS = [
    "S3c@retPW!@x",  # the report: redaction stopped at the first @
    "p@ss:w/o?r#d[1]%25$&'()*+,;= end",  # every other URL-special character, a blank
    "quo\"te\\back'slash @ 12",
    "ünïcødé-пароль-密码@/?",
]
FORMS = ["url", "raw-url", "keywords"]


def dsn_for(form: str, port: int, database: str, user: str, password: str) -> str:
    if form == "url":
        return url_dsn(port, database, user=user, password=password)
    if form == "raw-url":
        return url_dsn(port, database, user=user, password=password, encoded=False)
    return keyword_dsn(port, database, user=user, password=password)


CASES = [(i, pw, form) for i, pw in enumerate(PASSWORDS) for form in FORMS
         if not (form == "raw-url" and "%" in pw)]  # "%25" written as it is reads as an escape


def syncd(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(syncd_argv("-c", str(cfg), "--log-level", "debug", *args), capture_output=True,
                          text=True, cwd=REPO, timeout=180)
    if check:
        assert proc.returncode == 0, f"syncd {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())
    except OSError:
        return ""


def daemon_pages(cfg: Path, base: Path, listen: str, helpers: list[Any]) -> list[str]:
    """Start `syncd run` (debug logs), wait until ready, return what its endpoints answer."""
    log = (base / "daemon.log").open("ab")
    daemon = subprocess.Popen(syncd_argv("-c", str(cfg), "--log-level", "debug", "run"), stdout=log,
                              stderr=log, cwd=REPO)
    helpers.append(daemon)
    for _ in range(300):
        if daemon.poll() is not None or '"ready": true' in get(f"http://{listen}/readyz"):
            break
        time.sleep(0.2)
    assert daemon.poll() is None, (base / "daemon.log").read_text()[-2000:]
    return [get(f"http://{listen}{path}") for path in ("/status", "/readyz", "/healthz", "/metrics")]


@pytest.mark.parametrize(("index", "password", "form"), CASES,
                         ids=[f"pw{i}-{form}" for i, _, form in CASES])
async def test_no_password_is_printed(index: int, password: str, form: str,
                                      secure_pg: SecurePostgres) -> None:
    user = f"sweep{index}"
    await secure_pg.create_role(user, password)
    database = await secure_pg.create_database()
    base = open_dir("syncd-redaction-")
    helpers: list[Any] = []
    try:
        db = base / "app.sqlite"
        conn = sqlite3.connect(db)
        conn.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, code VARCHAR(3), name TEXT);"
                           "INSERT INTO users VALUES (1, 'ok', 'a'), (2, 'too long', 'b');")
        conn.close()
        listen = f"127.0.0.1:{free_port()}"
        sections = {"source.sqlite": {"path": str(db)},
                    "target": {"dsn": dsn_for(form, secure_pg.port, database, user, password)},
                    "state": {"dir": str(base / "state")}, "health": {"listen": listen},
                    "cutover": {"app_config": str(base / ".env"), "reload_command": "true"},
                    "cutover.forward": {"DB": "postgres"}, "cutover.rollback": {"DB": "sqlite"}}
        (base / ".env").write_text("DB=sqlite\n")
        cfg = base / "syncd.toml"
        cfg.write_text(to_toml(sections))
        printed: list[str] = []

        def keep(proc: subprocess.CompletedProcess[str]) -> None:
            printed.append(proc.stdout + proc.stderr)

        keep(syncd(cfg, "init"))
        keep(syncd(cfg, "run", "--until-caught-up"))
        for args in (("status",), ("status", "--json"), ("rejects",), ("rejects", "--json")):
            keep(syncd(cfg, *args))
        for args in (("verify",), ("verify", "--json"), ("cutover", "--dry-run")):
            keep(syncd(cfg, *args, check=False))  # a reject (5); no daemon (1)
        # the daemon, its health endpoints, and a cutover that talks to it
        printed += daemon_pages(cfg, base, listen, helpers)
        keep(syncd(cfg, "cutover", "--dry-run", check=False))
        end_helpers(helpers)
        printed.append((base / "daemon.log").read_text(errors="replace"))
        # errors that show the DSN: another port, another database
        for target in (dsn_for(form, 1, database, user, password),
                       dsn_for(form, secure_pg.port, "no_such_db", user, password)):
            sections["target"]["dsn"] = target
            cfg.write_text(to_toml(sections))
            failed = syncd(cfg, "status", check=False)
            assert failed.returncode == 1, failed.stderr
            last = failed.stderr.strip().splitlines()[-1]
            assert last.startswith("syncd: status: PostgreSQL"), failed.stderr
            keep(failed)

        text = "\n".join(printed)
        assert "PostgreSQL unreachable at 127.0.0.1:1/" in text and f"as {user}" in text
        assert not leaks(text, password), f"password printed: {leaks(text, password)}"
    finally:
        end_helpers(helpers)
        await secure_pg.drop_database(database)
        shutil.rmtree(base, ignore_errors=True)
