"""The text PostgreSQL prints for a ``jsonb`` value, computed from the JSON text SQLite holds,
for :mod:`syncd.verify.canon` (verify hashes ``md5(x::jsonb::text)`` on the PostgreSQL side).

jsonb orders an object's keys by length in bytes, then bytes, keeps the last of duplicate
keys, prints numbers as ``numeric`` text and separates with ``", "`` and ``": "``. orjson
builds that text when every number is a 64-bit integer; anything else (a fraction, an
exponent, a bigger integer, what orjson refuses) takes the exact path through the standard
library's parser with numbers kept as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson


class CanonError(ValueError):
    """A converted value PostgreSQL could not hold (the stream would have rejected the row)."""


def _json_number(text: str) -> str:
    d = Decimal(text)
    if d.is_zero():  # numeric has no negative zero; the scale stays
        d = abs(d)
    return format(d, "f")


def _reject_constant(name: str) -> Any:
    raise CanonError(f"JSON {name} is not valid in jsonb")


def _ordered(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with its keys in jsonb's order (by length in bytes, then bytes); last duplicate wins.

    UTF-8 keeps code point order, so sorting the strings sorts the bytes; a stable sort by
    length then puts shorter keys first.
    """
    d = dict(pairs)
    if len(d) < 2:
        return d
    keys = sorted(d)
    if "".join(keys).isascii():
        keys.sort(key=len)
    else:
        keys.sort(key=lambda k: len(k.encode("utf-8", "surrogatepass")))
    return {k: d[k] for k in keys}


class _Inexact(Exception):
    """A JSON number whose float repr is not what PostgreSQL prints for it."""


def _plain_float(text: str) -> float:
    value = float(text)
    if "e" in text or "E" in text or repr(value) != text or (value == 0 and text[0] == "-"):
        raise _Inexact
    return value


@dataclass(frozen=True, slots=True)
class _Number:
    text: str


def _jsonb_text(value: Any) -> str:
    """What PostgreSQL prints for ``value::jsonb``, for values parsed with :class:`_Number`."""
    if isinstance(value, dict):
        items = (f"{_jsonb_text(k)}: {_jsonb_text(v)}" for k, v in _ordered(list(value.items())).items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb_text(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, _Number):
        return value.text
    raise CanonError(f"unexpected JSON value {value!r}")


def jsonb_text(text: str) -> str:
    """The text PostgreSQL prints for ``text::jsonb`` (keys by length then bytes, ``", "``, ``": "``)."""
    fast = _no_numbers_but_integers(text)
    return fast.decode("utf-8") if fast is not None else _jsonb_text_exact(text)


def jsonb_utf8(text: str) -> bytes:
    """:func:`jsonb_text`, encoded as UTF-8 (what its MD5 is taken of)."""
    fast = _no_numbers_but_integers(text)
    return fast if fast is not None else _jsonb_text_exact(text).encode("utf-8", "surrogatepass")


class _HasFloat(Exception):
    """A number with a fraction or an exponent (or an integer beyond 64 bits, which orjson
    turns into a float): its own digits matter, and orjson does not keep them."""


def _jsonb_order(value: dict[str, Any] | list[Any], seps: list[int]) -> dict[str, Any] | list[Any]:
    """*value* with every object's keys in jsonb's order (:func:`_ordered`); counts the ``:`` and
    ``,`` the compact text of the result has outside strings into *seps*."""
    n = len(value)
    if type(value) is list:
        if n:
            seps[1] += n - 1
        out: list[Any] = []
        for x in value:
            t = type(x)
            if t is dict or t is list:
                x = _jsonb_order(x, seps)
            elif t is float:
                raise _HasFloat
            out.append(x)
        return out
    assert isinstance(value, dict)
    if n:
        seps[0] += n
        seps[1] += n - 1
    keys = sorted(value)
    if n > 1:
        if "".join(keys).isascii():
            keys.sort(key=len)
        else:
            keys.sort(key=lambda k: len(k.encode("utf-8")))
    ordered: dict[str, Any] = {}
    for k in keys:
        x = value[k]
        t = type(x)
        if t is dict or t is list:
            x = _jsonb_order(x, seps)
        elif t is float:
            raise _HasFloat
        ordered[k] = x
    return ordered


def _no_numbers_but_integers(text: str) -> bytes | None:
    """jsonb's text of *text* (UTF-8) when orjson can give it exactly, else None (the exact path).

    orjson parses RFC 8259 strictly (what it refuses, the exact path judges), keeps the last of
    duplicate keys as jsonb does, and escapes strings as PostgreSQL prints them (``\\n``,
    ``\\"``, ``\\u001f``; no other character). Integers of 64 bits stay exact; any other
    number becomes a float, whose own digits (``1.50``, ``1e3``, ``-0.0``) are lost, so a float
    anywhere sends the text to the exact path. The compact output gets jsonb's ``", "`` and
    ``": "`` by replacing every ``,`` and ``:`` when there are exactly as many as the structure
    has (none inside a string); else the stdlib encoder prints the ordered value.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    t = type(value)
    if t is float:
        return None
    if t is not dict and t is not list:
        return orjson.dumps(value)
    seps = [0, 0]
    try:
        value = _jsonb_order(value, seps)
    except _HasFloat:
        return None
    out = orjson.dumps(value)
    if out.count(b":") == seps[0] and out.count(b",") == seps[1]:
        return out.replace(b",", b", ").replace(b":", b": ")
    return _ENCODER.encode(value).encode("utf-8")


def _jsonb_text_exact(text: str) -> str:
    """:func:`jsonb_text` by the stdlib parser.

    Fast path: the C encoder, with objects re-ordered as they are parsed; numbers whose
    float repr differs from PostgreSQL's numeric text (``1.50``, ``1e3``, ``-0.0``) take
    the exact path, which keeps every number's own digits.
    """
    try:
        try:
            return _ENCODER.encode(_DECODER.decode(text))
        except _Inexact:
            exact = json.loads(text, parse_float=lambda s: _Number(_json_number(s)),
                               parse_int=lambda s: _Number(_json_number(s)),
                               parse_constant=_reject_constant)
            return _jsonb_text(exact)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CanonError):
            raise
        raise CanonError(f"not valid JSON for jsonb: {exc}") from None


_DECODER = json.JSONDecoder(object_pairs_hook=_ordered, parse_float=_plain_float,
                            parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
