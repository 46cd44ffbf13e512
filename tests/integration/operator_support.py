"""What the operator-path tests share: a PostgreSQL that checks passwords, DSNs in every form
syncd accepts, `syncd` run as another OS user, a port that never answers, and a fingerprint
of the stores to prove a refused command changed nothing.

The tests' usual server (``pg_dsn``) trusts every connection on a UNIX socket; a password
can only be wrong, and its redaction only proven, on a server that asks for it. This one
listens on 127.0.0.1, trusts ``postgres`` (the tests' own admin) and asks every other role
for its password (SCRAM).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from tests.conftest import REPO
from tests.pg_tcp import TcpPostgres

APP_USER = "app"
PASSWORD = "S3c@ret/Pw?#[x]%21:é 'q\"$&(*)+,;= !"
"""Every character that has a meaning in a URL or a keyword DSN, a blank, quotes, unicode."""

_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


@dataclass
class SecurePostgres:
    server: TcpPostgres

    @property
    def port(self) -> int:
        return self.server.port

    async def create_role(self, name: str, password: str, *, superuser: bool = True) -> None:
        admin = await asyncpg.connect(self.server.dsn)
        try:
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
            verb = "ALTER" if exists else "CREATE"
            literal = "'" + password.replace("'", "''") + "'"
            await admin.execute(f'{verb} ROLE "{name}" LOGIN {"SUPERUSER" if superuser else "NOSUPERUSER"} '
                                f"PASSWORD {literal}")
        finally:
            await admin.close()

    async def create_database(self) -> str:
        name = "op_" + uuid.uuid4().hex[:10]
        admin = await asyncpg.connect(self.server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.server.dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def admin_dsn(self, database: str) -> str:
        return self.server.dsn_for(database)


@contextlib.contextmanager
def secure_postgres() -> Iterator[SecurePostgres]:
    base = Path(tempfile.mkdtemp(prefix="syncd-test-secure-pg-"))
    server = TcpPostgres(base)
    try:
        server.init()
        (server.pgdata / "pg_hba.conf").write_text(_HBA)
        server.start()
        yield SecurePostgres(server)
    finally:
        server.stop()
        server.remove()
        shutil.rmtree(base, ignore_errors=True)


def url_dsn(port: int, database: str, *, user: str = APP_USER, password: str = PASSWORD,
            encoded: bool = True, host: str = "127.0.0.1") -> str:
    """A URL DSN; *encoded* False writes the password as it is (syncd takes the last ``@``)."""
    pw = quote(password, safe="") if encoded else password
    return f"postgresql://{quote(user, safe='')}:{pw}@{host}:{port}/{database}"


def keyword_dsn(port: int, database: str, *, user: str = APP_USER, password: str = PASSWORD,
                host: str = "127.0.0.1") -> str:
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"host={host} port={port} dbname={database} user={user} password={quoted}"


def leaks(text: str, password: str = PASSWORD) -> list[str]:
    """The spellings of *password* found in *text* (none, when syncd redacted it)."""
    forms = {password, quote(password, safe=""), quote(password), json.dumps(password)[1:-1],
             json.dumps(password, ensure_ascii=False)[1:-1]}
    # pieces long enough to be the password and not an ordinary word
    forms |= {p for p in password.replace("/", " ").replace("@", " ").split() if len(p) >= 6}
    return sorted(f for f in forms if f and f in text)


# --- toml ----------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """``{"target": {...}, "target.column_types": {...}}`` as TOML (sections with dotted names)."""
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


# --- processes -----------------------------------------------------------------------------

def syncd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncd.cli", *args]


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


@dataclass(frozen=True)
class OtherUser:
    """An unprivileged OS user to run syncd as (root ignores file permissions)."""

    uid: int
    gid: int
    name: str
    python: str

    def argv(self, *args: str) -> list[str]:
        """`syncd ARGS` for this user: an interpreter it may execute, with this venv's packages."""
        code = ("import site, sys, runpy; site.addsitedir(sys.argv.pop(1)); "
                "sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'syncd'; "
                "runpy.run_module('syncd.cli', run_name='__main__', alter_sys=True)")
        return [self.python, "-c", code, _site_packages(), str(REPO), *args]

    def preexec(self) -> None:
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)


def other_user() -> OtherUser | None:
    """``nobody``, with a Python it can run, when the tests run as root; None otherwise (then
    permissions apply to the tests' own user and a read-only mode is enough)."""
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam("nobody")
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for python in candidates:
        user = OtherUser(entry.pw_uid, entry.pw_gid, entry.pw_name, python)
        try:  # the interpreter, this checkout and its packages must all be readable by that user
            probe = subprocess.run(user.argv("--version"), capture_output=True, preexec_fn=user.preexec,
                                   cwd="/")
        except OSError:
            continue
        if probe.returncode == 0:
            return user
    return None


def open_dir(prefix: str) -> Path:
    """A temp dir other users may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def make_readonly_for(path: Path, user: OtherUser | None) -> None:
    """Make *path* unwritable for whoever runs syncd: root-owned 0755/0644 for *user*, else 0555/0444."""
    if user is None:
        path.chmod(0o555 if path.is_dir() else 0o444)
    else:
        os.chown(path, 0, 0)
        path.chmod(0o755 if path.is_dir() else 0o644)


# --- a port that accepts and never answers -------------------------------------------------

class Blackhole:
    """A TCP listener that accepts connections and says nothing: a command connecting to it
    waits, and :meth:`wait_for_client` says when it does."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.clients: list[socket.socket] = []

    def wait_for_client(self, timeout: float = 60) -> None:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        self.clients.append(conn)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.sock.close()


def wait_for_fifo_reader(path: Path, proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    """Block until *proc* opened the FIFO *path* for reading; return our writing end."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"syncd never opened {path} (exit {proc.poll()})") from None
            time.sleep(0.01)


def start_daemon(env: Any, within: float = 120) -> subprocess.Popen[bytes]:
    """`syncd run` for *env* (a bad-inputs Env), its health server on ``env.listen``; returns
    once ``/readyz`` says ready (caught up)."""
    import time
    import urllib.error
    import urllib.request

    env.write()
    log = (env.dir / "daemon.log").open("ab")
    proc = subprocess.Popen(syncd_argv("-c", str(env.config), "run"), stdout=log, stderr=log, cwd=REPO)
    env.helpers.append(proc)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://{env.listen}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the daemon did not become ready (exit {proc.poll()}):\n"
                         + (env.dir / "daemon.log").read_text(errors="replace")[-3000:])


def end_helpers(helpers: Sequence[Any]) -> None:
    for h in reversed(helpers):
        if isinstance(h, subprocess.Popen):
            if h.poll() is None:
                h.terminate()
                try:
                    h.wait(30)
                except subprocess.TimeoutExpired:
                    h.kill()
                    h.wait()
        else:
            with contextlib.suppress(OSError):
                h.close()


# --- fingerprints of the stores ------------------------------------------------------------

def files_digest(root: Path, skip: Sequence[str] = ()) -> dict[str, str]:
    """sha256 of every regular file under *root* (the SQLite file, its journal, Chroma's dir)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if any(part in skip for part in p.relative_to(root).parts):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISREG(p.lstat().st_mode):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


async def pg_fingerprint(dsn: str) -> dict[str, Any]:
    """Relations, triggers, and the rows of syncd's own tables (timestamps left out)."""
    conn = await asyncpg.connect(dsn)
    try:
        rels = [tuple(r) for r in await conn.fetch(
            """SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
               ORDER BY 1, 2""")]
        triggers = [tuple(r) for r in await conn.fetch(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2")]
        rows: dict[str, list[str]] = {}
        for schema, name, kind in rels:
            if kind != "r":
                continue
            q = f'"{schema}"."{name}"'
            rows[q] = sorted(r[0] for r in await conn.fetch(
                f"SELECT (to_jsonb(t) - 'updated_at' - 'created_at' - 'ts')::text FROM {q} t"))
        return {"relations": rels, "triggers": triggers, "rows": rows}
    finally:
        await conn.close()


__all__ = [
    "APP_USER",
    "PASSWORD",
    "Blackhole",
    "OtherUser",
    "SecurePostgres",
    "end_helpers",
    "files_digest",
    "keyword_dsn",
    "leaks",
    "make_readonly_for",
    "open_dir",
    "other_user",
    "pg_fingerprint",
    "secure_postgres",
    "start_daemon",
    "syncd_argv",
    "to_toml",
    "url_dsn",
    "wait_for_fifo_reader",
]
