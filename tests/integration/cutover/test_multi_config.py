"""Several app config files (a ``.env`` and a YAML file, as Signal Hub has) flipped as one step.

Through the real commands, with the reference app writing: cutover and rollback flip both files;
a SIGKILL between the two renames is finished by ``--resume`` or put back by ``rollback``; a
key missing from the files refuses before anything changes. Every check reads the files back.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cutover.test_cutover import assert_converged, assert_none_lost, direction
from tests.integration.cutover_support import Migration

YAML = """# the app's settings (Signal Hub's shape)
storage:
  vector_store: chroma   # chroma or pgvector
database:
  connection:
    host: localhost
"""


def two_files(m: Migration, yaml_text: str = YAML) -> Path:
    """Make *m*'s app read a YAML file besides its .env; syncd flips both (mode 0600 each)."""
    yaml = m.dir / "config.yaml"
    yaml.write_text(yaml_text)
    for f in (m.env, yaml):
        f.chmod(0o600)
    text = m.config.read_text()
    text = text.replace(f'app_config = "{m.env}"', f'app_config = ["{m.env}", "{yaml}"]')
    text = text.replace('[cutover.forward]\n', '[cutover.forward]\n"storage.vector_store" = "pgvector"\n')
    text = text.replace('[cutover.rollback]\n', '[cutover.rollback]\n"storage.vector_store" = "chroma"\n')
    m.config.write_text(text)
    return yaml


@pytest.fixture
def migration(tmp_path: Path, pg_dsn: str) -> Iterator[Migration]:
    m = Migration(tmp_path, pg_dsn)
    try:
        yield m
    finally:
        m.close()


def provider(m: Migration) -> str:
    return next(line.split("=", 1)[1] for line in m.env.read_text().splitlines()
                if line.startswith("RELATIONAL_DB_PROVIDER="))


def store(yaml: Path) -> str:
    return next(line.split(":", 1)[1].split("#")[0].strip() for line in yaml.read_text().splitlines()
                if line.strip().startswith("vector_store:"))


def leftovers(m: Migration) -> list[str]:
    return sorted(p.name for p in m.dir.iterdir() if ".syncd-tmp-" in p.name)


async def test_cutover_and_rollback_flip_both_files(migration: Migration) -> None:
    m = migration
    yaml = two_files(m)
    env_before, yaml_before = m.env.read_bytes(), yaml.read_bytes()
    m.start(rate=50)
    m.switch("cutover")
    assert (provider(m), store(yaml)) == ("postgres", "pgvector")
    assert "vector_store: pgvector   # chroma or pgvector" in yaml.read_text()  # the rest kept
    assert [stat.S_IMODE(f.stat().st_mode) for f in (m.env, yaml)] == [0o600, 0o600]
    m.wait_streaming("postgres→sqlite")
    m.switch("rollback")
    assert (m.env.read_bytes(), yaml.read_bytes()) == (env_before, yaml_before)
    assert [stat.S_IMODE(f.stat().st_mode) for f in (m.env, yaml)] == [0o600, 0o600]
    assert leftovers(m) == []
    await asyncio.sleep(1.0)
    m.stop_app()
    m.wait_streaming("sqlite")
    await assert_converged(m)
    assert_none_lost(m)


@pytest.mark.parametrize("then", ("resume", "rollback"))
async def test_killed_between_the_two_renames(migration: Migration, then: str) -> None:
    """SIGKILL after the .env was renamed and before the YAML was: `--resume` flips the YAML too,
    `rollback` puts the .env back; either way both files end on the same side."""
    m = migration
    yaml = two_files(m)
    env_before, yaml_before = m.env.read_bytes(), yaml.read_bytes()
    m.start(rate=50)
    proc = m.command("cutover", env={"SYNCD_KILL_AT": "cutover:flip-renamed:1"})
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert (provider(m), store(yaml)) == ("postgres", "chroma")  # killed between the two
    await asyncio.sleep(0.5)
    if then == "resume":
        out = m.switch("cutover", "--resume")
        assert out["ok"]
        assert await direction(m.pg_dsn) == ("reverse", None)
        assert (provider(m), store(yaml)) == ("postgres", "pgvector")
        m.wait_streaming("postgres→sqlite")
    else:
        out = m.switch("rollback")
        assert out["ok"]
        assert await direction(m.pg_dsn) == ("forward", None)
        assert (m.env.read_bytes(), yaml.read_bytes()) == (env_before, yaml_before)
        m.wait_streaming("sqlite")
    assert [stat.S_IMODE(f.stat().st_mode) for f in (m.env, yaml)] == [0o600, 0o600]
    assert leftovers(m) == []
    await asyncio.sleep(1.0)
    m.stop_app()
    await assert_converged(m)
    assert_none_lost(m)


async def test_a_key_missing_from_the_files_refuses_before_anything_changes(migration: Migration) -> None:
    m = migration
    yaml = two_files(m, YAML.replace("  vector_store: chroma   # chroma or pgvector\n", "  kind: local\n"))
    m.start(rate=50)
    env_before, yaml_before = m.env.read_bytes(), yaml.read_bytes()
    proc = m.command("cutover")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "storage.vector_store" in line]
    assert len(lines) == 1 and str(yaml) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (m.env.read_bytes(), yaml.read_bytes()) == (env_before, yaml_before)
    assert await direction(m.pg_dsn) == ("forward", None)
    assert leftovers(m) == []
    m.stop_app()
