"""SQLite declared types -> PostgreSQL types, and the column mapping (the per-value converters
are in :mod:`syncd.pg.converters`, type families in :mod:`~syncd.pg.families`).

SQLite stores any value in any column; PostgreSQL does not. The *target* type
decides how a value is converted, and a value that does not fit raises
:class:`~syncd.errors.RowError` naming the column (the row goes to the reject
table). Decisions (see docs/mapping.md):

- every SQLite integer type becomes ``bigint`` (SQLite integers are 64-bit);
- ``DATETIME`` / ``TIMESTAMP`` become ``timestamp``; text in any ISO-8601 form is
  accepted, an offset is converted to UTC; a number is Unix time in seconds, or
  in milliseconds when its magnitude is above 1e11 (year 5138 in seconds);
- ``BOOLEAN`` accepts 0/1 and true/false/t/f/yes/no text;
- a column with no declared type becomes ``text`` (numbers are written as text);
- ``VARCHAR(n)`` keeps its length, so longer values are rejected, not cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from syncd.pg.converters import ROUNDED, Converter, converter

_PAREN = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*(?:\(\s*([^)]*)\))?\s*$")

_EXACT: dict[str, str] = {
    "BOOLEAN": "boolean",
    "BOOL": "boolean",
    "DATETIME": "timestamp",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "DATE": "date",
    "TIME": "time",
    "JSON": "jsonb",
    "JSONB": "jsonb",
    "UUID": "uuid",
    "BLOB": "bytea",
    "BYTEA": "bytea",
    "REAL": "double precision",
    "FLOAT": "double precision",
    "DOUBLE": "double precision",
    "DOUBLE PRECISION": "double precision",
    "NUMERIC": "numeric",
    "DECIMAL": "numeric",
    "TEXT": "text",
    "CLOB": "text",
    "": "text",
}
_VARCHAR = {"VARCHAR", "CHARACTER VARYING", "VARYING CHARACTER", "NVARCHAR", "NATIVE CHARACTER",
            "CHAR", "CHARACTER", "NCHAR"}


def pg_type_for(declared: str) -> str:
    """The PostgreSQL type syncd creates for a SQLite column declared as *declared*."""
    decl = " ".join(declared.upper().split())
    if decl in _EXACT:
        return _EXACT[decl]
    m = _PAREN.match(decl)
    if m:
        base, args = m.group(1).strip(), (m.group(2) or "").replace(" ", "")
        if base in _VARCHAR and args.isdigit():
            return f"varchar({int(args)})"
        if base in ("NUMERIC", "DECIMAL") and re.fullmatch(r"\d+(,\d+)?", args):
            return f"numeric({args})"
        if base in _EXACT and base not in ("TEXT", "CLOB", ""):
            return _EXACT[base]
    # SQLite's own affinity rules (sqlite.org/datatype3.html, 3.1), in its order.
    if "INT" in decl:
        return "bigint"
    if any(s in decl for s in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in decl:
        return "bytea"
    if any(s in decl for s in ("REAL", "FLOA", "DOUB")):
        return "double precision"
    return "numeric"


# --- converters --------------------------------------------------------------------------



def parse_override(text: str) -> tuple[str, bool]:
    """``"numeric(10,2) rounded"`` -> ``("numeric(10,2)", True)``; a plain type -> ``(type, False)``."""
    t = " ".join(text.split())
    if t.lower().endswith(ROUNDED):
        return t[: -len(ROUNDED)].strip(), True
    return t, False


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """One source column and the target column it is written to."""

    name: str
    declared: str
    pg_type: str
    nullable: bool = True
    rounded: bool = False
    """The operator chose rounding to the type (``"... rounded"`` in ``[target.column_types]``)."""

    @property
    def convert(self) -> Converter:
        return converter(self.pg_type, rounded=self.rounded)
