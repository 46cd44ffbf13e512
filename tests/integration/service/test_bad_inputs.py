"""Every bad input of ``bad_inputs.CASES`` through the real `syncd`: the exit code, one line
naming the problem and where, no traceback, no password, and no store changed.

One PostgreSQL (asking for passwords) serves every case, each in a database of its own;
most cases need no daemon. See ``tests/integration/bad_inputs.py`` for the table, which
also generates docs/operations.md's "When something is wrong".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_syncd
from tests.integration import bad_inputs
from tests.integration.bad_inputs import CASES, Case, Env
from tests.integration.operator_support import (
    Blackhole,
    SecurePostgres,
    end_helpers,
    files_digest,
    leaks,
    open_dir,
    other_user,
    pg_fingerprint,
    syncd_argv,
    url_dsn,
    wait_for_fifo_reader,
)

OTHER = other_user()


@pytest.fixture
async def env(secure_pg: SecurePostgres) -> AsyncIterator[Env]:
    database = await secure_pg.create_database()
    import getpass

    e = Env(dir=open_dir("syncd-bad-input-"), port=secure_pg.port, database=database,
            dsn=url_dsn(secure_pg.port, database), user=getpass.getuser())
    e.run_syncd = run_syncd
    e.other = OTHER
    e.data.mkdir()
    e.sql("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT);"
          "INSERT INTO users VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', NULL), (3, 'Linus', 'l@x');")
    e.sections = bad_inputs.base_sections(e)
    try:
        yield e
    finally:
        end_helpers(e.helpers)
        await secure_pg.drop_database(database)
        shutil.rmtree(e.dir, ignore_errors=True)


def process_report(pid: int) -> str:
    """The kernel's view of *pid* and its children: state, signals pending / blocked / caught,
    where it sleeps, its kernel stack when readable, and its threads' Python stacks when py-spy is
    installed."""
    lines: list[str] = []
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        for name in ("status", "wchan", "stack"):
            try:
                text = Path(f"/proc/{p}/{name}").read_text()
            except OSError as exc:
                text = f"({exc.strerror})"
            if name == "status":
                text = "\n".join(line for line in text.splitlines()
                                 if line.split(":")[0] in ("Name", "State", "SigPnd", "ShdPnd", "SigBlk",
                                                           "SigIgn", "SigCgt", "Threads"))
            lines.append(f"--- /proc/{p}/{name}\n{text}")
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if spy:
            dump = subprocess.run([spy, "dump", "--pid", str(p)], capture_output=True, text=True, timeout=30)
            lines.append(f"--- py-spy dump {p}\n{dump.stdout}{dump.stderr}")
    return "\n".join(lines)


def run(case: Case, env: Env) -> subprocess.CompletedProcess[str]:
    argv = [env.fill(a) for a in case.argv]
    as_other = case.other_user and OTHER is not None
    cmd = OTHER.argv(*argv) if as_other and OTHER else syncd_argv(*argv)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    environment.update(env.environ)
    environment["HOME"] = str(env.dir)
    proc = subprocess.Popen(cmd, cwd=env.dir if as_other else REPO, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=OTHER.preexec if as_other and OTHER else None)
    writer = None
    try:
        if case.signal is not None:
            if env.fifo is not None:
                writer = wait_for_fifo_reader(env.fifo, proc)
            else:
                hole = next(h for h in env.helpers if isinstance(h, Blackhole))
                hole.wait_for_client()
            proc.send_signal(case.signal)
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            # what the process was doing when it did not end: for a hang seen once and not since
            report = process_report(proc.pid)
            raise AssertionError(f"{case.name}: syncd did not exit within 180 s\n{report}") from None
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        if writer is not None:
            os.close(writer)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


async def fingerprint(env: Env, secure_pg: SecurePostgres) -> dict[str, Any]:
    return {"files": files_digest(env.data), "pg": await pg_fingerprint(secure_pg.admin_dsn(env.database))}


def routine_log(line: str) -> bool:
    """A JSON log record at info or debug (the daemon's ordinary log), not an answer."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("level") in ("debug", "info")


def in_order(line: str, fragments: list[str]) -> bool:
    pos = 0
    for f in fragments:
        found = line.find(f, pos)
        if found < 0:
            return False
        pos = found + len(f)
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input(case: Case, env: Env, secure_pg: SecurePostgres) -> None:
    if case.other_user and OTHER is None and os.geteuid() == 0:
        pytest.skip("as root, and user nobody cannot run this checkout (its folder or packages are not "
                    "readable by others): permissions cannot be tried here")
    if case.other_user:
        env.user = OTHER.name if OTHER else env.user
    for step in case.setup:
        step(env)
    env.write()
    before = await fingerprint(env, secure_pg)
    proc = run(case, env)
    after = await fingerprint(env, secure_pg)

    shown = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == case.exit, shown
    fragments = [env.fill(s) for s in case.says]
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not routine_log(line)]
    if case.out == "stderr":
        assert len(errors) == 1, f"expected one line on stderr\n{shown}"
        assert in_order(errors[0], fragments), f"the line lacks {fragments}\n{shown}"
    else:
        assert not errors, f"expected nothing on stderr\n{shown}"
        assert any(in_order(line, fragments) for line in proc.stdout.splitlines()), \
            f"no line of stdout has {fragments}\n{shown}"
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    for secret in (None, case.secret):
        found = leaks(proc.stdout + proc.stderr, *(() if secret is None else (secret,)))
        assert not found, f"password printed: {found}\n{shown}"
    if not case.changes:
        assert after == before, f"the stores changed\n{shown}"


def test_the_docs_table_is_generated_from_the_cases() -> None:
    doc = (Path(REPO) / "docs" / "operations.md").read_text()
    assert bad_inputs.BEGIN in doc and bad_inputs.END in doc
    assert bad_inputs.replace_in(doc) == doc, \
        "docs/operations.md is stale: run python -m tests.integration.bad_inputs --write"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.category for c in CASES} >= {"config", "paths", "permissions", "credentials", "network",
                                           "locks", "signals", "arguments"}
