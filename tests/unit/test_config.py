from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import load, parse
from syncd.errors import ConfigError

BASE = {"source": {"sqlite": {"path": "data/dev.sqlite"}}, "target": {"dsn": "embedded"}}


def test_defaults_and_relative_paths() -> None:
    cfg = parse(BASE, base=Path("/etc/syncd"), env={})
    assert cfg.sqlite is not None and cfg.sqlite.path == Path("/etc/syncd/data/dev.sqlite")
    assert cfg.target.embedded and cfg.target.schema == "public" and not cfg.target.strict
    assert cfg.health.listen == "127.0.0.1:8085"


def test_env_and_file_interpolation(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    data = {**BASE, "target": {"dsn": "postgresql://u:${PW}@h/db?x=${file:" + str(secret) + "}"}}
    cfg = parse(data, base=tmp_path, env={"PW": "s3cret"})
    assert cfg.target.dsn == "postgresql://u:s3cret@h/db?x=from-file"


@pytest.mark.parametrize(("data", "words"), [
    ({**BASE, "target": {"dsn": "${NOPE}"}}, "target.dsn: environment variable NOPE"),
    ({**BASE, "target": {}}, "target.dsn: required"),
    ({**BASE, "stream": {"batch_size": 0}}, "stream.batch_size: must be > 0"),
    ({**BASE, "stream": {"batch_size": "many"}}, "stream.batch_size: expected int"),
    ({**BASE, "stream": {"bacth_size": 5}}, "stream.bacth_size: unknown key"),
    ({"target": {"dsn": "embedded"}}, "source:"),
    ({**BASE, "source": {"sqlite": {"path": "x", "no_primary_key": "skip"}}}, "no_primary_key"),
    ({**BASE, "target": {"dsn": "embedded", "column_types": {"nodot": "text"}}}, "column_types.nodot"),
])
def test_errors_name_the_key(data: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(data, base=Path("/"), env={})
    assert words in str(err.value)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_example_config_parses() -> None:
    cfg = load(Path(__file__).resolve().parents[2] / "config.example.toml", env={"POSTGRES_PASSWORD": "pw"})
    assert cfg.chroma is not None and cfg.chroma.url == "http://127.0.0.1:8000"
    assert "pw@" in cfg.target.dsn
    assert cfg.cutover.forward["RELATIONAL_DB_PROVIDER"] == "postgres"
    assert cfg.cutover.reload_command == ("systemctl", "reload", "backend")


def test_cutover_section() -> None:
    cfg = parse({**BASE, "cutover": {
        "app_config": "app/.env", "reload_command": ["kill", "-HUP", "${PID}"],
        "forward": {"RELATIONAL_DB_PROVIDER": "postgres", "VECTOR_DB_DIMENSIONS": 384},
        "rollback": {"RELATIONAL_DB_PROVIDER": "sqlite", "VECTOR_DB_DIMENSIONS": 384}}},
        base=Path("/srv"), env={"PID": "42"})
    assert cfg.cutover.app_config == Path("/srv/app/.env")
    assert cfg.cutover.reload_command == ("kill", "-HUP", "42")
    assert cfg.cutover.forward == {"RELATIONAL_DB_PROVIDER": "postgres", "VECTOR_DB_DIMENSIONS": "384"}
    assert parse(BASE, base=Path("/srv"), env={}).cutover.app_config is None


@pytest.mark.parametrize(("cutover", "words"), [
    ({"app_config": ".env", "forward": {"A": "x"}}, "cutover.rollback.A: missing"),
    ({"app_config": ".env"}, "cutover.forward: set the app config keys"),
    ({"format": "ini"}, "cutover.format: expected"),
    ({"verify": "maybe"}, "cutover.verify: expected one of"),
    ({"reload_timeout": 0}, "cutover.reload_timeout: must be > 0"),
    ({"reload_command": []}, "cutover.reload_command: expected a command line"),
    ({"forward": {"A": ["x"]}}, "cutover.forward.A: expected a string"),
    ({"lock_timout": 1}, "cutover.lock_timout: unknown key"),
])
def test_cutover_errors_name_the_key(cutover: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        parse({**BASE, "cutover": cutover}, base=Path("/srv"), env={})
