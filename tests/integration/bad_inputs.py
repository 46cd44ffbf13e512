"""Bad inputs an operator can give syncd, and the one line syncd answers each with.

One table drives two things, so that they cannot drift apart:

- ``tests/integration/service/test_bad_inputs.py`` runs every case through the real `syncd`
  executable and checks the exit code, the one line (it must contain every fragment of
  ``says``), no traceback, no password, and the stores unchanged;
- the "When something is wrong" table of ``docs/operations.md``, written by
  ``python -m tests.integration.bad_inputs --write`` (and checked by a test).

Placeholders in ``argv`` and ``says`` are filled from the case's :class:`Env`: ``{config}``,
``{dir}``, ``{db}``, ``{state}``, ``{port}`` (PostgreSQL), ``{database}``, ``{bh}`` (a port that
never answers), ``{pid}`` (the process holding a lock), ``{user}`` (who runs syncd), ``{listen}``.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Setup = Callable[["Env"], None]
PLACEHOLDER = re.compile(r"\{(config|dir|db|state|port|database|bh|pid|user|listen)\}")


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    situation: str
    """What the operator did, in the words of the docs' table."""
    argv: tuple[str, ...]
    exit: int
    says: tuple[str, ...]
    """Fragments of the one line syncd prints, in order."""
    setup: tuple[Setup, ...] = ()
    out: str = "stderr"
    """Where the line goes: ``stderr`` (an error) or ``stdout`` (a command's own report)."""
    other_user: bool = False
    """Run syncd as an unprivileged user (``nobody`` when the tests run as root)."""
    signal: int | None = None
    """Sent once syncd waits on the FIFO of ``${file:…}`` or on the port that never answers."""
    changes: bool = False
    """The command succeeds and may change the stores (a warning, not a refusal)."""
    secret: str | None = None
    """Another password that must not be printed either."""


# --- the environment a case runs in --------------------------------------------------------

@dataclass
class Env:
    """One case's directory, SQLite file, PostgreSQL database and config."""

    dir: Path
    port: int
    database: str
    dsn: str
    user: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw_config: bytes | None = None
    environ: dict[str, str] = field(default_factory=dict)
    blackhole_port: int = 0
    fifo: Path | None = None
    lock_pid: int = 0
    listen: str = ""
    helpers: list[Any] = field(default_factory=list)
    """Processes and sockets to end after the case."""
    run_syncd: Callable[..., Any] | None = None
    """``run_syncd(*args)``: syncd as the tests' user, for set-up steps (init, run)."""
    other: Any = None
    """The :class:`~tests.integration.operator_support.OtherUser`, for permission cases."""

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def db(self) -> Path:
        return self.data / "app.sqlite"

    @property
    def config(self) -> Path:
        return self.dir / "syncd.toml"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def fill(self, text: str) -> str:
        values = {"config": self.config, "dir": self.dir, "db": self.db, "state": self.state,
                  "port": self.port,
                  "database": self.database, "bh": self.blackhole_port, "pid": self.lock_pid,
                  "user": self.user, "listen": self.listen}
        return PLACEHOLDER.sub(lambda m: str(values[m[1]]), text)

    def sql(self, script: str) -> None:
        conn = sqlite3.connect(self.db)
        conn.executescript(script)
        conn.close()

    def write(self) -> None:
        from tests.integration.operator_support import to_toml

        self.config.write_bytes(self.raw_config if self.raw_config is not None
                                else to_toml(self.sections).encode())


def base_sections(env: Env) -> dict[str, dict[str, Any]]:
    return {
        "source.sqlite": {"path": str(env.db)},
        "target": {"dsn": env.dsn, "connect_timeout": 10.0},
        "state": {"dir": str(env.state)},
        "health": {"listen": ""},
        "stream": {"poll_interval": 0.2},
        "cutover": {"lock_timeout": 1.0},
    }


# --- set-up steps --------------------------------------------------------------------------

def setting(section: str, **values: Any) -> Setup:
    def step(env: Env) -> None:
        resolved = {k: env.fill(v) if isinstance(v, str) else v for k, v in values.items()}
        env.sections.setdefault(section, {}).update(resolved)
    return step


def section(name: str, values: dict[str, Any] | None) -> Setup:
    """Set (or with None, remove) a whole section."""
    def step(env: Env) -> None:
        if values is None:
            env.sections.pop(name, None)
        else:
            env.sections[name] = {k: env.fill(v) if isinstance(v, str) else v for k, v in values.items()}
    return step


def remove(section_name: str, key: str) -> Setup:
    def step(env: Env) -> None:
        env.sections.get(section_name, {}).pop(key, None)
    return step


def raw(content: bytes) -> Setup:
    def step(env: Env) -> None:
        env.raw_config = content
    return step


def sqlite(script: str) -> Setup:
    def step(env: Env) -> None:
        env.sql(script)
    return step


def file(relative: str, content: bytes = b"", mode: int | None = None) -> Setup:
    def step(env: Env) -> None:
        path = env.dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if mode is not None:
            path.chmod(mode)
    return step


def environ(**values: str) -> Setup:
    def step(env: Env) -> None:
        env.environ.update(values)
    return step


def dsn(make: Callable[[Env], str]) -> Setup:
    def step(env: Env) -> None:
        env.sections["target"]["dsn"] = make(env)
    return step


def blackhole(env: Env) -> None:
    """The target is a port that accepts connections and never answers."""
    from tests.integration.operator_support import Blackhole, url_dsn

    hole = Blackhole()
    env.helpers.append(hole)
    env.blackhole_port = hole.port
    env.sections["target"]["dsn"] = url_dsn(hole.port, env.database)
    env.sections["target"]["connect_timeout"] = 60.0


def fifo_credential(env: Env) -> None:
    """The password comes from ``${file:FIFO}``: reading it blocks config loading."""
    from tests.integration.operator_support import APP_USER

    env.fifo = env.dir / "password.fifo"
    os.mkfifo(env.fifo)
    env.sections["target"]["dsn"] = f"postgresql://{APP_USER}:${{file:{env.fifo}}}@127.0.0.1:{env.port}/x"


def init(env: Env) -> None:
    assert env.run_syncd is not None
    env.write()
    env.run_syncd("-c", str(env.config), "init")


def caught_up(env: Env) -> None:
    assert env.run_syncd is not None
    env.write()
    env.run_syncd("-c", str(env.config), "run", "--until-caught-up")


def uninstall(env: Env) -> None:
    assert env.run_syncd is not None
    env.write()
    env.run_syncd("-c", str(env.config), "uninstall")


def embedded(env: Env) -> None:
    env.sections["target"]["dsn"] = "embedded"


def lock_holder(env: Env) -> None:
    """Another process holds SQLite's write lock (``BEGIN IMMEDIATE``) until the case ends."""
    import subprocess

    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(env.db)], stdout=subprocess.PIPE, text=True)
    env.helpers.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    env.lock_pid = proc.pid


def daemon(env: Env) -> None:
    """`syncd run` in the background, with a health server, caught up."""
    from tests.integration.operator_support import start_daemon

    start_daemon(env)


def cutover_config(env: Env) -> None:
    app = env.dir / "app" / ".env"
    app.parent.mkdir(exist_ok=True)
    app.write_text("RELATIONAL_DB_PROVIDER=sqlite\n")
    env.sections["cutover"].update({"app_config": str(app), "reload_command": "true", "verify": "off"})
    env.sections["cutover.forward"] = {"RELATIONAL_DB_PROVIDER": "postgres"}
    env.sections["cutover.rollback"] = {"RELATIONAL_DB_PROVIDER": "sqlite"}


def readonly(relative: str) -> Setup:
    """Make a path unwritable for the user syncd runs as."""
    def step(env: Env) -> None:
        from tests.integration.operator_support import make_readonly_for

        path = env.dir / relative
        if not path.exists():
            path.mkdir(parents=True)
        make_readonly_for(path, env.other)
    return step


def open_to_others(relative: str, mode: int) -> Setup:
    def step(env: Env) -> None:
        if relative == "syncd.toml":
            env.write()
        (env.dir / relative).chmod(mode)
    return step


def free_listen(host: str) -> Setup:
    def step(env: Env) -> None:
        from tests.pg_tcp import free_port

        env.listen = f"{host}:{free_port()}"
        env.sections["health"]["listen"] = env.listen
    return step


def busy_listen(env: Env) -> None:
    """health.listen names a port another process already listens on."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    env.helpers.append(sock)
    env.listen = f"127.0.0.1:{sock.getsockname()[1]}"
    env.sections["health"]["listen"] = env.listen


LONG = "customer_subscription_invoice_line_item_adjustment_history_entries_for_audit_v02"
assert len(LONG) == 80
INIT = ("-c", "{config}", "init")
STATUS = ("-c", "{config}", "status")
WRONG = "Wr0ng-passw0rd-@-here"


def _url(**kw: Any) -> Callable[[Env], str]:
    def make(env: Env) -> str:
        from tests.integration.operator_support import url_dsn

        args: dict[str, Any] = {"port": env.port, "database": env.database, **kw}
        return url_dsn(args.pop("port"), args.pop("database"), **args)
    return make


def _keywords(**kw: Any) -> Callable[[Env], str]:
    def make(env: Env) -> str:
        from tests.integration.operator_support import keyword_dsn

        return keyword_dsn(env.port, env.database, **kw)
    return make


# --- the cases -----------------------------------------------------------------------------

C = Case
CASES: tuple[Case, ...] = (
    # config file
    C("config-missing", "config", "`-c` names a file that does not exist",
      ("-c", "{dir}/nope.toml", "status"), 2, ("config file {dir}/nope.toml does not exist",)),
    C("config-after-command", "config", "`-c` after the command, naming a file that does not exist",
      ("status", "-c", "{dir}/nope.toml"), 2, ("config file {dir}/nope.toml does not exist",)),
    C("config-none", "config", "no `-c` and no `SYNCD_CONFIG`",
      ("status",), 2, ("no config", "-c FILE", "SYNCD_CONFIG")),
    C("config-is-directory", "config", "`-c` names a directory",
      ("-c", "{dir}", "status"), 2, ("config file {dir} is a directory",)),
    C("config-not-toml", "config", "the config is not valid TOML",
      STATUS, 2, ("{config}", "not valid TOML", "line 1"), setup=(raw(b"[target\ndsn = 1\n"),)),
    C("config-not-utf8", "config", "the config is not UTF-8 text",
      STATUS, 2, ("{config}", "not UTF-8"), setup=(raw(b"\xff\xfe[target]\n"),)),
    C("config-unknown-section", "config", "a misspelt section (`[targte]`)",
      STATUS, 2, ("targte: unknown key", "did you mean target?"), setup=(setting("targte", dsn="x"),)),
    C("config-unknown-key", "config", "a misspelt key (`dsm = …`)",
      STATUS, 2, ("target.dsm: unknown key", "did you mean target.dsn?"),
      setup=(setting("target", dsm="x"),)),
    C("config-wrong-type", "config", "a number given as text",
      STATUS, 2, ("stream.batch_size: expected int, got 'big'",),
      setup=(setting("stream", batch_size="big"),)),
    C("config-not-positive", "config", "a negative interval",
      STATUS, 2, ("stream.poll_interval: must be > 0",), setup=(setting("stream", poll_interval=-1.0),)),
    C("config-no-source", "config", "neither `[source.sqlite]` nor `[source.chroma]`",
      STATUS, 2, ("source: configure [source.sqlite] and/or [source.chroma]",),
      setup=(section("source.sqlite", None),)),
    C("config-sqlite-no-path", "config", "`[source.sqlite]` without `path`",
      STATUS, 2, ("source.sqlite.path: required key is missing",), setup=(remove("source.sqlite", "path"),)),
    C("config-no-primary-key", "config", "an unknown `no_primary_key` policy",
      STATUS, 2, ("source.sqlite.no_primary_key: expected one of",),
      setup=(setting("source.sqlite", no_primary_key="drop"),)),
    C("config-tables-empty", "config", "`tables = []`",
      INIT, 2, ("source.sqlite.tables: the list is empty",), setup=(setting("source.sqlite", tables=[]),)),
    C("config-schema-empty", "config", "`schema = \"\"`",
      STATUS, 2, ("target.schema:", "is not a PostgreSQL schema name"),
      setup=(setting("target", schema=""),)),
    C("config-listen-no-port", "config", "`health.listen` without a port",
      STATUS, 2, ("health.listen: expected host:port", "'localhost'"),
      setup=(setting("health", listen="localhost"),)),
    C("config-listen-bad-port", "config", "`health.listen` with a port over 65535",
      STATUS, 2, ("health.listen: expected host:port", "99999"),
      setup=(setting("health", listen="127.0.0.1:99999"),)),
    C("config-listen-public", "config", "`health.listen = \"0.0.0.0:…\"` (a warning; init goes on)",
      INIT, 0, ("health.listen = {listen}", "serves /status and /metrics to the network", "127.0.0.1:"),
      setup=(free_listen("0.0.0.0"),), changes=True),
    C("config-log-level", "config", "`--log-level` that does not exist",
      ("-c", "{config}", "--log-level", "loud", "status"), 2, ("--log-level: invalid choice: 'loud'",)),
    C("config-log-level-env", "config", "`SYNCD_LOG_LEVEL` that does not exist",
      STATUS, 2, ("log level", "expected one of", "'loud'"), setup=(environ(SYNCD_LOG_LEVEL="loud"),)),
    C("config-cutover-verify", "config", "`[cutover] verify` that does not exist",
      STATUS, 2, ("cutover.verify: expected one of",), setup=(setting("cutover", verify="maybe"),)),
    C("config-cutover-no-rollback", "config",
      "a `[cutover.forward]` key without its `[cutover.rollback]` value",
      STATUS, 2, ("cutover.rollback.DB_PROVIDER: missing",),
      setup=(setting("cutover", app_config="app.env"),
             section("cutover.forward", {"DB_PROVIDER": "postgres"}))),
    C("config-chroma-url", "config", "`[source.chroma] url` without `http://`",
      STATUS, 2, ("source.chroma.url: expected http://HOST:PORT", "'localhost:8000'"),
      setup=(section("source.chroma", {"url": "localhost:8000"}),)),
    C("config-chroma-nothing", "config", "`[source.chroma]` with neither `url` nor `path`",
      STATUS, 2, ("source.chroma: set url",), setup=(section("source.chroma", {}),)),
    C("config-env-unset", "config", "`${VAR}` of an unset environment variable",
      STATUS, 2, ("target.dsn: environment variable SYNCD_TEST_NO_SUCH_VAR is not set",),
      setup=(setting("target", dsn="postgresql://app:${SYNCD_TEST_NO_SUCH_VAR}@127.0.0.1/x"),)),
    C("config-credential-missing", "config", "`${file:…}` of a file that does not exist",
      STATUS, 2, ("target.dsn: cannot read {dir}/nope.secret", "No such file"),
      setup=(setting("target", dsn="postgresql://app:${file:{dir}/nope.secret}@127.0.0.1/x"),)),
    # the target's address
    C("dsn-missing", "config", "no `dsn` in `[target]`",
      STATUS, 2, ("target.dsn: required key is missing",), setup=(remove("target", "dsn"),)),
    C("dsn-empty", "config", "`dsn = \"\"`",
      STATUS, 2, ("target.dsn: is empty", "postgresql://USER@HOST:5432/DATABASE"),
      setup=(setting("target", dsn=""),)),
    C("dsn-other-database", "config", "a `mysql://` URL",
      STATUS, 2, ("target.dsn: a mysql:// URL is not PostgreSQL",),
      setup=(setting("target", dsn="mysql://app:pw@db/app"),)),
    C("dsn-keyword-unknown", "config", "a keyword DSN with a misspelt keyword",
      STATUS, 2, ("target.dsn: unknown keyword 'dbnam'",),
      setup=(setting("target", dsn="host=db dbnam=app"),)),
    C("dsn-keyword-quote", "config", "a keyword DSN with an unclosed quote",
      STATUS, 2, ("target.dsn: the quoted value of password has no closing quote",),
      setup=(setting("target", dsn="host=db dbname=app password='abc"),)),
    C("dsn-connect-timeout", "config", "`connect_timeout` in the DSN",
      STATUS, 2, ("target.dsn: connect_timeout is not read from the DSN", "[target] connect_timeout"),
      setup=(setting("target", dsn="postgresql://app@db/app?connect_timeout=5"),)),
    C("dsn-not-an-address", "config", "a DSN that is neither a URL nor keywords",
      STATUS, 2, ("target.dsn:", "is not a PostgreSQL address"), setup=(setting("target", dsn="localhost"),)),
    # the target's and the source's contents
    C("column-type-made-up", "config", "`[target.column_types]` with a type PostgreSQL does not have",
      INIT, 2, ('target.column_types."users.name": PostgreSQL has no type \'strnig\'',),
      setup=(section("target.column_types", {"users.name": "strnig"}),)),
    C("column-type-no-dot", "config", "`[target.column_types]` key without `table.column`",
      STATUS, 2, ('target.column_types.users: expected "table.column"',),
      setup=(section("target.column_types", {"users": "text"}),)),
    C("column-type-no-table", "config", "`[target.column_types]` naming a table that is not synced",
      INIT, 2, ('target.column_types."usres.name": no synced table \'usres\' in {db}',),
      setup=(section("target.column_types", {"usres.name": "text"}),)),
    C("column-type-no-column", "config", "`[target.column_types]` naming a column the table lacks",
      INIT, 2, ('target.column_types."users.nmae": table users has no column \'nmae\'',),
      setup=(section("target.column_types", {"users.nmae": "text"}),)),
    C("table-name-too-long", "config", f"a SQLite table name of {len(LONG)} bytes",
      INIT, 2, (f"table '{LONG}' of {{db}}", "80 bytes, over PostgreSQL's limit of 63",
                "[target.table_names]"),
      setup=(sqlite(f"CREATE TABLE {LONG} (id INTEGER PRIMARY KEY)"),)),
    C("table-name-mapped-too-long", "config", "`[target.table_names]` giving a name over 63 bytes",
      STATUS, 2, ('target.table_names."users"', "70 bytes; PostgreSQL's limit is 63"),
      setup=(section("target.table_names", {"users": "u" * 70}),)),
    C("table-name-mapped-unknown", "config", "`[target.table_names]` naming a table that is not synced",
      INIT, 2, ('target.table_names."nope": no synced table nope in {db}',),
      setup=(section("target.table_names", {"nope": "elsewhere"}),)),
    C("table-name-clash", "config", "`[target.table_names]` giving a table the name of another",
      INIT, 2, ("tables 'docs' and 'users' would both be written to public.users",),
      setup=(sqlite("CREATE TABLE docs (id INTEGER PRIMARY KEY)"),
             section("target.table_names", {"docs": "users"}))),
    # paths
    C("sqlite-missing", "paths", "`source.sqlite.path` does not exist",
      STATUS, 1, ("SQLite database {dir}/data/nope.sqlite does not exist", "source.sqlite.path"),
      setup=(setting("source.sqlite", path="{dir}/data/nope.sqlite"),)),
    C("sqlite-is-directory", "paths", "`source.sqlite.path` is a directory",
      INIT, 1, ("source.sqlite.path {dir}/data is a directory",),
      setup=(setting("source.sqlite", path="{dir}/data"),)),
    C("sqlite-not-a-database", "paths", "`source.sqlite.path` is not a SQLite file",
      INIT, 1, ("{dir}/data/notes.txt", "file is not a database", "source.sqlite.path"),
      setup=(file("data/notes.txt", b"these are not the tables you are looking for\n" * 100),
             setting("source.sqlite", path="{dir}/data/notes.txt"))),
    C("sqlite-empty-file", "paths", "`source.sqlite.path` is an empty (0-byte) file",
      INIT, 1, ("{dir}/data/empty.sqlite has no tables", "source.sqlite.path"),
      setup=(file("data/empty.sqlite"), setting("source.sqlite", path="{dir}/data/empty.sqlite"))),
    C("sqlite-all-excluded", "paths", "`exclude` names every table",
      INIT, 2, ("source.sqlite.exclude: leaves nothing to sync", "users"),
      setup=(setting("source.sqlite", exclude=["users"]),)),
    C("sqlite-table-unknown", "paths", "`tables` names a table the database lacks",
      INIT, 1, ("source.sqlite.tables names ['nope']",), setup=(setting("source.sqlite", tables=["nope"]),)),
    C("state-dir-is-file", "paths", "`[state] dir` is a file (embedded PostgreSQL)",
      STATUS, 1, ("state.dir {dir}/statefile is not a directory",),
      setup=(embedded, file("statefile", b"x"), setting("state", dir="{dir}/statefile"))),
    C("demo-dir-is-file", "paths", "`demo --dir` names a file",
      ("demo", "--dir", "{dir}/afile"), 2, ("demo --dir {dir}/afile is a file",),
      setup=(file("afile", b"x"),)),
    C("cutover-app-config-missing", "paths", "`[cutover] app_config` does not exist",
      ("-c", "{config}", "cutover", "--dry-run"), 1, ("cutover refused", "{dir}/app/missing.env"),
      setup=(init, cutover_config, setting("cutover", app_config="{dir}/app/missing.env"))),
    # states
    C("status-before-init", "state", "`status` before `init`",
      STATUS, 0, ("sqlite: not initialised", "no change capture in {db}", "run `syncd init`"), out="stdout"),
    C("status-after-uninstall", "state", "`status` after `uninstall`",
      STATUS, 0, ("sqlite: uninstalled", "`syncd uninstall`", "run `syncd init`"), out="stdout",
      setup=(init, caught_up, uninstall)),
    C("status-listen-off", "state", "`status` with `health.listen = \"\"`",
      STATUS, 0, ("daemon: cannot be asked: health.listen = ''",), out="stdout", setup=(init,)),
    C("run-before-init", "state", "`run` before `init`",
      ("-c", "{config}", "run", "--until-caught-up"), 1, ("change capture is not installed", "`syncd init`")),
    C("cutover-before-init", "state", "`cutover` before anything was synced",
      ("-c", "{config}", "cutover", "--dry-run"), 1, ("cutover refused", "nothing to switch"),
      setup=(cutover_config,)),
    # permissions
    C("state-dir-not-writable", "permissions", "`[state] dir` belongs to another user (embedded PostgreSQL)",
      STATUS, 1, ("state.dir {state} is not writable by user {user}", "sudo chown -R {user} {state}"),
      setup=(embedded, readonly("state")), other_user=True),
    C("state-dir-not-creatable", "permissions", "`[state] dir` does not exist and its parent is not writable",
      STATUS, 1, ("state.dir {dir}/locked/state does not exist and user {user} cannot create it",
                  "sudo install -d -o {user} {dir}/locked/state"),
      setup=(embedded, readonly("locked"), setting("state", dir="{dir}/locked/state")), other_user=True),
    C("sqlite-not-writable", "permissions", "the SQLite file is not writable by syncd's user",
      INIT, 1, ("SQLite database {db} is not writable by user {user}", "chmod g+w {db}"),
      setup=(open_to_others("data", 0o777), readonly("data/app.sqlite")), other_user=True),
    C("sqlite-dir-not-writable", "permissions", "the SQLite file's directory is not writable (its journal)",
      INIT, 1, ("directory {dir}/data is not writable by user {user}", "journal"),
      setup=(open_to_others("data/app.sqlite", 0o666), readonly("data")), other_user=True),
    C("config-unreadable", "permissions", "the config file cannot be read by syncd's user",
      STATUS, 2, ("config file {config} cannot be read by user {user}",),
      setup=(open_to_others("syncd.toml", 0o600),), other_user=True),
    C("credential-unreadable", "permissions", "`${file:…}` names a file syncd's user cannot read",
      STATUS, 2, ("target.dsn: cannot read {dir}/pg.secret", "Permission denied"),
      setup=(file("pg.secret", b"x", 0o600), setting("target", dsn="postgresql://app:${file:{dir}/pg.secret}@h/x")),
      other_user=True),
    # credentials
    C("password-wrong", "credentials", "a wrong password",
      STATUS, 1, ("127.0.0.1:{port}/{database} as app", "authentication failed", "target.dsn"),
      setup=(dsn(_url(password=WRONG)),), secret=WRONG),
    C("password-wrong-raw", "credentials", "a wrong password with an unencoded `@` in a URL",
      STATUS, 1, ("127.0.0.1:{port}/{database} as app", "authentication failed"),
      setup=(dsn(_url(password=WRONG, encoded=False)),), secret=WRONG),
    C("password-wrong-keywords", "credentials", "a wrong password in a keyword DSN",
      STATUS, 1, ("127.0.0.1:{port}/{database} as app", "authentication failed"),
      setup=(dsn(_keywords(password=WRONG)),), secret=WRONG),
    C("user-unknown", "credentials", "a user PostgreSQL does not know",
      STATUS, 1, ("as ghost", "authentication failed"), setup=(dsn(_url(user="ghost")),)),
    C("database-missing", "credentials", "a database that does not exist",
      STATUS, 1, ("127.0.0.1:{port}", 'database "no_such_db" does not exist', "CREATE DATABASE"),
      setup=(dsn(_url(database="no_such_db")),)),
    C("privilege-missing", "credentials", "a user without the right to create tables",
      INIT, 1, ("permission denied", "grant"), setup=(dsn(_url(user="weak")),)),
    # network
    C("pg-refused", "network", "nothing listens on the target's port",
      STATUS, 1, ("PostgreSQL unreachable at 127.0.0.1:1/", "connection refused", "target.dsn"),
      setup=(dsn(_url(port=1)),)),
    C("pg-host-unknown", "network", "the target's host name does not resolve",
      STATUS, 1, ("PostgreSQL unreachable at no-such-host.invalid:", "cannot resolve the host", "target.dsn"),
      setup=(dsn(_url(host="no-such-host.invalid")),)),
    C("pg-no-answer", "network", "the target's port accepts but never answers",
      STATUS, 1, ("PostgreSQL unreachable at 127.0.0.1:{bh}", "no answer within 1 s",
                  "target.connect_timeout"),
      setup=(blackhole, setting("target", connect_timeout=1.0))),
    C("chroma-refused-init", "network", "`[source.chroma] url` with nothing listening: `init`",
      INIT, 1, ("Chroma at http://127.0.0.1:1 (source.chroma.url) does not answer", "start the app's Chroma"),
      setup=(section("source.chroma", {"url": "http://127.0.0.1:1"}),)),
    C("chroma-refused-status", "network", "`[source.chroma] url` with nothing listening: `status`",
      STATUS, 0, ("chroma: Chroma at http://127.0.0.1:1 (source.chroma.url) does not answer",), out="stdout",
      setup=(init, section("source.chroma", {"url": "http://127.0.0.1:1"}))),
    C("chroma-refused-run", "network", "`[source.chroma] url` with nothing listening: `run`",
      ("-c", "{config}", "run"), 1, ("Chroma at http://127.0.0.1:1 (source.chroma.url) does not answer",),
      setup=(init, section("source.chroma", {"url": "http://127.0.0.1:1"}))),
    C("health-port-taken", "network", "`health.listen` names a port already in use",
      ("-c", "{config}", "run"), 2, ("health.listen: cannot listen on {listen}", "address already in use"),
      setup=(init, busy_listen)),
    # locks
    C("init-sqlite-locked", "locks", "`init` while the app holds SQLite's write lock",
      INIT, 1, ("write lock on {db}", "held by pid {pid}", "waited 1 s", "`syncd init` again"),
      setup=(lock_holder,)),
    C("uninstall-sqlite-locked", "locks", "`uninstall` while the app holds SQLite's write lock",
      ("-c", "{config}", "uninstall"), 1, ("write lock on {db}", "held by pid {pid}", "waited 1 s"),
      setup=(init, lock_holder)),
    C("cutover-sqlite-locked", "locks", "`cutover` while the app holds SQLite's write lock",
      ("-c", "{config}", "cutover"), 1,
      ("cutover refused", "write lock on {db}", "held by pid {pid}", "waited 1 s", "cutover.lock_timeout"),
      setup=(init, cutover_config, free_listen("127.0.0.1"), daemon, lock_holder)),
    # signals
    C("sigint-loading-config", "signals", "Ctrl-C while syncd reads its config (`status`)",
      STATUS, 130, ("status interrupted by SIGINT", "run it again"),
      setup=(fifo_credential,), signal=signal.SIGINT),
    C("sigterm-loading-config", "signals", "SIGTERM while syncd reads its config (`init`)",
      INIT, 143, ("init interrupted by SIGTERM", "`syncd init` again"), setup=(fifo_credential,),
      signal=signal.SIGTERM),
    C("sighup-loading-config", "signals",
      "SIGHUP (terminal closed) while `run` starts (it stops as a daemon does)",
      ("-c", "{config}", "run"), 0, ("run interrupted by SIGHUP",), setup=(fifo_credential,),
      signal=signal.SIGHUP),
    C("sigint-connecting-status", "signals", "Ctrl-C while `status` waits for PostgreSQL",
      STATUS, 130, ("status interrupted by SIGINT",), setup=(blackhole,), signal=signal.SIGINT),
    C("sigterm-connecting-verify", "signals", "SIGTERM while `verify` waits for PostgreSQL",
      ("-c", "{config}", "verify"), 143, ("verify interrupted by SIGTERM",), setup=(init, blackhole),
      signal=signal.SIGTERM),
    C("sigint-connecting-init", "signals", "Ctrl-C while `init` waits for PostgreSQL",
      INIT, 130, ("init interrupted by SIGINT", "`syncd init` again"),
      setup=(blackhole,), signal=signal.SIGINT),
    C("sigterm-connecting-rejects", "signals", "SIGTERM while `rejects` waits for PostgreSQL",
      ("-c", "{config}", "rejects"), 143, ("rejects interrupted by SIGTERM",), setup=(blackhole,),
      signal=signal.SIGTERM),
    # arguments
    C("no-command", "arguments", "`syncd` alone",
      (), 2, ("which command?", "syncd --help")),
    C("unknown-command", "arguments", "a command that does not exist",
      ("frobnicate",), 2, ("invalid choice: 'frobnicate'",)),
    C("unknown-option", "arguments", "an option the command does not have",
      ("-c", "{config}", "status", "--jsno"), 2, ("unrecognized arguments: --jsno", "syncd --help")),
    C("rejects-limit-negative", "arguments", "`rejects --limit -1`",
      ("-c", "{config}", "rejects", "--limit", "-1"), 2, ("--limit: must be at least 1, got -1",)),
    C("rejects-limit-text", "arguments", "`rejects --limit ten`",
      ("-c", "{config}", "rejects", "--limit", "ten"), 2, ("--limit: expected a whole number, got 'ten'",)),
    C("rejects-accept-unknown", "arguments", "`rejects --accept` of an id that is not an open reject",
      ("-c", "{config}", "rejects", "--accept", "999"), 2, ("--accept 999: no reject #999",), setup=(init,)),
    C("verify-chunk-rows", "arguments", "`verify --chunk-rows 1`",
      ("-c", "{config}", "verify", "--chunk-rows", "1"), 2, ("--chunk-rows: must be at least 2",)),
    C("verify-min-recall", "arguments", "`verify --min-recall 2`",
      ("-c", "{config}", "verify", "--min-recall", "2"), 2, ("--min-recall: must be between 0 and 1",)),
    C("verify-ef-search", "arguments", "`verify --ef-search 5000`",
      ("-c", "{config}", "verify", "--ef-search", "5000"), 2, ("--ef-search: must be between 1 and 1000",)),
    C("verify-unknown-table", "arguments", "`verify --table` of a table that is not synced",
      ("-c", "{config}", "verify", "--table", "nope"), 2, ("--table nope: not a synced table",),
      setup=(init,)),
)


# --- the docs' table -----------------------------------------------------------------------

DOC_NAMES = {"config": "<config file>", "dir": "<dir>", "db": "<source.sqlite.path>", "state": "<state.dir>",
             "port": "<port>", "database": "<database>", "bh": "<port>", "pid": "<pid>", "user": "<user>",
             "listen": "<health.listen>"}
BEGIN = "<!-- bad-inputs: generated by `python -m tests.integration.bad_inputs --write`; do not edit -->"
END = "<!-- bad-inputs: end -->"
_TITLES = {"config": "Config", "paths": "Paths and files", "state": "Not set up yet, or removed",
           "permissions": "Permissions", "credentials": "Credentials", "network": "Network",
           "locks": "Locks", "signals": "Signals", "arguments": "Command line"}


def _doc(text: str) -> str:
    return PLACEHOLDER.sub(lambda m: DOC_NAMES[m[1]], text).replace("|", "\\|")


def markdown() -> str:
    lines = [BEGIN, ""]
    for category, title in _TITLES.items():
        lines += [f"**{title}**", "", "| what happened | exit | what syncd says (excerpt) |", "|---|---|---|"]
        for c in CASES:
            if c.category != category:
                continue
            says = " … ".join(f"`{_doc(s)}`" for s in c.says)
            where = " (stdout)" if c.out == "stdout" else ""
            situation = c.situation.replace("|", "\\|")
            lines.append(f"| {situation} | {c.exit} | {says}{where} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def replace_in(doc: str) -> str:
    """*doc* with the generated table in place of the one between the markers."""
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    return doc[:start] + markdown() + doc[end:]


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
    if argv[1:] == ["--write"]:
        path.write_text(replace_in(path.read_text()))
        return 0
    print(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
