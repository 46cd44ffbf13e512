"""``[target] dsn``: the forms syncd accepts, turned into the one URL the driver reads.

Accepted (``docs/operations.md``, "Connecting to PostgreSQL"):

- a URL, ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=…``. The password may be
  percent-encoded (``%40`` for ``@``) or written as it is: the userinfo runs to the *last*
  ``@``, so ``postgresql://app:S3c@ret/#?@db/app`` means the password ``S3c@ret/#?``. (An
  ``@`` in the database name or the query must then be written ``%40``.)
- libpq's keyword form, ``host=db port=5432 dbname=app user=app password='it''s'``: values
  quoted with ``'…'`` (``\\'`` and ``\\\\`` escape) or bare;
- ``embedded``: the PostgreSQL syncd runs itself under ``[state] dir``.

asyncpg reads URLs only, and splits the userinfo at the *first* ``@``: :func:`normalize`
rebuilds every accepted form as a URL with each part percent-encoded, and registers the
password with :mod:`syncd.redact`, so that it is blanked wherever it would be printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from syncd.errors import ConfigError
from syncd.redact import register_secret

EMBEDDED = "embedded"
FORMS = ('a URL (postgresql://USER@HOST:5432/DATABASE, with the password after USER and a colon), '
         'libpq keywords (host=HOST port=5432 dbname=DATABASE user=USER and password) or "embedded"')

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_DRIVER_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "sslmode", "sslcert",
    "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
    "application_name"})
"""libpq keywords asyncpg understands (``application_name`` is syncd's own: it is dropped)."""
_OWN_KEYS = {"connect_timeout": "[target] connect_timeout",
             "options": "a role or database setting (ALTER ROLE … SET …)"}


@dataclass(frozen=True, slots=True)
class Where:
    """Where a DSN points, without its password: for messages."""

    host: str
    port: str
    database: str
    user: str

    def __str__(self) -> str:
        db = f"/{self.database}" if self.database else ""
        user = f" as {self.user}" if self.user else ""
        return f"{self.host}:{self.port}{db}{user}"


def normalize(dsn: str, key: str = "target.dsn") -> str:
    """The URL asyncpg needs for *dsn* (any accepted form), or a ConfigError naming *key*."""
    text = dsn.strip()
    if not text:
        raise ConfigError(f"{key}: is empty; set {FORMS}")
    if text == EMBEDDED:
        return text
    m = _SCHEME.match(text)
    if m:
        if m[1].lower() not in ("postgresql", "postgres"):
            raise ConfigError(f"{key}: a {m[1]}:// URL is not PostgreSQL; set {FORMS}")
        return _from_url(text[m.end():], key)
    if "=" in text:
        return _from_keywords(text, key)
    raise ConfigError(f"{key}: {text!r} is not a PostgreSQL address; set {FORMS}")


def _from_url(rest: str, key: str) -> str:
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    user, colon, password = userinfo.partition(":")
    password = unquote(password)
    register_secret(password)
    try:
        parts = urlsplit("postgresql://" + hostpart)
        _ = parts.port  # raises for a port that is not a number
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid URL after the user and password: {exc}; "
                          f"set {FORMS}") from None
    for name, value in query:
        if name == "password":
            register_secret(value)
        _check_key(name, key)
    auth = quote(unquote(user), safe="") + (":" + quote(password, safe="") if colon else "")
    return "postgresql://" + (auth + "@" if at else "") + hostpart


def _check_key(name: str, key: str) -> None:
    if name in _OWN_KEYS:
        raise ConfigError(f"{key}: {name} is not read from the DSN; use {_OWN_KEYS[name]}")


def parse_keywords(text: str, key: str = "target.dsn") -> dict[str, str]:
    """libpq's ``keyword=value`` list (values bare or single-quoted, backslash escapes)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        eq = text.find("=", i)
        if eq < 0:
            raise ConfigError(f"{key}: {text[i:].split()[0]!r} has no '=value'; set {FORMS}")
        name = text[i:eq].strip()
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"{key}: {name.split()[0] if name else '='!r} has no '=value'; set {FORMS}")
        i = eq + 1
        while i < n and text[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError(f"{key}: the quoted value of {name} has no closing quote (')")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        out[name] = "".join(value)


def _from_keywords(text: str, key: str) -> str:
    words = parse_keywords(text, key)
    register_secret(words.get("password"))
    for name in words:
        _check_key(name, key)
        if name not in _DRIVER_KEYWORDS:
            raise ConfigError(f"{key}: unknown keyword {name!r}; known: "
                              f"{', '.join(sorted(_DRIVER_KEYWORDS - {'application_name'}))}")
    words.pop("application_name", None)
    host = words.pop("host", "") or words.pop("hostaddr", "")
    words.pop("hostaddr", None)
    port = words.pop("port", "")
    user, password = words.pop("user", ""), words.pop("password", None)
    database = words.pop("dbname", "")
    auth = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    query = dict(words)
    netloc = ""
    if host and "/" not in host and "," not in host and "," not in port:
        netloc = f"[{host}]" if ":" in host else host
        if port:
            if not port.isdigit():
                raise ConfigError(f"{key}: port {port!r} is not a number")
            netloc += f":{port}"
    else:
        query.update({k: v for k, v in (("host", host), ("port", port)) if v})
    url = "postgresql://" + (auth + "@" if auth else "") + netloc + "/" + quote(database, safe="")
    return url + ("?" + urlencode(query) if query else "")


def where(dsn: str) -> Where:
    """Host, port, database and user of a normalised DSN (defaults as libpq's), no password."""
    if dsn == EMBEDDED:
        return Where("embedded", "", "", "")
    try:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = parts.hostname or query.get("host") or "localhost"
        port = str(parts.port or query.get("port") or 5432)
    except ValueError:
        return Where("?", "?", "", "")
    return Where(host, port, unquote(parts.path.lstrip("/")) or query.get("dbname", ""),
                 unquote(parts.username or "") or query.get("user", ""))


__all__ = ["EMBEDDED", "FORMS", "Where", "normalize", "parse_keywords", "where"]
