"""Reading ``syncd.changelog`` (:mod:`syncd.pg.capture`) in position order, without loss.

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
the SQLite changelog's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from syncd.errors import CaptureError, SyncdError
from syncd.model import Op, Position
from syncd.pg import split
from syncd.pg.capture import CAPTURED, CHANGELOG, CHANNEL, SEQUENCE, generation, qualified
from syncd.pg.connect import close_quietly, translate
from syncd.ports import Pending

log = structlog.get_logger("syncd.pg.capture")

_PRUNE_CHUNK = 1000
_MAX_CANDIDATES = 64
# While ids wait above the horizon, the transactions holding it back end without a NOTIFY:
# look again after this long, doubling while it stays held back (up to the poll interval,
# so that a long transaction costs each reader no more than its usual polling).
_RECHECK_FIRST = 0.002


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


Connect = Callable[[], Awaitable[asyncpg.Connection]]


class ChangeReader:
    """Reads ``syncd.changelog`` for the tables of one schema, up to the safe horizon.

    *connect* opens a connection (normally ``lambda: connect.connect(target, dsn)``); the
    reader keeps one for queries and one for LISTEN, and opens them again after a loss.
    Errors come out as :class:`~syncd.errors.SyncdError` (connection loss is retryable).
    Several readers may share the changelog; each reads and prunes only its own tables.

    One operation at a time uses the query connection (:meth:`_session`): a prune runs as a
    task beside the stream's reads (:mod:`syncd.pruning`), and an asyncpg connection given two
    at once fails the second ("another operation is in progress") or loses its place in the
    protocol. A prune takes it a chunk at a time, so reads get in between.
    """

    def __init__(self, connect: Connect, schema: str) -> None:
        self._connect = connect
        self.schema = schema
        self._conn: asyncpg.Connection | None = None
        self._listen: asyncpg.Connection | None = None
        self._woken = asyncio.Event()
        self._candidates: collections.deque[tuple[int, int]] = collections.deque()
        self._safe = 0
        self._read_upto = 0  # the horizon the last read stopped at
        self._recheck = _RECHECK_FIRST
        self._keys: dict[str, list[str]] = {}
        self._busy = asyncio.Lock()  # held for each use of the query connection

    async def close(self) -> None:
        for conn in (self._conn, self._listen):
            await close_quietly(conn)
        self._conn = self._listen = None

    @contextlib.asynccontextmanager
    async def _session(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        async with self._busy:
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
            self._recheck = _RECHECK_FIRST
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
            horizon = self._read_upto = await self._horizon(conn)
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
        rowtype = qualified(self.schema, table)
        pair = await split.lookup(conn, self.schema, table)
        if pair is not None:  # a collection over two tables: rows of syncd's view, keyed by item id
            rowtype, pk = pair.view_qualified, [split.ITEM_COL]
            if await conn.fetchval("SELECT to_regclass($1)", rowtype) is None:
                await split.restore(conn, pair)  # dropped for a migration of the app's tables
        stmt = await conn.prepare(
            f"""SELECT c.id, r.* FROM {CHANGELOG} c CROSS JOIN LATERAL jsonb_populate_record(
                    NULL::{rowtype},
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
        """How many changes of *tables* are committed after *after*, the oldest one's time, and
        how many of them the horizon still holds back."""
        async with self._session("counting pending changes in PostgreSQL") as conn:
            head = max(await self._horizon(conn), after.offset)
            row = await conn.fetchrow(
                f"SELECT count(*), min(ts), count(*) FILTER (WHERE id > $4) FROM {CHANGELOG} "
                "WHERE id > $1 AND nsp = $2 AND tbl = ANY($3::text[])",
                after.offset, self.schema, sorted(tables), head)
        return Pending(count=int(row[0]), oldest_committed_at=row[1], head=Position(head),
                       held_back=int(row[2]))

    async def prune(self, upto: Position, tables: Collection[str]) -> int:
        """Delete changes of *tables* at or below *upto*, in chunks; return how many. Rows of
        other tables (another reverse stream's) are left alone."""
        total = 0
        names = sorted(tables)
        while True:
            async with self._session("pruning the PostgreSQL changelog") as conn:  # a chunk at a time
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

        While ids wait above the horizon (their NOTIFY came while an older transaction was
        still open), that transaction's end notifies nobody: the wait is then cut to a short
        recheck (2 ms, doubling up to *timeout* while it stays open), not the whole *timeout* —
        during a rollback's drain the app is fenced and nothing else would wake the stream.
        When the horizon moved past the last read without it (a count of pending changes
        moves it too), there may be changes to read: return at once.
        """
        if self._safe > self._read_upto:
            self._read_upto = self._safe
            return
        if self._candidates:
            timeout, self._recheck = min(timeout, self._recheck), min(self._recheck * 2, timeout)
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
