"""Random schemas, declared the way ORMs write them for SQLite.

Declared types per ORM (what each emits in its SQLite DDL):

| kind | TypeORM | Django | Rails (sqlite3 adapter) | Prisma | SQLAlchemy |
|---|---|---|---|---|---|
| int | integer | integer / integer unsigned / smallint | integer | INTEGER | INTEGER |
| bigint | bigint | bigint / bigint unsigned | bigint | BIGINT | BIGINT |
| real | float / double / real | real | float | REAL | FLOAT |
| decimal | decimal(p,s) | decimal | decimal / decimal(p,s) | DECIMAL | NUMERIC(p, s) |
| text | text | text | text | TEXT | TEXT |
| varchar | varchar / varchar(n) | varchar(n) | varchar / varchar(n) | TEXT | VARCHAR(n) |
| uuid | varchar | char(32) | varchar | TEXT | CHAR(32) |
| bool | boolean | bool | boolean | BOOLEAN | BOOLEAN |
| datetime | datetime | datetime | datetime(6) | DATETIME | DATETIME |
| date | date | date | date | DATETIME | DATE |
| time | time | time | time | DATETIME | TIME |
| json | json / text | text | json | JSONB | JSON |
| blob | blob | BLOB | blob | BLOB | BLOB |

The ``raw`` flavour adds hand-written DDL: no declared type, and names whose SQLite
affinity is not what they suggest (``STRING`` is NUMERIC, ``FLOATING POINT`` is INTEGER,
``DATETIME`` is NUMERIC), plus ``TIMESTAMPTZ``, ``UUID``, ``MONEY``, ``NVARCHAR(n)``…
"""

from __future__ import annotations

import random

from tests.fuzz.model import Column, ForeignKey, Schema, Table

FLAVORS = ("typeorm", "django", "rails", "prisma", "sqlalchemy", "raw")
KINDS = ("int", "bigint", "real", "decimal", "text", "varchar", "uuid", "bool", "datetime",
         "date", "time", "json", "blob")

# (kind, declared type, params); {n}, {p}, {s} are filled in
_DECL: dict[str, dict[str, tuple[str, ...]]] = {
    "typeorm": {"int": ("integer",), "bigint": ("bigint",), "real": ("float", "double", "real"),
                "decimal": ("decimal({p},{s})",), "text": ("text",),
                "varchar": ("varchar", "varchar({n})"), "uuid": ("varchar",), "bool": ("boolean",),
                "datetime": ("datetime",), "date": ("date",), "time": ("time",),
                "json": ("json", "text"), "blob": ("blob",)},
    "django": {"int": ("integer", "integer unsigned", "smallint"), "bigint": ("bigint", "bigint unsigned"),
               "real": ("real",), "decimal": ("decimal",), "text": ("text",), "varchar": ("varchar({n})",),
               "uuid": ("char(32)",), "bool": ("bool",), "datetime": ("datetime",), "date": ("date",),
               "time": ("time",), "json": ("text",), "blob": ("BLOB",)},
    "rails": {"int": ("integer",), "bigint": ("bigint",), "real": ("float",),
              "decimal": ("decimal", "decimal({p},{s})"), "text": ("text",),
              "varchar": ("varchar", "varchar({n})"), "uuid": ("varchar",), "bool": ("boolean",),
              "datetime": ("datetime(6)",), "date": ("date",), "time": ("time",), "json": ("json",),
              "blob": ("blob",)},
    "prisma": {"int": ("INTEGER",), "bigint": ("BIGINT",), "real": ("REAL",), "decimal": ("DECIMAL",),
               "text": ("TEXT",), "varchar": ("TEXT",), "uuid": ("TEXT",), "bool": ("BOOLEAN",),
               "datetime": ("DATETIME",), "date": ("DATETIME",), "time": ("DATETIME",),
               "json": ("JSONB",), "blob": ("BLOB",)},
    "sqlalchemy": {"int": ("INTEGER",), "bigint": ("BIGINT",), "real": ("FLOAT",),
                   "decimal": ("NUMERIC({p}, {s})",), "text": ("TEXT",), "varchar": ("VARCHAR({n})",),
                   "uuid": ("CHAR(32)",), "bool": ("BOOLEAN",), "datetime": ("DATETIME",),
                   "date": ("DATE",), "time": ("TIME",), "json": ("JSON",), "blob": ("BLOB",)},
}
# hand-written DDL: (declared type, the kind of values the app writes into it)
_RAW: tuple[tuple[str, str], ...] = (
    ("", "any"), ("", "text"), ("", "int"), ("STRING", "text"), ("FLOATING POINT", "real"),
    ("DATETIME", "int"), ("TIMESTAMP", "datetime"), ("TIMESTAMPTZ", "datetime"),
    ("DOUBLE PRECISION", "real"), ("NVARCHAR({n})", "varchar"), ("CLOB", "text"), ("MONEY", "decimal"),
    ("UNSIGNED BIG INT", "bigint"), ("TINYINT", "bool"), ("UUID", "uuid"), ("NUMERIC", "decimal"),
    ("CHARACTER({n})", "varchar"), ("INT", "int"), ("BOOLEAN", "text"), ("DATE", "datetime"),
    ("JSON", "text"), ("DECIMAL({p},{s})", "text"), ("BLOB", "text"), ("TEXT", "blob"),
)
_NAMES: dict[str, tuple[str, ...]] = {
    "int": ("count", "position", "age", "rank"), "bigint": ("views", "size_bytes", "duration"),
    "real": ("score", "ratio", "lat"), "decimal": ("price", "amount", "balance"),
    "text": ("body", "note", "title"), "varchar": ("name", "email", "slug"),
    "uuid": ("external_id", "token", "ref"), "bool": ("is_active", "flag", "published"),
    "datetime": ("created_at", "updated_at", "seen_at"), "date": ("birthday", "due_on", "day"),
    "time": ("opens_at", "starts", "alarm"), "json": ("meta", "settings", "data"),
    "blob": ("payload", "avatar", "digest"), "any": ("extra", "misc", "value"),
}
_ODD_NAMES = ("order", "select", "group", "desc", "user", "default", "Mixed Case", "naïve",
              'say "hi"', "x-y", "from")
_TABLES: dict[str, tuple[str, ...]] = {
    "typeorm": ("user", "post", "photo", "category"), "django": ("app_author", "app_book", "app_review"),
    "rails": ("users", "posts", "comments", "line_items"), "prisma": ("User", "Post", "Profile", "Tag"),
    "sqlalchemy": ("items", "orders", "parents", "children"), "raw": ("t", "data", "log", "Strange Table"),
}
_PK_STYLES = (("rowid-alias", 40), ("int", 8), ("text", 12), ("uuid", 12), ("composite", 10), ("none", 18))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class SchemaGen:
    """Draws a :class:`Schema` from a random generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def schema(self, n_tables: int | None = None) -> Schema:
        rng = self.rng
        main = rng.choice(FLAVORS)
        tables: list[Table] = []
        used: set[str] = set()
        for _ in range(n_tables or rng.choice((1, 1, 2, 2, 3))):
            flavor = main if rng.random() < 0.7 else rng.choice(FLAVORS)
            name = self._table_name(flavor, used)
            used.add(name.lower())
            tables.append(self.table(name, flavor, tables))
        has_fk = any(t.fks for t in tables)
        return Schema(tuple(tables), foreign_keys_on=has_fk and rng.random() < 0.75)

    def _table_name(self, flavor: str, used: set[str]) -> str:
        for name in self.rng.sample(_TABLES[flavor], len(_TABLES[flavor])):
            if name.lower() not in used:  # SQLite's table names ignore case
                return name
        return f"t{len(used)}"

    def decl(self, flavor: str, kind: str) -> tuple[str, str, tuple[int, ...]]:
        """(declared type, value kind, params) for a column of *kind* in *flavor*."""
        rng = self.rng
        if flavor == "raw":
            template, kind = rng.choice(_RAW)
        else:
            template = rng.choice(_DECL[flavor][kind])
        n, p = rng.choice((1, 5, 10, 36, 255)), rng.choice((5, 10, 12, 19, 38))
        s = rng.choice((0, 2, 2, 4, min(p, 10)))
        params: tuple[int, ...] = ()
        if "{n}" in template:
            params = (n,)
        elif "{p}" in template:
            params = (p, s)
        return template.format(n=n, p=p, s=s), kind, params

    def column(self, flavor: str, kind: str, used: set[str]) -> Column:
        rng = self.rng
        decl, vkind, params = self.decl(flavor, kind)
        if rng.random() < 0.04:
            base = rng.choice(_ODD_NAMES)
        else:
            base = rng.choice(_NAMES[vkind if vkind in _NAMES else kind])
            if flavor in ("typeorm", "prisma"):
                base = camel(base)
        name, i = base, 2
        while name.lower() in used:
            name, i = f"{base}{i}", i + 1
        used.add(name.lower())
        unique = vkind in ("varchar", "uuid", "text") and rng.random() < 0.12
        default = None
        if rng.random() < 0.08:
            default = rng.choice(("0", "1", "''", "NULL", "CURRENT_TIMESTAMP", "(datetime('now'))"))
        return Column(name, decl, vkind, flavor, params, not_null=rng.random() < 0.1,
                      unique=unique, default=default)

    def table(self, name: str, flavor: str, earlier: list[Table]) -> Table:
        rng = self.rng
        style = rng.choices([s for s, _ in _PK_STYLES], [w for _, w in _PK_STYLES])[0]
        used: set[str] = set()
        key_cols = self._key_columns(style, flavor, used)
        cols = list(key_cols)
        fks: list[ForeignKey] = []
        parents = [t for t in earlier if t.pk]
        if parents and rng.random() < 0.6:
            parent = rng.choice(parents)
            fk_cols = []
            for pc in parent.pk:
                pcol = parent.column(pc)
                fname = f"{parent.name.lower().replace(' ', '_')}_{pc}"[:40]
                while fname.lower() in used:
                    fname += "_"
                used.add(fname.lower())
                decl = "INTEGER" if pcol.kind == "int" else pcol.decl
                fk_cols.append(Column(fname, decl, pcol.kind, flavor, pcol.params))
            cols += fk_cols
            fks.append(ForeignKey(tuple(c.name for c in fk_cols), parent.name, parent.pk,
                                  on_delete=rng.choice(("CASCADE", "CASCADE", "SET NULL", "NO ACTION")),
                                  on_update=rng.choice(("CASCADE", "CASCADE", "NO ACTION"))))
        for _ in range(rng.randint(2, 6)):
            cols.append(self.column(flavor, rng.choice(KINDS), used))
        without_rowid = style in ("text", "uuid", "composite") and rng.random() < 0.3
        pk = tuple(c.name for c in key_cols)
        if without_rowid:  # WITHOUT ROWID forbids NULL keys
            cols = [Column(c.name, c.decl, c.kind, c.flavor, c.params, True) if c.name in pk else c
                    for c in cols]
        return Table(name, tuple(cols), pk, style, flavor,
                     autoincrement=style == "rowid-alias" and flavor != "sqlalchemy" and rng.random() < 0.7,
                     without_rowid=without_rowid, fks=tuple(fks))

    def _key_columns(self, style: str, flavor: str, used: set[str]) -> list[Column]:
        rng = self.rng
        nn = rng.random() < 0.6
        used.add("id")
        if style == "rowid-alias":
            return [Column("id", "INTEGER" if flavor in ("prisma", "sqlalchemy") else "integer",
                           "int", flavor, not_null=flavor != "raw")]
        if style == "int":
            return [Column("id", rng.choice(("BIGINT", "INT", "bigint", "integer unsigned")), "int",
                           flavor, not_null=nn)]
        if style == "text":
            return [Column("id", rng.choice(("TEXT", "varchar", "varchar(64)", "")), "text", flavor,
                           not_null=nn)]
        if style == "uuid":
            return [Column("id", rng.choice(("varchar", "char(32)", "TEXT", "UUID", "varchar(36)")),
                           "uuid", flavor, not_null=nn)]
        if style == "composite":
            used.add("seq")
            first = Column("id", rng.choice(("INTEGER", "bigint", "TEXT")), "int", flavor, not_null=nn)
            return [first, Column("seq", rng.choice(("TEXT", "varchar(20)", "INTEGER")), "text",
                                  flavor, not_null=nn)]
        used.discard("id")
        return []
