"""`syncd config --from-app`: syncd.toml derived from the seed apps' own config files (copied
verbatim from the seeds into tests/fixtures/seeds/), through the real command line."""

from __future__ import annotations

import shutil
import sqlite3
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from syncd import config as config_mod
from syncd.cutover.seed_schemas import SIGNAL_HUB_DDL
from tests.conftest import run_syncd
from tests.integration.daemon_support import free_port, start, stop, streaming, wait_for

SEEDS = Path(__file__).resolve().parents[2] / "fixtures" / "seeds"
QCKSTRT_ENV = SEEDS / "qckstrt" / "apps" / "backend" / ".env"
HUB = SEEDS / "signal-hub"
HUB_FILES = ("--from-app", str(HUB / "signal-hub.yaml"),
             "--from-app", str(HUB / "config" / "production.yaml"))


def test_qckstrt_env_gives_sources_target_and_cutover_keys(tmp_path: Path) -> None:
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", "--from-app", str(QCKSTRT_ENV), "--write", str(out),
                     "--target", "postgresql://qckstrt_user:s3cret@db.example:5433/qckstrt?sslmode=require",
                     "--state-dir", str(tmp_path / "state"))
    text = out.read_text()
    assert "s3cret" not in text and "s3cret" not in proc.stdout + proc.stderr
    cfg = config_mod.load(out, env={"SYNCD_TARGET_PASSWORD": "pw-from-env"})
    assert cfg.sqlite is not None and cfg.sqlite.path == QCKSTRT_ENV.parent / "data" / "dev.sqlite"
    assert cfg.chroma is not None and cfg.chroma.url == "http://localhost:8000"
    assert cfg.target.dsn == "postgresql://qckstrt_user:pw-from-env@db.example:5433/qckstrt?sslmode=require"
    assert cfg.cutover.app_config == QCKSTRT_ENV
    assert cfg.cutover.forward == {
        "RELATIONAL_DB_PROVIDER": "postgres", "RELATIONAL_DB_HOST": "db.example",
        "RELATIONAL_DB_PORT": "5433", "RELATIONAL_DB_DATABASE": "qckstrt",
        "RELATIONAL_DB_USERNAME": "qckstrt_user", "RELATIONAL_DB_SSL": "true",
        "RELATIONAL_DB_PASSWORD": "pw-from-env", "VECTOR_DB_PROVIDER": "pgvector"}
    assert cfg.cutover.rollback["RELATIONAL_DB_PROVIDER"] == "sqlite"
    assert cfg.cutover.rollback["RELATIONAL_DB_DATABASE"] == "./data/dev.sqlite"
    assert cfg.cutover.rollback["VECTOR_DB_PROVIDER"] == "chromadb"
    assert cfg.cutover.rollback["RELATIONAL_DB_PASSWORD"] == ""
    # one line per inferred key, naming the file and line of the .env it came from
    sqlite_path = QCKSTRT_ENV.parent / "data" / "dev.sqlite"
    assert f"source.sqlite.path = {sqlite_path}  ({QCKSTRT_ENV}:5)" in proc.stdout
    assert f"source.chroma.url = http://localhost:8000  ({QCKSTRT_ENV}:7)" in proc.stdout
    assert f"vector dimension = 384  ({QCKSTRT_ENV}:8)" in proc.stdout


def test_an_existing_file_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "syncd.toml"
    out.write_text("# mine\n")
    args = ("config", "--from-app", str(QCKSTRT_ENV), "--write", str(out))
    proc = run_syncd(*args, check=False)
    assert proc.returncode == 2 and out.read_text() == "# mine\n"
    assert proc.stderr.count("\n") == 1 and "--force" in proc.stderr
    run_syncd(*args, "--force")
    assert "[source.sqlite]" in out.read_text()


def test_missing_app_file_is_one_line(tmp_path: Path) -> None:
    proc = run_syncd("config", "--from-app", str(tmp_path / "nope.env"), "--write",
                     str(tmp_path / "s.toml"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope.env" in proc.stderr
    assert not (tmp_path / "s.toml").exists()


@pytest.mark.parametrize("args, needle", [
    (("--target", "mysql://u:p@h/db"), "--target"),
    (("--write", "/nonexistent-dir/syncd.toml"), "/nonexistent-dir/syncd.toml"),
    (("--collection", " "), "--collection"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    proc = run_syncd("config", "--from-app", str(QCKSTRT_ENV), "--write", str(tmp_path / "s.toml"),
                     *args, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and "p@h" not in proc.stderr


def test_toml_app_config_with_lines(tmp_path: Path) -> None:
    app = tmp_path / "app.toml"
    app.write_text('# the app\n[storage]\nvector_store = "chromadb"\n\n[database.connection]\n'
                   'host = "db"\nport = 6432\ndatabase = "hub"\nuser = "hub"\npassword = "hunter2"\n')
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", "--from-app", str(app), "--write", str(out))
    assert "hunter2" not in out.read_text() + proc.stdout + proc.stderr
    assert f"missing: target.dsn: the password at {app}:10 is not copied in clear" in proc.stdout
    assert f"cutover.rollback.storage.vector_store = chromadb  ({app}:3)" in proc.stdout
    out.write_text(out.read_text() + f'\n[source.chroma]\npath = "{tmp_path}"\n')
    cfg = config_mod.load(out, env={})
    assert cfg.target.dsn == "postgresql://hub@db:6432/hub?sslmode=prefer"
    assert cfg.cutover.app_config == app and cfg.cutover.rollback == {"storage.vector_store": "chromadb"}


def test_signal_hub_yaml_gives_target_and_flip_and_says_what_is_missing(tmp_path: Path) -> None:
    hub = SEEDS / "signal-hub"
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", "--from-app", str(hub / "signal-hub.yaml"),
                     "--from-app", str(hub / "config" / "production.yaml"), "--write", str(out))
    missing = [line for line in proc.stdout.splitlines() if line.startswith("missing:")]
    assert len(missing) == 1 and "[source.chroma]" in missing[0]
    text = out.read_text()
    assert "${POSTGRES_PASSWORD}" in text
    chroma = tmp_path / "chroma"
    out.write_text(text + f'\n[source.chroma]\npath = "{chroma}"\n')
    cfg = config_mod.load(out, env={"POSTGRES_PASSWORD": "pw"})
    assert cfg.target.dsn == "postgresql://postgres:pw@localhost:5432/signalhub?sslmode=require"
    assert cfg.cutover.app_config == hub / "signal-hub.yaml"
    assert cfg.cutover.forward == {"storage.vector_store": "postgresql"}
    assert cfg.cutover.rollback == {"storage.vector_store": "chromadb"}


@pytest.mark.asyncio
async def test_qckstrt_config_runs_init_run_and_cutover(tmp_path: Path, pg_dsn: str) -> None:
    app = tmp_path / "backend"
    app.mkdir()
    shutil.copy(SEEDS / "qckstrt-relational" / ".env", app / ".env")
    (app / "data").mkdir()
    db = sqlite3.connect(app / "data" / "dev.sqlite")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"u{i}@example.com") for i in range(1, 51)])
    db.commit()
    db.close()
    out = tmp_path / "syncd.toml"
    run_syncd("config", "--from-app", str(app / ".env"), "--target", pg_dsn,
              "--state-dir", str(tmp_path / "state"), "--write", str(out))
    port = free_port()
    with out.open("a") as f:
        f.write(f'\n[health]\nlisten = "127.0.0.1:{port}"\n\n[stream]\npoll_interval = 0.2\n')
    run_syncd("--config", str(out), "init")
    run_syncd("--config", str(out), "run", "--until-caught-up", "--timeout", "120", timeout=180)
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT id, email FROM users ORDER BY id")
    finally:
        await conn.close()
    assert [(r["id"], r["email"]) for r in rows] == [(i, f"u{i}@example.com") for i in range(1, 51)]
    log = tmp_path / "daemon.log"
    daemon = start(out, log=log)
    try:
        wait_for(lambda: streaming(port), "streaming", proc=daemon, log=log)
        run_syncd("--config", str(out), "cutover", timeout=180)
    finally:
        stop(daemon)
    lines = (app / ".env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    url = urlsplit(pg_dsn)
    assert env == {"RELATIONAL_DB_PROVIDER": "postgres", "RELATIONAL_DB_DATABASE": url.path.lstrip("/"),
                   "RELATIONAL_DB_HOST": url.hostname or parse_qs(url.query)["host"][0],
                   "RELATIONAL_DB_PORT": str(url.port or 5432), "RELATIONAL_DB_USERNAME": url.username,
                   "RELATIONAL_DB_SSL": "false"}


def test_qckstrt_env_maps_the_collection_to_the_seeds_table(tmp_path: Path) -> None:
    """The [[target.collections]] entry: qckstrt's own vector_embeddings DDL, as the seed has it."""
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", "--from-app", str(QCKSTRT_ENV), "--write", str(out),
                     "--target", "postgresql://qckstrt_user@db.example/qckstrt",
                     "--chroma-path", str(tmp_path / "chroma"))
    cfg = config_mod.load(out, env={})
    assert cfg.chroma is not None and cfg.chroma.path == tmp_path / "chroma"
    assert f"source.chroma.path = {tmp_path / 'chroma'}  (--chroma-path)" in proc.stdout
    (entry,) = cfg.target.collections
    assert (entry.name, entry.table) == ("qckstrt-embeddings", "vector_embeddings")
    assert dict(entry.columns) == {"user_id": "metadata.userId", "document_id": "metadata.documentId",
                                   "content": "document"}
    seed = (SEEDS / "qckstrt" / "vector_embeddings.sql").read_text()
    assert entry.create == "".join(seed.splitlines(keepends=True)[2:])  # the seed's lines, header dropped


def test_two_app_files_are_both_flipped(tmp_path: Path) -> None:
    """`--from-app .env --from-app config.yaml`, each holding keys cutover writes: syncd.toml lists
    both files, which cutover then flips as one step."""
    env = tmp_path / ".env"
    shutil.copy(QCKSTRT_ENV, env)
    yaml = tmp_path / "signal-hub.yaml"
    shutil.copy(SEEDS / "signal-hub" / "signal-hub.yaml", yaml)
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", "--from-app", str(env), "--from-app", str(yaml), "--write", str(out),
                     "--target", "postgresql://qckstrt_user@db.example/qckstrt",
                     "--state-dir", str(tmp_path / "state"))
    assert f"cutover.app_config = {env}, {yaml}" in proc.stdout, proc.stdout
    cfg = config_mod.load(out, env={})
    assert cfg.cutover.app_configs == (env, yaml)
    assert cfg.cutover.forward["RELATIONAL_DB_PROVIDER"] == "postgres"
    assert cfg.cutover.forward["storage.vector_store"] == "postgresql"


def _hub_entry(out: Path) -> dict[str, object]:
    (entry,) = tomllib.loads(out.read_text())["target"]["collections"]
    assert isinstance(entry, dict)
    return entry


def test_signal_hub_yaml_maps_the_collection_to_documents_and_embeddings(tmp_path: Path) -> None:
    """The [[target.collections]] entry: Signal Hub's documents + embeddings, created with the seed's
    own Step 2 schema; the Chroma location from --chroma-path / --chroma-url, which the app's YAML
    does not hold."""
    out = tmp_path / "syncd.toml"
    chroma = tmp_path / "chroma"
    proc = run_syncd("config", *HUB_FILES, "--chroma-path", str(chroma), "--chroma-url", "http://127.0.0.1:8000",
                     "--write", str(out))
    assert "missing:" not in proc.stdout, proc.stdout
    assert ("target.collections: signal-hub -> documents + embeddings (Signal Hub's schema)  (the default: "
            "Signal Hub's config names no collection; pass --collection NAME for another)") in proc.stdout
    assert f"source.chroma.path = {chroma}  (--chroma-path)" in proc.stdout
    assert "source.chroma.url = http://127.0.0.1:8000  (--chroma-url)" in proc.stdout
    assert _hub_entry(out) == {
        "name": "signal-hub", "table": "embeddings", "documents": "documents",
        "columns": {"content": "document", "file_path": "metadata.file_path",
                    "chunk_index": "metadata.chunk_index", "start_line": "metadata.start_line",
                    "end_line": "metadata.end_line", "language": "metadata.language",
                    "model": "metadata.model"},
        "create": SIGNAL_HUB_DDL}
    source = tomllib.loads(out.read_text())["source"]["chroma"]
    assert source == {"path": str(chroma), "url": "http://127.0.0.1:8000"}


def test_signal_hub_ddl_is_the_seeds_schema() -> None:
    seed = (HUB / "schema.sql").read_text()
    assert SIGNAL_HUB_DDL == "".join(seed.splitlines(keepends=True)[2:])  # the seed's lines, header dropped


@pytest.mark.parametrize("files, default", [(HUB_FILES, "signal-hub"),
                                            (("--from-app", str(QCKSTRT_ENV)), "qckstrt-embeddings")])
def test_collection_option_names_the_chroma_collection(tmp_path: Path, files: tuple[str, ...],
                                                       default: str) -> None:
    out = tmp_path / "syncd.toml"
    proc = run_syncd("config", *files, "--collection", "code-chunks", "--write", str(out))
    assert "target.collections: code-chunks -> " in proc.stdout
    assert f"target.collections: {default} " not in proc.stdout
    (entry,) = tomllib.loads(out.read_text())["target"]["collections"]
    assert entry["name"] == "code-chunks"


def test_collection_option_with_both_apps_is_one_line(tmp_path: Path) -> None:
    proc = run_syncd("config", "--from-app", str(QCKSTRT_ENV), *HUB_FILES, "--collection", "x",
                     "--write", str(tmp_path / "s.toml"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--collection" in proc.stderr
    assert not (tmp_path / "s.toml").exists()


def test_signal_hub_config_loads_with_its_collection(tmp_path: Path) -> None:
    out = tmp_path / "syncd.toml"
    run_syncd("config", *HUB_FILES, "--chroma-path", str(tmp_path / "chroma"), "--write", str(out))
    cfg = config_mod.load(out, env={"POSTGRES_PASSWORD": "pw"})
    (entry,) = cfg.target.collections
    assert (entry.name, entry.table, getattr(entry, "documents", None)) == ("signal-hub", "embeddings",
                                                                          "documents")
    assert dict(entry.columns)["content"] == "document" and entry.create == SIGNAL_HUB_DDL
