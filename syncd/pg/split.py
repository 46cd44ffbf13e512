"""One collection, two tables: a documents table (the item's document and metadata) and an
embeddings table (its vector, with a foreign key to the document), as Signal Hub's schema has it
(docs/mapping.md, "One collection, two tables").

syncd writes and reads such a pair through a view it owns, ``syncd.items_<table>``: the join of
the two tables on the foreign key, plus ``syncd_item_id`` (the Chroma id of the row). INSTEAD OF
triggers on the view write both tables, so every path that writes one collection table (binary
COPY, the batched statements, reconciliation) writes the pair unchanged, in one statement.

Ids. The documents key is a UUID where Chroma's ids are any text: a Chroma id that is a
canonical (lower-case) UUID is the key itself; any other id is keyed by its UUIDv5 under
:data:`NAMESPACE`, and the pair (key, Chroma id) is recorded in ``syncd.item_ids`` by the view's
trigger, so the reverse stream and ``verify`` give Chroma back the id it had. A row the app
inserts after the cutover (a random UUID) is the Chroma item of that UUID's text.

Reverse capture. The app writes the tables, not the view: row triggers on both tables log the
view's row of each touched document into ``syncd.changelog`` under the embeddings table's name
(an upsert of the whole item, or a delete when the document or its embedding is gone), so the
reverse stream reads one table's changes as for any collection. A document without an
embedding row is not (yet) a Chroma item: Chroma holds no item without a vector.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from syncd.errors import SchemaError
from syncd.sql import STATE_SCHEMA, qi, ql

log = structlog.get_logger("syncd.sink.pgvector")

NAMESPACE = uuid.UUID("6f0b5c2e-9a57-5d3c-8e41-73796e636430")
"""The UUIDv5 namespace of Chroma ids that are not UUIDs (fixed: the same id, the same key)."""
ITEM_COL = "syncd_item_id"
ITEM_IDS = f"{STATE_SCHEMA}.item_ids"
SPLITS = f"{STATE_SCHEMA}.split_collections"

DDL = f"""
CREATE TABLE IF NOT EXISTS {ITEM_IDS} (
    rel     text NOT NULL,
    key     text NOT NULL,
    item_id text NOT NULL,
    PRIMARY KEY (rel, key)
);
CREATE TABLE IF NOT EXISTS {SPLITS} (
    nsp       text NOT NULL,
    tbl       text NOT NULL,
    documents text NOT NULL,
    doc_key   text NOT NULL,
    fk        text NOT NULL,
    view      text NOT NULL,
    PRIMARY KEY (nsp, tbl)
);
"""


def item_key(item_id: str) -> uuid.UUID:
    """The documents key of a Chroma id."""
    try:
        key = uuid.UUID(item_id)
    except ValueError:
        return uuid.uuid5(NAMESPACE, item_id)
    return key if str(key) == item_id else uuid.uuid5(NAMESPACE, item_id)


def view_name(schema: str, table: str) -> str:
    name = f"items_{table}"
    if schema == "public" and len(name.encode()) <= 63:
        return name
    digest = hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:8]
    return f"items_{table.encode()[:48].decode(errors='ignore')}_{digest}"


@dataclass(frozen=True, slots=True)
class Split:
    """A collection's documents and embeddings tables, and syncd's view of their join."""

    schema: str
    documents: str
    doc_key: str
    embeddings: str
    fk: str
    view: str

    @property
    def view_qualified(self) -> str:
        return f"{qi(STATE_SCHEMA)}.{qi(self.view)}"

    @property
    def docs_qualified(self) -> str:
        return f"{qi(self.schema)}.{qi(self.documents)}"

    @property
    def emb_qualified(self) -> str:
        return f"{qi(self.schema)}.{qi(self.embeddings)}"


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    pg_type: str
    default: str | None


async def _columns(conn: asyncpg.Connection, qualified: str) -> list[_Column]:
    rows = await conn.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                  pg_get_expr(d.adbin, d.adrelid) AS def
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
             AND a.attgenerated = '' ORDER BY a.attnum""", qualified)
    return [_Column(r["attname"], r["type"], r["def"]) for r in rows]


async def _primary_key(conn: asyncpg.Connection, qualified: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT a.attname FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n""", qualified)
    return [r["attname"] for r in rows]


async def ensure(conn: asyncpg.Connection, schema: str, embeddings: str, documents: str,
                 where: str) -> Split:
    """Create (again) the view over *documents* and *embeddings* and its write triggers; record the
    pair. Runs in the caller's transaction. *where* names the config entry in errors."""
    docs_q, emb_q = f"{qi(schema)}.{qi(documents)}", f"{qi(schema)}.{qi(embeddings)}"
    for name, q in ((documents, docs_q), (embeddings, emb_q)):
        if await conn.fetchval("SELECT to_regclass($1)", q) is None:
            raise SchemaError(f"{where}: there is no table {schema}.{name}; create it (the app's migration, "
                              "or the entry's create) or fix the name")
    key = await _primary_key(conn, docs_q)
    if len(key) != 1:
        raise SchemaError(f"{where}: {schema}.{documents} needs a one-column primary key (the item's key); "
                          f"it has {len(key) or 'no'} key columns")
    fks = await conn.fetch(
        """SELECT a.attname FROM pg_constraint c
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
           JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
           WHERE c.contype = 'f' AND c.conrelid = $1::regclass AND c.confrelid = $2::regclass
             AND cardinality(c.conkey) = 1 AND r.attname = $3 ORDER BY a.attnum""", emb_q, docs_q, key[0])
    if len(fks) != 1:
        raise SchemaError(f"{where}: {schema}.{embeddings} needs exactly one foreign key column referencing "
                          f"{schema}.{documents}({key[0]}); it has {len(fks)}")
    fk = str(fks[0]["attname"])
    emb_key = await _primary_key(conn, emb_q)
    doc_cols, all_emb = await _columns(conn, docs_q), await _columns(conn, emb_q)
    key_type = next(c.pg_type for c in doc_cols if c.name == key[0])
    # the embedding row's own one-column key is set to the document's when the types agree (else
    # it takes its default), so that a copy made again writes the same rows
    own = emb_key[0] if len(emb_key) == 1 and emb_key[0] != fk else None
    own_key = own if any(c.name == own and c.pg_type == key_type for c in all_emb) else None
    taken = {c.name for c in doc_cols}
    emb_cols = [c for c in all_emb if c.name not in (fk, own) and c.name not in taken]
    if ITEM_COL in taken or any(c.name == ITEM_COL for c in emb_cols):
        raise SchemaError(f"{where}: a column is named {ITEM_COL}, which syncd's view of the tables needs")
    split = Split(schema, documents, key[0], embeddings, fk, view_name(schema, embeddings))
    await conn.execute(DDL)
    await _create_view(conn, split, doc_cols, emb_cols, own_key)
    await conn.execute(
        f"INSERT INTO {SPLITS} (nsp, tbl, documents, doc_key, fk, view) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (nsp, tbl) DO UPDATE SET documents = EXCLUDED.documents, doc_key = EXCLUDED.doc_key, "
        "fk = EXCLUDED.fk, view = EXCLUDED.view", schema, embeddings, documents, key[0], fk, split.view)
    await _index_fk(conn, split)
    return split


async def _create_view(conn: asyncpg.Connection, s: Split, doc_cols: list[_Column], emb_cols: list[_Column],
                       own_key: str | None) -> None:
    v, k = s.view_qualified, qi(s.doc_key)
    select = [f"d.{qi(c.name)}" for c in doc_cols] + [f"e.{qi(c.name)}" for c in emb_cols]
    await conn.execute(f"DROP VIEW IF EXISTS {v}")
    await conn.execute(
        f"CREATE VIEW {v} AS SELECT {', '.join(select)}, "
        f"COALESCE(m.item_id, d.{k}::text) AS {qi(ITEM_COL)} "
        f"FROM {s.docs_qualified} d JOIN {s.emb_qualified} e ON e.{qi(s.fk)} = d.{k} "
        f"LEFT JOIN {ITEM_IDS} m ON m.rel = {ql(s.view)} AND m.key = d.{k}::text")
    for c in [*doc_cols, *emb_cols]:
        if c.default is not None:  # a row inserted through the view gets the table's defaults
            await conn.execute(f"ALTER VIEW {v} ALTER COLUMN {qi(c.name)} SET DEFAULT {c.default}")
    doc_names = [qi(c.name) for c in doc_cols]
    emb_names = [qi(c.name) for c in emb_cols]
    emb_insert = ([qi(own_key)] if own_key else []) + [qi(s.fk)] + emb_names
    emb_values = (["NEW." + k] if own_key else []) + ["NEW." + k] + [f"NEW.{n}" for n in emb_names]
    remember = (f"IF NEW.{qi(ITEM_COL)} IS NOT NULL AND NEW.{qi(ITEM_COL)} <> NEW.{k}::text THEN "
                f"INSERT INTO {ITEM_IDS} (rel, key, item_id) VALUES ({ql(s.view)}, NEW.{k}::text, "
                f"NEW.{qi(ITEM_COL)}) ON CONFLICT (rel, key) DO UPDATE SET item_id = EXCLUDED.item_id; "
                "END IF;")
    fn = f"{qi(STATE_SCHEMA)}.{qi(s.view + '_write')}"
    new_doc, new_emb = ", ".join("NEW." + n for n in doc_names), ", ".join("NEW." + n for n in emb_names)
    await conn.execute(f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {s.docs_qualified} ({', '.join(doc_names)})
            VALUES ({new_doc});
        INSERT INTO {s.emb_qualified} ({', '.join(emb_insert)}) VALUES ({', '.join(emb_values)});
        {remember}
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE {s.docs_qualified} SET ({', '.join(doc_names)}) = ROW({new_doc})
            WHERE {k} = OLD.{k};
        UPDATE {s.emb_qualified} SET ({', '.join(emb_names)}) = ROW({new_emb})
            WHERE {qi(s.fk)} = OLD.{k};
        {remember}
        RETURN NEW;
    END IF;
    DELETE FROM {s.emb_qualified} WHERE {qi(s.fk)} = OLD.{k};
    DELETE FROM {s.docs_qualified} WHERE {k} = OLD.{k};
    RETURN OLD;
END
$fn$""")
    await conn.execute(f"CREATE TRIGGER syncd_write INSTEAD OF INSERT OR UPDATE OR DELETE ON {v} "
                       f"FOR EACH ROW EXECUTE FUNCTION {fn}()")


async def _index_fk(conn: asyncpg.Connection, s: Split) -> None:
    """An index on the foreign key: every write and capture looks a document's embedding up by it
    (and ON DELETE CASCADE scans for it), which without one reads the whole table each time."""
    has = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a
                          ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                          WHERE x.indrelid = $1::regclass AND a.attname = $2)""", s.emb_qualified, s.fk)
    if not has:
        name = f"syncd_{s.embeddings}_{s.fk}"[:63]
        await conn.execute(f"CREATE INDEX IF NOT EXISTS {qi(name)} ON {s.emb_qualified} ({qi(s.fk)})")
        log.info("index added on the foreign key", table=f"{s.schema}.{s.embeddings}", column=s.fk,
                 index=name, why="each change looks the embedding up by its document")


async def restore(conn: asyncpg.Connection, s: Split) -> Split:
    """Make the view again (from the tables' current columns) after it was dropped: an app's
    migration that drops or retypes a column the view shows must drop the view first."""
    async with conn.transaction():
        made = await ensure(conn, s.schema, s.embeddings, s.documents,
                            f"collection table {s.schema}.{s.embeddings}")
    log.info("view made again", view=f"{STATE_SCHEMA}.{s.view}", tables=[s.documents, s.embeddings])
    return made


async def lookup(conn: asyncpg.Connection, schema: str, table: str) -> Split | None:
    """The split recorded for *schema.table* (its embeddings table), if any."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", SPLITS):
        return None
    r = await conn.fetchrow(f"SELECT documents, doc_key, fk, view FROM {SPLITS} WHERE nsp = $1 AND tbl = $2",
                            schema, table)
    if r is None:
        return None
    return Split(schema, r["documents"], r["doc_key"], table, r["fk"], r["view"])


async def with_documents(conn: asyncpg.Connection, schema: str, tables: list[str]) -> list[str]:
    """*tables* with the documents table of each split among them (fences cover both)."""
    out = list(tables)
    for table in tables:
        s = await lookup(conn, schema, table)
        if s is not None and s.documents not in out:
            out.append(s.documents)
    return out


# --- reverse capture ---------------------------------------------------------------------------

def capture_sql(s: Split, key_type: str, changelog: str, channel: str, skip_own: str) -> str:
    """The capture function of both tables: the item of each document a write touched — the view's
    row, built from the two rows — as an upsert of the whole item (or a delete when it is no
    longer an item). It reads the tables, not the view, and names no column but the two keys: the
    app's migrations may drop or retype other columns (syncd's view, which depends on them, is
    dropped in the migration's transaction and made again from the new columns; see
    docs/mapping.md) without breaking the app's writes."""
    k, fk = qi(s.doc_key), qi(s.fk)
    item = (f"COALESCE((SELECT m.item_id FROM {ITEM_IDS} m WHERE m.rel = {ql(s.view)} "
            f"AND m.key = d.{k}::text), d.{k}::text)")
    nsp, tbl = ql(s.schema), ql(s.embeddings)
    fn = f"{qi(STATE_SCHEMA)}.{qi(s.view + '_capture')}"
    return f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    syncd_keys {key_type}[] := '{{}}';
    syncd_k {key_type};
    syncd_img jsonb;
    syncd_item text;
BEGIN{skip_own}
    IF TG_TABLE_NAME = {ql(s.documents)} THEN
        IF TG_OP <> 'INSERT' THEN syncd_keys := syncd_keys || OLD.{k}; END IF;
        IF TG_OP <> 'DELETE' THEN syncd_keys := syncd_keys || NEW.{k}; END IF;
    ELSE
        IF TG_OP <> 'INSERT' AND OLD.{fk} IS NOT NULL THEN syncd_keys := syncd_keys || OLD.{fk}; END IF;
        IF TG_OP <> 'DELETE' AND NEW.{fk} IS NOT NULL THEN syncd_keys := syncd_keys || NEW.{fk}; END IF;
    END IF;
    FOR syncd_k IN SELECT DISTINCT x FROM unnest(syncd_keys) AS x LOOP
        SELECT (to_jsonb(e) - {ql(s.fk)}) || to_jsonb(d) || jsonb_build_object({ql(ITEM_COL)}, {item})
          INTO syncd_img FROM {s.docs_qualified} d JOIN {s.emb_qualified} e ON e.{fk} = d.{k}
         WHERE d.{k} = syncd_k LIMIT 1;
        IF syncd_img IS NULL AND TG_OP = 'INSERT' THEN
            CONTINUE;  -- a document without its embedding yet: not an item
        END IF;
        syncd_item := COALESCE((SELECT m.item_id FROM {ITEM_IDS} m
                                WHERE m.rel = {ql(s.view)} AND m.key = syncd_k::text), syncd_k::text);
        INSERT INTO {changelog} (nsp, tbl, op, pk, "row")
            VALUES ({nsp}, {tbl}, CASE WHEN syncd_img IS NULL THEN 'D' ELSE 'U' END,
                    jsonb_build_array(syncd_item), syncd_img);
    END LOOP;
    PERFORM pg_notify({ql(channel)}, '');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION {qi(STATE_SCHEMA)}.{qi(s.view + '_capture_truncate')}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN{skip_own}
    INSERT INTO {changelog} (nsp, tbl, op, pk, "row")
        SELECT {nsp}, {tbl}, 'D', jsonb_build_array({item}), NULL
          FROM {s.docs_qualified} d JOIN {s.emb_qualified} e ON e.{fk} = d.{k};
    PERFORM pg_notify({ql(channel)}, '');
    RETURN NULL;
END
$fn$;
"""


async def key_type(conn: asyncpg.Connection, s: Split) -> str:
    return str(await conn.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attname = $2", s.docs_qualified, s.doc_key))


async def problems(conn: asyncpg.Connection, s: Split) -> list[str]:
    """What the view cannot show: documents without an embedding row (no Chroma item holds them),
    documents with several (one item holds one vector), embeddings of no document."""
    lone = int(await conn.fetchval(
        f"SELECT count(*) FROM {s.docs_qualified} d WHERE NOT EXISTS "
        f"(SELECT 1 FROM {s.emb_qualified} e WHERE e.{qi(s.fk)} = d.{qi(s.doc_key)})"))
    several = int(await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {s.emb_qualified} WHERE {qi(s.fk)} IS NOT NULL "
        f"GROUP BY {qi(s.fk)} HAVING count(*) > 1) x"))
    loose = int(await conn.fetchval(f"SELECT count(*) FROM {s.emb_qualified} WHERE {qi(s.fk)} IS NULL"))
    out = []
    if lone:
        out.append(f"{s.schema}.{s.documents}: {lone:,} rows have no {s.embeddings} row, so no Chroma "
                   f"item holds them (find them with: SELECT {s.doc_key} FROM {s.schema}.{s.documents} d "
                   f"WHERE NOT EXISTS (SELECT 1 FROM {s.schema}.{s.embeddings} e WHERE e.{s.fk} = "
                   f"d.{s.doc_key}))")
    if several:
        out.append(f"{s.schema}.{s.embeddings}: {several:,} documents have more than one embedding row; a "
                   "Chroma item holds one vector")
    if loose:
        out.append(f"{s.schema}.{s.embeddings}: {loose:,} rows have no {s.fk} (no document): not items")
    return out
