"""The ``.env`` editor of :mod:`syncd.cutover.appconfig`.

``env`` (``.env``, ``.env.production``): ``KEY=value`` lines, optionally ``export KEY=value``,
values plain, ``"double"``, ``'single'`` or ```backtick``` quoted, an inline ``# comment``
after a plain value needs whitespace before the ``#``. A key that appears more than once:
dotenv loaders (Node's ``dotenv``, ``python-dotenv``) let the last one win, so the last
one is read and changed; the others are left as they are (a note in
:attr:`syncd.cutover.appconfig.FlipResult.notes` says so). A key the file lacks is appended as ``KEY=value``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from syncd.cutover.appconfig_common import LINES, AppConfigError

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENV_LINE = re.compile(r"(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)"
                       r"(?P<eq>[ \t]*=[ \t]*)(?P<rest>.*)")
_ENV_PLAIN_SAFE = re.compile(r"[^\s#'\"`\\$]*")


@dataclass(frozen=True)
class _EnvValue:
    start: int  # offset of the value (with its quotes) in the text
    end: int
    quote: str  # "", '"', "'" or "`"
    value: str


def _env_value(rest: str, base: int, where: str) -> _EnvValue:
    """Parse the value part of a ``KEY=`` line (*rest*, starting at text offset *base*)."""
    if rest[:1] in ("'", '"', "`"):
        quote = rest[0]
        i = 1
        chars: list[str] = []
        while i < len(rest):
            ch = rest[i]
            if quote == '"' and ch == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
                continue
            if ch == quote:
                return _EnvValue(base, base + i + 1, quote, "".join(chars))
            chars.append(ch)
            i += 1
        raise AppConfigError(f"{where}: the {quote} quote is not closed; multi-line values are not "
                             "supported — close the quote on the same line")
    m = re.search(r"[ \t]+#|[ \t\r]*$", rest)
    end = m.start() if m else len(rest)
    return _EnvValue(base, base + end, "", rest[:end])


def env_entries(text: str, path: str) -> dict[str, list[_EnvValue]]:
    entries: dict[str, list[_EnvValue]] = {}
    offset = 0
    for number, line in enumerate(LINES.findall(text), start=1):
        body = line.rstrip("\r\n")
        m = _ENV_LINE.fullmatch(body)
        if m and not body.lstrip().startswith("#"):
            where = f"{path} line {number} ({m['key']})"
            entries.setdefault(m["key"], []).append(_env_value(m["rest"], offset + m.start("rest"), where))
        offset += len(line)
    return entries


def _env_quoted(value: str, quote: str) -> str:
    if quote == "" and _ENV_PLAIN_SAFE.fullmatch(value):
        return value
    if quote in ("'", "`") and quote not in value:
        return f"{quote}{value}{quote}"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_env(text: str, values: Mapping[str, str], path: str) -> str:
    entries = env_entries(text, path)
    edits: list[tuple[int, int, str]] = []
    appended: list[str] = []
    for key, value in values.items():
        if not _ENV_KEY.fullmatch(key):
            raise AppConfigError(f"cutover key {key!r} for {path}: not a valid .env variable name "
                                 "(letters, digits, _ . -, not starting with a digit)")
        if "\n" in value or "\r" in value:
            raise AppConfigError(f"cutover value of {key} for {path} has a line break; .env values "
                                 "written by syncd must fit on one line")
        found = entries.get(key)
        if found:
            last = found[-1]
            if last.value != value:
                edits.append((last.start, last.end, _env_quoted(value, last.quote)))
        else:
            appended.append(f"{key}={_env_quoted(value, '')}")
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    if appended:
        newline = "\r\n" if "\r\n" in text else "\n"
        if text and not text.endswith("\n"):
            text += newline
        text += newline.join(appended) + newline
    return text
