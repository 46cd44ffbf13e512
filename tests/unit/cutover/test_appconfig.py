"""The app-config flip on real files: each format, byte-exact preservation, backups, crash safety."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from syncd.cutover import appconfig
from syncd.cutover.appconfig import AppConfigError, check_writable, detect_format, flip, read_values, render
from tests.conftest import REPO

SEED_ENV = """\
# apps/backend/.env

# Old (SQLite)
# RELATIONAL_DB_PROVIDER=sqlite
# RELATIONAL_DB_DATABASE=./data/dev.sqlite

NODE_ENV=development
RELATIONAL_DB_PROVIDER=sqlite
export RELATIONAL_DB_DATABASE="./data/dev.sqlite"
RELATIONAL_DB_PASSWORD='hunter2 hunter2'

VECTOR_DB_PROVIDER=chromadb   # chromadb | pgvector
VECTOR_DB_CHROMA_URL=http://localhost:8000
VECTOR_DB_DIMENSIONS=384  # Must match your embedding model
"""
FORWARD = {"RELATIONAL_DB_PROVIDER": "postgres", "VECTOR_DB_PROVIDER": "pgvector"}
ROLLBACK = {"RELATIONAL_DB_PROVIDER": "sqlite", "VECTOR_DB_PROVIDER": "chromadb"}

SEED_YAML = """\
# signal-hub.yaml
storage:
  vector_store: chromadb  # Changed from chromadb
  path: './data/chroma'

database:
  type: sqlite
  port: 5432
  flags: [a, b]
# the end
"""
SEED_TOML = """\
# signal-hub.toml
[storage]   # where vectors live
vector_store = 'chromadb'   # or "pgvector"

[database]
type = "sqlite"
port = 5432
"""


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b), "lines were added or removed"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


# --- formats -----------------------------------------------------------------------------------


def test_detect_format() -> None:
    assert detect_format(Path("/srv/app/.env"), None) == "env"
    assert detect_format(Path("/srv/app/.env.production"), None) == "env"
    assert detect_format(Path("prod.env"), None) == "env"
    assert detect_format(Path("a.yml"), None) == "yaml"
    assert detect_format(Path("a.YAML"), None) == "yaml"
    assert detect_format(Path("a.toml"), None) == "toml"
    assert detect_format(Path("settings"), "yaml") == "yaml"
    with pytest.raises(AppConfigError, match=r"cutover\.format"):
        detect_format(Path("settings.conf"), None)
    with pytest.raises(AppConfigError, match="expected one of env, yaml, toml"):
        detect_format(Path(".env"), "ini")


def test_env_flip_changes_only_the_values(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", SEED_ENV)
    result = flip(path, "env", FORWARD)
    after = path.read_text()
    assert changed_lines(SEED_ENV, after) == [
        ("RELATIONAL_DB_PROVIDER=sqlite\n", "RELATIONAL_DB_PROVIDER=postgres\n"),
        ("VECTOR_DB_PROVIDER=chromadb   # chromadb | pgvector\n",
         "VECTOR_DB_PROVIDER=pgvector   # chromadb | pgvector\n"),
    ]
    assert result.changed == {"RELATIONAL_DB_PROVIDER": ("sqlite", "postgres"),
                              "VECTOR_DB_PROVIDER": ("chromadb", "pgvector")}
    assert read_values(path, "env", [*FORWARD, "VECTOR_DB_DIMENSIONS", "RELATIONAL_DB_DATABASE", "NOPE"]) == {
        **FORWARD, "VECTOR_DB_DIMENSIONS": "384", "RELATIONAL_DB_DATABASE": "./data/dev.sqlite", "NOPE": None}


def test_env_quoting_styles_kept_and_added(tmp_path: Path) -> None:
    text = 'A="x"\nexport B=\'y\'\nC=`z`  # c\nD=plain\nCRLF=1\r\n'
    out = render(text, "env", {"A": 'say "hi"', "B": "it's", "C": "w", "D": "two words", "CRLF": "2",
                               "E": "a#b"})
    assert out == ('A="say \\"hi\\""\nexport B="it\'s"\nC=`w`  # c\nD="two words"\nCRLF=2\r\nE="a#b"\r\n')
    dotenv = pytest.importorskip("dotenv")  # python-dotenv reads back what was meant (no backticks)
    path = write(tmp_path, ".env", out)
    loaded = dotenv.dotenv_values(path)
    assert {k: v for k, v in loaded.items() if k != "C"} == {
        "A": 'say "hi"', "B": "it's", "D": "two words", "CRLF": "2", "E": "a#b"}


def test_env_duplicate_key_changes_the_last_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", "P=sqlite\n# later override\nP=sqlite\n")
    result = flip(path, "env", {"P": "postgres"})
    assert path.read_text() == "P=sqlite\n# later override\nP=postgres\n"
    assert any("appears 2 times" in note for note in result.notes)
    assert read_values(path, "env", ["P"]) == {"P": "postgres"}


def test_env_absent_key_is_appended(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", "A=1")  # no newline at the end
    flip(path, "env", {"VECTOR_DB_PROVIDER": "pgvector"})
    assert path.read_text() == "A=1\nVECTOR_DB_PROVIDER=pgvector\n"


def test_env_bad_values_refused() -> None:
    with pytest.raises(AppConfigError, match="line break"):
        render("A=1\n", "env", {"A": "x\ny"})
    with pytest.raises(AppConfigError, match=r"not a valid \.env variable name"):
        render("A=1\n", "env", {"1A": "x"})
    with pytest.raises(AppConfigError, match=r"line 2 .*quote is not closed"):
        render('A=1\nB="open\n', "env", {"A": "2"})


def test_yaml_flip_keeps_comments_and_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "signal-hub.yaml", SEED_YAML)
    flip(path, "yaml", {"storage.vector_store": "postgresql", "storage.path": "/var/lib/x",
                        "database.port": "6432", "database.type": "true"})
    after = path.read_text()
    assert changed_lines(SEED_YAML, after) == [
        ("  vector_store: chromadb  # Changed from chromadb\n",
         "  vector_store: postgresql  # Changed from chromadb\n"),
        ("  path: './data/chroma'\n", "  path: '/var/lib/x'\n"),
        ("  type: sqlite\n", '  type: "true"\n'),  # plain true would read back as a boolean
        ("  port: 5432\n", "  port: 6432\n"),  # an integer stays an integer
    ]
    loaded = yaml.safe_load(after)
    assert loaded["database"] == {"type": "true", "port": 6432, "flags": ["a", "b"]}


def test_yaml_creates_missing_keys_under_their_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", SEED_YAML)
    flip(path, "yaml", {"storage.backend.dsn": "postgresql://u@h/db", "database.pool": "8 # x",
                        "top": "yes"})
    loaded = yaml.safe_load(path.read_text())
    assert loaded["storage"]["backend"] == {"dsn": "postgresql://u@h/db"}
    assert loaded["database"]["pool"] == "8 # x"
    assert loaded["top"] == "yes"
    assert read_values(path, "yaml", ["storage.backend.dsn", "top", "storage.vector_store"]) == {
        "storage.backend.dsn": "postgresql://u@h/db", "top": "yes", "storage.vector_store": "chromadb"}
    lines = path.read_text().splitlines()
    assert lines.index("  backend:") < lines.index("database:")  # inside storage's block
    assert lines[-1] == "# the end"


def test_yaml_refusals() -> None:
    with pytest.raises(AppConfigError, match="holds a mapping"):
        render(SEED_YAML, "yaml", {"storage": "x"})
    with pytest.raises(AppConfigError, match=r"storage\.vector_store is not a mapping"):
        render(SEED_YAML, "yaml", {"storage.vector_store.x": "y"})
    with pytest.raises(AppConfigError, match="multi-line"):
        render("a: |\n  one\n  two\n", "yaml", {"a": "x"})
    with pytest.raises(AppConfigError, match="flow style"):
        render("a: {b: 1}\n", "yaml", {"a.c": "x"})
    with pytest.raises(AppConfigError, match="not valid YAML"):
        render("a: [\n", "yaml", {"a": "x"})


def test_toml_flip(tmp_path: Path) -> None:
    path = write(tmp_path, "app.toml", SEED_TOML)
    flip(path, "toml", {"storage.vector_store": "pgvector", "database.type": "postgres",
                        "database.port": "6432"})
    after = path.read_text()
    assert changed_lines(SEED_TOML, after) == [
        ("vector_store = 'chromadb'   # or \"pgvector\"\n",
         "vector_store = 'pgvector'   # or \"pgvector\"\n"),
        ('type = "sqlite"\n', 'type = "postgres"\n'),
        ("port = 5432\n", "port = 6432\n"),
    ]
    assert tomllib.loads(after)["database"] == {"type": "postgres", "port": 6432}
    flip(path, "toml", {"vector.table.name": "emb"})
    assert tomllib.loads(path.read_text())["vector"] == {"table": {"name": "emb"}}
    with pytest.raises(AppConfigError, match="not valid TOML"):
        render("a = \n", "toml", {"a": "x"})


# --- the file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "forward", "rollback"), [
    (".env", SEED_ENV, FORWARD, ROLLBACK),
    ("c.yaml", SEED_YAML, {"storage.vector_store": "pgvector"}, {"storage.vector_store": "chromadb"}),
    ("c.toml", SEED_TOML, {"storage.vector_store": "pgvector"}, {"storage.vector_store": "chromadb"}),
])
def test_backup_idempotence_and_round_trip(tmp_path: Path, name: str, text: str,
                                           forward: dict[str, str], rollback: dict[str, str]) -> None:
    path = write(tmp_path, name, text)
    path.chmod(0o640)
    fmt = detect_format(path, None)
    first = flip(path, fmt, forward)
    assert first.backup is not None and first.backup.parent == tmp_path
    assert first.backup.name.startswith(name + ".syncd-backup-") and first.backup.name.endswith("Z")
    assert first.backup.read_bytes() == text.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(first.backup.stat().st_mode) == 0o640
    forwarded = path.read_bytes()

    again = flip(path, fmt, forward)
    assert again.backup is None and again.changed == {}
    assert path.read_bytes() == forwarded

    back = flip(path, fmt, rollback)
    assert back.backup is not None and back.backup != first.backup  # same second: a -1 suffix
    assert back.backup.read_bytes() == forwarded
    assert path.read_bytes() == text.encode()
    leftovers = [p.name for p in tmp_path.iterdir() if ".syncd-tmp-" in p.name]
    assert leftovers == []


def test_symlink_target_is_replaced_and_link_kept(tmp_path: Path) -> None:
    real = write(tmp_path, "real.env", SEED_ENV)
    link = tmp_path / ".env"
    link.symlink_to(real)
    flip(link, "env", FORWARD)
    assert link.is_symlink()
    assert read_values(real, "env", FORWARD) == FORWARD


def test_secret_values_never_in_results_or_messages(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", SEED_ENV)
    result = flip(path, "env", {"RELATIONAL_DB_PASSWORD": "n3w-secret"})
    assert result.changed == {"RELATIONAL_DB_PASSWORD": ("***", "***")}
    assert read_values(path, "env", ["RELATIONAL_DB_PASSWORD"]) == {"RELATIONAL_DB_PASSWORD": "n3w-secret"}
    with pytest.raises(AppConfigError) as info:
        render(SEED_ENV, "env", {"API_TOKEN": "tok\nen"})
    assert "tok" not in str(info.value)


def test_check_writable_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AppConfigError, match=r"does not exist; set cutover\.app_config"):
        check_writable(tmp_path / ".env")
    (tmp_path / "dir.env").mkdir()
    with pytest.raises(AppConfigError, match="not a regular file"):
        check_writable(tmp_path / "dir.env")
    (tmp_path / "dangling.env").symlink_to(tmp_path / "gone")
    with pytest.raises(AppConfigError, match="does not exist; fix the link"):
        check_writable(tmp_path / "dangling.env")
    bad = write(tmp_path, "bad.yaml", "a: [\n")
    with pytest.raises(AppConfigError, match=r"bad\.yaml is not valid YAML"):
        check_writable(bad)
    latin = tmp_path / "latin.env"
    latin.write_bytes(b"A=\xe9\n")
    with pytest.raises(AppConfigError, match="not UTF-8"):
        check_writable(latin)
    check_writable(write(tmp_path, ".env", SEED_ENV))


def test_failure_before_rename_leaves_the_original(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", SEED_ENV)

    def fail_at(point: str) -> None:
        if point == "temp-written":
            raise OSError(28, "No space left on device")

    with pytest.raises(AppConfigError, match="the file is unchanged"):
        flip(path, "env", FORWARD, hook=fail_at)
    assert path.read_text() == SEED_ENV
    assert not [p for p in tmp_path.iterdir() if ".syncd-tmp-" in p.name]


def test_concurrent_edit_is_not_overwritten(tmp_path: Path) -> None:
    path = write(tmp_path, ".env", SEED_ENV)

    def edit(point: str) -> None:
        if point == "temp-written":
            path.write_text(SEED_ENV + "EDITED=1\n")

    with pytest.raises(AppConfigError, match="changed while syncd was rewriting it"):
        flip(path, "env", FORWARD, hook=edit)
    assert path.read_text().endswith("EDITED=1\n")


@pytest.mark.parametrize("point", ["backup-written", "temp-written", "renamed"])
def test_sigkill_at_each_step_leaves_old_or_new(tmp_path: Path, point: str) -> None:
    path = write(tmp_path, ".env", SEED_ENV)
    code = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom syncd.cutover.appconfig import flip\n"
        "def hook(p):\n    if p == sys.argv[2]: os.kill(os.getpid(), signal.SIGKILL)\n"
        "flip(Path(sys.argv[1]), 'env', {'RELATIONAL_DB_PROVIDER': 'postgres', "
        "'VECTOR_DB_PROVIDER': 'pgvector'}, hook=hook)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), point], cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    expected = render(SEED_ENV, "env", FORWARD) if point == "renamed" else SEED_ENV
    assert path.read_text() == expected
    # the next run completes the flip whatever the crash left behind
    flip(path, "env", FORWARD)
    assert read_values(path, "env", FORWARD) == FORWARD


# --- as an unprivileged user (root ignores directory permissions) -------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="syncd-appconfig-"))
    directory.chmod(0o755)
    yield directory
    directory.chmod(0o755)
    shutil.rmtree(directory, ignore_errors=True)


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as another user")
    return subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                           "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_read_only_directory_refused_and_file_intact(shared_dir: Path) -> None:
    path = write(shared_dir, ".env", SEED_ENV)
    path.chmod(0o666)
    shared_dir.chmod(0o555)
    code = ("import sys\nfrom pathlib import Path\nfrom syncd.cutover.appconfig import flip, AppConfigError\n"
            "try:\n    flip(Path(sys.argv[1]), 'env', {'RELATIONAL_DB_PROVIDER': 'postgres'})\n"
            "except AppConfigError as e:\n    print(e)\n    sys.exit(3)\n")
    proc = as_nobody(code, str(path))
    assert proc.returncode == 3, proc.stderr
    assert f"directory {shared_dir} is not writable" in proc.stdout
    assert "give syncd's user write access" in proc.stdout
    assert path.read_text() == SEED_ENV
    assert sorted(p.name for p in shared_dir.iterdir()) == [".env"]


def test_unreadable_file_refused(shared_dir: Path) -> None:
    path = write(shared_dir, ".env", SEED_ENV)
    path.chmod(0o600)
    code = ("import sys\nfrom pathlib import Path\nfrom syncd.cutover.appconfig import check_writable\n"
            "check_writable(Path(sys.argv[1]))\n")
    proc = as_nobody(code, str(path))
    assert proc.returncode == 1
    assert "is not readable by uid 65534" in proc.stderr


def test_owner_kept_when_run_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another owner")
    path = write(tmp_path, ".env", SEED_ENV)
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    result = flip(path, "env", FORWARD)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    assert result.notes == ()


def test_module_constants() -> None:
    assert appconfig.FORMATS == ("env", "yaml", "toml")
