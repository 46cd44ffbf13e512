"""Change capture in PostgreSQL (reverse direction): triggers write row images into ``syncd.changelog``.

Works without replication privileges (managed PostgreSQL): an AFTER INSERT / UPDATE /
DELETE row trigger on each captured table inserts one changelog row per change, inside
the writer's own transaction, and NOTIFYs ``syncd_changelog`` so that readers wake up.

``syncd.changelog``::

    id   bigint   position; from the sequence syncd.changelog_id_seq at insert time
    nsp  text     schema of the captured table
    tbl  text     captured table (plain name; nsp holds its schema)
    op   text     'I' | 'U' | 'D'; a primary-key change is logged as D (old key) + I (new)
    pk   jsonb    array of the key values, in primary-key column order
    row  jsonb    to_jsonb(NEW); NULL for a delete
    ts   float8   clock_timestamp() as Unix time (for lag)
    xid  xid8     the writing transaction

``TRUNCATE`` of a captured table is logged as one D per row (a BEFORE TRUNCATE statement
trigger), so that it is not lost on the way back.

**Origin tagging.** The triggers do nothing when ``current_setting('syncd.origin', true)``
is ``'syncd'``: :func:`syncd.pg.connect` sets that parameter in the startup packet of
every syncd connection, so syncd's own (forward) writes are never captured back. Where
syncd may set ``session_replication_role = replica`` the triggers do not even fire.

**Ordering without loss: the safe horizon.** Ids come from a sequence when the row is
inserted, but transactions commit in any order: while transaction A (id 7) is still open,
B (id 8) may commit, and a reader that checkpoints 8 would never see 7. A reader therefore
only reads ids up to a *horizon* below which no id can still appear:

1. read ``L``, the sequence's last value: every id <= L has been handed out;
2. in a later statement take ``N = pg_current_xact_id()`` (an autocommitted transaction id,
   one per new candidate). A writer gets its transaction id before its trigger takes an id
   from the sequence, so every transaction that holds an id <= L has an xid < N;
3. the candidate ``(L, N)`` becomes safe once a later snapshot has ``xmin >= N``: then
   every transaction below N has committed or rolled back, so the ids <= L are final
   (committed ones visible, rolled-back ones simply absent).

The snapshot's ``xmax`` is *not* a bound for step 2: PostgreSQL sets it to the latest
completed xid + 1, and a running transaction may hold a larger xid. Candidates wait in a
short queue; while a long transaction is open the horizon stays below its ids, and each
read returns at once (possibly empty). No transaction id is spent while nothing changes.

Positions are the ids themselves, so the reader's position is the same kind of value as
the SQLite changelog's. Each install of the changelog gets a random *generation*
(``syncd.changelog_meta``); a checkpoint taken against another generation is refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from syncd.errors import CaptureError, SyncdError
from syncd.model import Op, Position
from syncd.pg import close_quietly, translate
from syncd.ports import Pending
from syncd.sources.sqlite_schema import qi, ql

log = structlog.get_logger("syncd.pg_capture")

SCHEMA = "syncd"
CHANGELOG = f"{SCHEMA}.changelog"
SEQUENCE = f"{SCHEMA}.changelog_id_seq"
CAPTURED = f"{SCHEMA}.captured"
META = f"{SCHEMA}.changelog_meta"
CHANNEL = "syncd_changelog"
TRIGGER = "syncd_capture"
TRUNCATE_TRIGGER = "syncd_capture_truncate"
ORIGIN_SETTING = "syncd.origin"
ORIGIN_VALUE = "syncd"
_LOCK_KEY = 0x73796E6364  # "syncd": serialises capture DDL across syncd processes
_PRUNE_CHUNK = 5000
_MAX_CANDIDATES = 64

_SKIP_OWN = f"""
    IF current_setting('{ORIGIN_SETTING}', true) = '{ORIGIN_VALUE}' THEN
        RETURN NULL;
    END IF;"""

SETUP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE SEQUENCE IF NOT EXISTS {SEQUENCE};
CREATE TABLE IF NOT EXISTS {CHANGELOG} (
    id    bigint PRIMARY KEY DEFAULT nextval('{SEQUENCE}'),
    nsp   text NOT NULL,
    tbl   text NOT NULL,
    op    text NOT NULL CHECK (op IN ('I', 'U', 'D')),
    pk    jsonb NOT NULL,
    "row" jsonb,
    ts    double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
    xid   xid8 NOT NULL DEFAULT pg_current_xact_id()
);
ALTER SEQUENCE {SEQUENCE} OWNED BY {CHANGELOG}.id;
CREATE INDEX IF NOT EXISTS changelog_table ON {CHANGELOG} (nsp, tbl, id);
CREATE TABLE IF NOT EXISTS {CAPTURED} (
    nsp          text NOT NULL,
    tbl          text NOT NULL,
    pk           text[] NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (nsp, tbl)
);
CREATE TABLE IF NOT EXISTS {META} (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO {META} (key, value) VALUES ('generation', gen_random_uuid()::text)
    ON CONFLICT (key) DO NOTHING;

CREATE OR REPLACE FUNCTION {SCHEMA}.capture() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    new_row jsonb;
    old_key jsonb;
    new_key jsonb;
BEGIN{_SKIP_OWN}
    IF TG_OP <> 'INSERT' THEN
        SELECT jsonb_agg(to_jsonb(OLD) -> a.k ORDER BY a.n) INTO old_key
          FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
        SELECT jsonb_agg(new_row -> a.k ORDER BY a.n) INTO new_key
          FROM unnest(TG_ARGV) WITH ORDINALITY AS a(k, n);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'D', old_key, NULL);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'I', new_key, new_row);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row")
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'U', new_key, new_row);
    END IF;
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION {SCHEMA}.capture_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN{_SKIP_OWN}
    EXECUTE format(
        'INSERT INTO {CHANGELOG} (nsp, tbl, op, pk, "row") '
        'SELECT %L, %L, ''D'', (SELECT jsonb_agg(to_jsonb(t) -> a.k ORDER BY a.n) '
        'FROM unnest(%L::text[]) WITH ORDINALITY AS a(k, n)), NULL FROM %I.%I AS t',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$fn$;
"""


@dataclass(frozen=True, slots=True)
class LogRow:
    """One changelog row, with its images decoded by PostgreSQL into the table's column types.

    ``key`` and ``row`` hold the values asyncpg returns for the table's columns (``int``,
    ``float``, ``bool``, ``datetime``, ``bytes``, jsonb as ``str``, ...), as if read from the
    table itself. ``row`` is None for a delete.
    """

    position: Position
    table: str
    op: Op
    key: tuple[Any, ...]
    row: dict[str, Any] | None
    committed_at: float


_OPS = {"I": Op.INSERT, "U": Op.UPDATE, "D": Op.DELETE}


def _qualified(schema: str, table: str) -> str:
    return f"{qi(schema)}.{qi(table)}"


async def _primary_key(conn: asyncpg.Connection, schema: str, table: str) -> list[str] | None:
    """The primary-key columns of *schema.table* in key order; None if the table does not exist."""
    exists = await conn.fetchval(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')", schema, table)
    if exists is None:
        return None
    rows = await conn.fetch(
        """SELECT a.attname FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n""", exists)
    return [r["attname"] for r in rows]


async def _installed(conn: asyncpg.Connection, schema: str, table: str) -> tuple[bool, list[str] | None]:
    """Whether both triggers exist on the table, and the key recorded when they were made."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
        return False, None
    n = await conn.fetchval(
        """SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace s ON s.oid = c.relnamespace
           WHERE s.nspname = $1 AND c.relname = $2 AND t.tgname = ANY($3::text[])""",
        schema, table, [TRIGGER, TRUNCATE_TRIGGER])
    pk = await conn.fetchval(f"SELECT pk FROM {CAPTURED} WHERE nsp = $1 AND tbl = $2", schema, table)
    return n == 2, list(pk) if pk is not None else None


async def install(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """Create the changelog and the capture triggers on *tables* of *schema*; idempotent.

    Returns the tables whose triggers were created or rebuilt (their primary key changed).
    Runs in one transaction under ``pg_advisory_xact_lock``: concurrent installs (the table
    stream and the vector stream) serialise, and either every trigger exists afterwards or
    nothing changed. A table without a primary key, or missing, raises :class:`CaptureError`.
    """
    changed: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(SETUP)
            for table in tables:
                pk = await _primary_key(conn, schema, table)
                if pk is None:
                    raise CaptureError(f"cannot capture {schema}.{table} for the reverse stream: "
                                       "no such table in PostgreSQL")
                if not pk:
                    raise CaptureError(f"cannot capture {schema}.{table} for the reverse stream: it has "
                                       "no primary key; add one (syncd keys changes by primary key)")
                present, recorded = await _installed(conn, schema, table)
                if present and recorded == pk:
                    continue
                qt, args = _qualified(schema, table), ", ".join(ql(k) for k in pk)
                await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qt}")
                await conn.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {qt}")
                await conn.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qt} "
                                   f"FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.capture({args})")
                await conn.execute(f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {qt} "
                                   f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.capture_truncate({args})")
                await conn.execute(
                    f"INSERT INTO {CAPTURED} (nsp, tbl, pk) VALUES ($1, $2, $3) "
                    "ON CONFLICT (nsp, tbl) DO UPDATE SET pk = EXCLUDED.pk, installed_at = now()",
                    schema, table, pk)
                changed.append(table)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, "installing reverse capture in PostgreSQL") from exc
    if changed:
        log.info("reverse capture installed", schema=schema, tables=changed)
    return changed


async def uninstall(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Drop the capture triggers of *tables*; when no table is captured any more, drop the
    changelog, its sequence, functions and bookkeeping too (a later install starts a new
    generation)."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            for table in tables:
                if await _primary_key(conn, schema, table) is not None:
                    qt = _qualified(schema, table)
                    await conn.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {qt}")
                    await conn.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {qt}")
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
                    await conn.execute(f"DELETE FROM {CAPTURED} WHERE nsp = $1 AND tbl = $2", schema, table)
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CAPTURED):
                return
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {CAPTURED})"):
                return
            for ddl in (f"DROP TABLE IF EXISTS {CHANGELOG}", f"DROP SEQUENCE IF EXISTS {SEQUENCE}",
                        f"DROP TABLE IF EXISTS {CAPTURED}", f"DROP TABLE IF EXISTS {META}",
                        f"DROP FUNCTION IF EXISTS {SCHEMA}.capture()",
                        f"DROP FUNCTION IF EXISTS {SCHEMA}.capture_truncate()"):
                await conn.execute(ddl)
    except SyncdError:
        raise
    except Exception as exc:
        raise translate(exc, "removing reverse capture from PostgreSQL") from exc


async def missing(conn: asyncpg.Connection, schema: str, tables: Sequence[str]) -> list[str]:
    """The tables of *tables* whose changes would not be captured (no triggers, or triggers
    built for another primary key). The cutover refuses while this is not empty."""
    out: list[str] = []
    try:
        for table in tables:
            present, recorded = await _installed(conn, schema, table)
            if not present or recorded != await _primary_key(conn, schema, table):
                out.append(table)
    except Exception as exc:
        raise translate(exc, "checking reverse capture in PostgreSQL") from exc
    return out


async def generation(conn: asyncpg.Connection) -> str | None:
    """The random id of this install of the changelog (None when not installed)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", META):
        return None
    value = await conn.fetchval(f"SELECT value FROM {META} WHERE key = 'generation'")
    return str(value) if value is not None else None


Connect = Callable[[], Awaitable[asyncpg.Connection]]


class ChangeReader:
    """Reads ``syncd.changelog`` for the tables of one schema, up to the safe horizon.

    *connect* opens a connection (normally ``lambda: syncd.pg.connect(target, dsn)``); the
    reader keeps one for queries and one for LISTEN, and opens them again after a loss.
    Errors come out as :class:`~syncd.errors.SyncdError` (connection loss is retryable).
    Several readers may share the changelog; each reads and prunes only its own tables.
    """

    def __init__(self, connect: Connect, schema: str) -> None:
        self._connect = connect
        self.schema = schema
        self._conn: asyncpg.Connection | None = None
        self._listen: asyncpg.Connection | None = None
        self._woken = asyncio.Event()
        self._candidates: collections.deque[tuple[int, int]] = collections.deque()
        self._safe = 0
        self._keys: dict[str, list[str]] = {}

    async def close(self) -> None:
        for conn in (self._conn, self._listen):
            await close_quietly(conn)
        self._conn = self._listen = None

    @contextlib.asynccontextmanager
    async def _session(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        try:
            yield self._conn
        except SyncdError:
            raise
        except Exception as exc:
            err = translate(exc, doing)
            if isinstance(exc, asyncpg.UndefinedTableError):
                err = CaptureError(f"{doing}: reverse capture is not installed in PostgreSQL "
                                   f"({exc}); run the cutover, or install it with syncd")
            if self._conn is not None and (self._conn.is_closed() or not isinstance(err, CaptureError)):
                await close_quietly(self._conn)
                self._conn = None
            raise err from exc

    async def generation(self) -> str | None:
        async with self._session("reading the changelog generation") as conn:
            return await generation(conn)

    async def columns(self, table: str) -> dict[str, str]:
        """Column name -> PostgreSQL type (``format_type``) of *table*, in column order."""
        async with self._session(f"reading the columns of {self.schema}.{table}") as conn:
            rows = await conn.fetch(
                """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                   ORDER BY a.attnum""", self.schema, table)
        return {r["attname"]: r["type"] for r in rows}

    # --- the horizon --------------------------------------------------------------------

    async def _horizon(self, conn: asyncpg.Connection) -> int:
        """The highest id below which every changelog id is final (see the module docstring)."""
        seq = await conn.fetchrow(f"SELECT last_value, is_called FROM {SEQUENCE}")
        last = int(seq["last_value"]) if seq["is_called"] else 0
        newest = self._candidates[-1][0] if self._candidates else self._safe
        if last > newest:
            xid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
            if len(self._candidates) >= _MAX_CANDIDATES:
                self._candidates.pop()  # keep the older ones: they become safe first
            self._candidates.append((last, xid))
        xmin = int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
        while self._candidates and self._candidates[0][1] <= xmin:
            self._safe = max(self._safe, self._candidates.popleft()[0])
        return self._safe

    async def head(self) -> Position:
        """The newest position that is final: every change at or below it is readable."""
        async with self._session("reading the changelog head") as conn:
            return Position(await self._horizon(conn))

    # --- reading ------------------------------------------------------------------------

    async def read(self, after: Position, limit: int, tables: Collection[str]) -> list[LogRow]:
        """Up to *limit* changes of *tables* after *after*, in id order, never past the horizon."""
        names = sorted(tables)
        async with self._session("reading the PostgreSQL changelog") as conn:
            horizon = await self._horizon(conn)
            if horizon <= after.offset or not names:
                return []
            meta = await conn.fetch(
                f"""SELECT id, tbl, op, ts FROM {CHANGELOG}
                    WHERE id > $1 AND id <= $2 AND nsp = $3 AND tbl = ANY($4::text[])
                    ORDER BY id LIMIT $5""", after.offset, horizon, self.schema, names, limit)
            if not meta:
                return []
            by_table: dict[str, list[int]] = {}
            for r in meta:
                by_table.setdefault(r["tbl"], []).append(r["id"])
            images: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
            for table, ids in by_table.items():
                images.update(await self._decode(conn, table, ids))
        out = []
        for r in meta:
            key, row = images[r["id"]]
            op = _OPS[r["op"]]
            out.append(LogRow(position=Position(r["id"]), table=r["tbl"], op=op, key=key,
                              row=None if op is Op.DELETE else row, committed_at=float(r["ts"])))
        return out

    async def _decode(self, conn: asyncpg.Connection, table: str,
                      ids: list[int]) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
        """Images of *ids* as the table's own column types (``jsonb_populate_record``); for a
        delete, the image holds only the key columns."""
        pk = await conn.fetchval(f"SELECT pk FROM {CAPTURED} WHERE nsp = $1 AND tbl = $2",
                                 self.schema, table)
        if pk is None:
            raise CaptureError(f"the changelog holds changes of {self.schema}.{table}, which is no "
                               "longer captured; install reverse capture for it again")
        stmt = await conn.prepare(
            f"""SELECT c.id, r.* FROM {CHANGELOG} c CROSS JOIN LATERAL jsonb_populate_record(
                    NULL::{_qualified(self.schema, table)},
                    coalesce(c."row", (SELECT jsonb_object_agg(a.k, c.pk -> (a.n::int - 1))
                                       FROM unnest($2::text[]) WITH ORDINALITY AS a(k, n)))) r
                WHERE c.id = ANY($1::bigint[])""")
        names = [a.name for a in stmt.get_attributes()][1:]
        where = [names.index(k) for k in pk]
        out: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        for rec in await stmt.fetch(ids, list(pk)):
            values = tuple(rec)[1:]
            out[rec[0]] = (tuple(values[i] for i in where), dict(zip(names, values, strict=True)))
        return out

    async def pending(self, after: Position, tables: Collection[str]) -> Pending:
        """How many changes of *tables* are committed after *after*, and the oldest one's time."""
        async with self._session("counting pending changes in PostgreSQL") as conn:
            head = await self._horizon(conn)
            row = await conn.fetchrow(
                f"SELECT count(*), min(ts) FROM {CHANGELOG} WHERE id > $1 AND nsp = $2 "
                "AND tbl = ANY($3::text[])", after.offset, self.schema, sorted(tables))
        return Pending(count=int(row[0]), oldest_committed_at=row[1], head=Position(max(head, after.offset)))

    async def prune(self, upto: Position, tables: Collection[str]) -> int:
        """Delete changes of *tables* at or below *upto*, in chunks; return how many. Rows of
        other tables (another reverse stream's) are left alone."""
        total = 0
        names = sorted(tables)
        async with self._session("pruning the PostgreSQL changelog") as conn:
            while True:
                status = await conn.execute(
                    f"""DELETE FROM {CHANGELOG} WHERE id IN (
                          SELECT id FROM {CHANGELOG} WHERE nsp = $1 AND tbl = ANY($2::text[])
                          AND id <= $3 ORDER BY id LIMIT {_PRUNE_CHUNK})""",
                    self.schema, names, upto.offset)
                n = int(status.split()[-1])
                total += n
                if n < _PRUNE_CHUNK:
                    return total

    # --- waking -------------------------------------------------------------------------

    def _notified(self, *_args: Any) -> None:
        self._woken.set()

    async def wait(self, timeout: float) -> None:
        """Return when a change may have committed (NOTIFY), or after *timeout* seconds.

        LISTEN runs on a dedicated connection, opened again after a loss; the timeout is the
        floor that covers a lost notification. Connection errors here are not raised: the
        next read reports them.
        """
        if self._listen is None or self._listen.is_closed():
            try:
                self._listen = await self._connect()
                await self._listen.add_listener(CHANNEL, self._notified)
            except Exception as exc:
                await close_quietly(self._listen)
                self._listen = None
                log.warning("LISTEN failed; polling", error=str(exc))
                await asyncio.sleep(timeout)
                return
            return  # a change may have committed while nobody listened
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()


__all__ = ["CHANGELOG", "CHANNEL", "ChangeReader", "LogRow", "generation", "install", "missing",
           "uninstall"]
