"""Passwords out of everything syncd prints: by parsing, and by knowing them.

Two layers, both applied by :func:`redact`:

1. **Known secrets.** The config registers the password it resolved for the target
   (:func:`register_secret`, called by :mod:`syncd.config.dsn`), in every spelling it can take in
   output: as written, percent-encoded, JSON- and libpq-escaped. Any occurrence anywhere
   becomes ``***`` — also in text that is not shaped like a DSN at all.
2. **Shapes.** Passwords syncd was never told about (a library's message, another DSN):

   - a URL's userinfo runs to the *last* ``@`` before the host, so
     ``postgresql://app:S3c@ret!@db/app`` becomes ``postgresql://app:***@db/app`` (a password
     with unencoded blanks is followed to the ``@`` on the same line);
   - ``password=…`` / ``password: …`` pairs (``PGPASSWORD=``, keyword DSNs, dict reprs),
     the value quoted (``'…'`` or ``"…"``, with backslash escapes) or not;
   - query parameters: ``?password=…`` / ``&password=…`` up to the next ``&``.

Over-redacting a little of an odd line is preferred to printing a password.
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 4
"""Shorter literal secrets are not replaced everywhere: they would mangle ordinary words
(the shape rules still catch them in DSNs)."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_USERPASS = re.compile(r"^[^/?#\s:@]*:(?!\d*(?:[/?#,]|$))")
"""``user:`` followed by something that is not a port: a password with a blank in it."""
_HOST_AFTER_AT = re.compile(r"@(?=[\w\[.\-%]|/|$)")
_QUERY = re.compile(r"(?i)([?&]password=)[^&#\s]*")
_PAIR = re.compile(
    r"""(?ix) (?<![?&])
        (password['"]?\s*[=:]\s*)
        ( '(?:[^'\\]|\\.)*'? | "(?:[^"\\]|\\.)*"? | [^\s'"]\S* )""")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def spellings(secret: str) -> set[str]:
    """How *secret* can appear in syncd's output (all of them are blanked)."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             secret.replace("\\", "\\\\").replace("'", "\\'"), repr(secret)[1:-1]}
    return {f for f in forms if len(f) >= MIN_SECRET}


def register_secret(secret: str | None) -> None:
    """Blank *secret* (in all its :func:`spellings`) in everything :func:`redact` sees from now on."""
    global _secrets
    if not secret:
        return
    with _lock:
        merged = set(_secrets) | spellings(secret)
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    global _secrets
    with _lock:
        _secrets = ()


def _userinfo_end(text: str, start: int) -> int:
    """Where the userinfo of the URL whose authority starts at *start* ends (its ``@``), or -1."""
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    token_end = start
    while token_end < line_end and not text[token_end].isspace():
        token_end += 1
    at = text.rfind("@", start, token_end)
    if at >= 0:
        return at
    if not _USERPASS.match(text[start:token_end]):
        return -1
    more = _HOST_AFTER_AT.search(text, token_end, line_end)  # a password with a blank in it
    return more.start() if more else -1


def _redact_urls(text: str) -> str:
    out: list[str] = []
    pos = 0
    while (m := _SCHEME.search(text, pos)) is not None:
        start = m.end()
        at = _userinfo_end(text, start)
        if at < 0:
            out.append(text[pos:start])
            pos = start
            continue
        user, sep, _ = text[start:at].partition(":")
        out.append(text[pos:start] + (f"{user}:{MASK}" if sep else user))
        pos = at
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """*text* with every password syncd knows of, or can recognise, replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _redact_urls(text)
    if "assword" in text or "ASSWORD" in text:
        text = _QUERY.sub(lambda m: m[1] + MASK, text)
        text = _PAIR.sub(lambda m: m[1] + MASK, text)
    return text


__all__ = ["MASK", "forget_secrets", "redact", "register_secret", "spellings"]
