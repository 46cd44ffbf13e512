"""What a PostgreSQL target type can hold: its base type without modifiers, its family (int,
float, numeric, text, timestamp, …), and whether one type can hold every value of another."""

from __future__ import annotations

_FAMILY: dict[str, str] = {
    "smallint": "int", "integer": "int", "bigint": "int", "int2": "int", "int4": "int",
    "int8": "int", "double precision": "float", "real": "float", "float4": "float",
    "float8": "float", "numeric": "numeric", "text": "text", "character varying": "text",
    "varchar": "text", "character": "text", "char": "text", "bpchar": "text", "bytea": "bytes",
    "boolean": "bool", "timestamp": "timestamp", "timestamp without time zone": "timestamp",
    "timestamptz": "timestamptz", "timestamp with time zone": "timestamptz", "date": "date",
    "time": "time", "time without time zone": "time", "jsonb": "json", "json": "json",
    "uuid": "uuid",
}

# source family (from the declared type) -> target families that can hold its values
_CAN_HOLD: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "numeric", "float", "text", "bool", "timestamp", "timestamptz"}),
    "float": frozenset({"float", "numeric", "text"}),
    "numeric": frozenset({"numeric", "float", "int", "text"}),
    "text": frozenset({"text", "json", "uuid", "timestamp", "timestamptz", "date", "time",
                       "numeric", "other"}),
    "bytes": frozenset({"bytes", "uuid"}),
    "bool": frozenset({"bool", "int", "text"}),
    "timestamp": frozenset({"timestamp", "timestamptz", "date", "text"}),
    "timestamptz": frozenset({"timestamp", "timestamptz", "text"}),
    "date": frozenset({"date", "timestamp", "timestamptz", "text"}),
    "time": frozenset({"time", "text"}),
    "json": frozenset({"json", "text"}),
    "uuid": frozenset({"uuid", "text"}),
}


def base_type(pg_type: str) -> str:
    """``character varying(255)`` -> ``character varying``; ``numeric(10,2)`` -> ``numeric``."""
    return pg_type.split("(", 1)[0].strip().lower()


def family(pg_type: str) -> str:
    return _FAMILY.get(base_type(pg_type), "other")


def can_hold(source_pg_type: str, target_pg_type: str) -> bool:
    """Whether a target column of *target_pg_type* can hold what the source maps to."""
    src, dst = family(source_pg_type), family(target_pg_type)
    if src == "other" or dst == src:
        return True
    return dst in _CAN_HOLD.get(src, frozenset())
