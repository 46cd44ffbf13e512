"""Change capture in PostgreSQL (reverse direction): triggers write row images into ``syncd.changelog``.

Works without replication privileges (managed PostgreSQL): an AFTER INSERT / UPDATE /
DELETE row trigger on each captured table inserts one changelog row per change, inside
the writer's own transaction, and NOTIFYs ``syncd_changelog`` so that readers wake up.

Two halves, one module each; this one is the public face that the rest of syncd imports:

- :mod:`syncd.pg_capture_install` — the changelog table, the trigger functions and origin
  tagging; :func:`install`, :func:`uninstall`, :func:`missing`, :func:`generation`
  (``syncd init`` / ``syncd uninstall``, and the cutover's preflight);
- :mod:`syncd.pg_capture_reader` — :class:`ChangeReader`, which reads the changelog up to
  the *safe horizon* (no id below it can still appear), prunes it and waits on NOTIFY.
"""

from __future__ import annotations

from syncd.pg_capture_install import (
    CAPTURED,
    CHANGELOG,
    CHANNEL,
    META,
    ORIGIN_SETTING,
    ORIGIN_VALUE,
    SCHEMA,
    SEQUENCE,
    SETUP,
    TRIGGER,
    TRUNCATE_TRIGGER,
    generation,
    install,
    missing,
    uninstall,
)
from syncd.pg_capture_reader import ChangeReader, Connect, LogRow

__all__ = [
    "CAPTURED", "CHANGELOG", "CHANNEL", "META", "ORIGIN_SETTING", "ORIGIN_VALUE", "SCHEMA", "SEQUENCE",
    "SETUP", "TRIGGER", "TRUNCATE_TRIGGER", "ChangeReader", "Connect", "LogRow", "generation", "install",
    "missing", "uninstall",
]
