"""Every error syncd raises on purpose.

    SyncdError                      root; str() is one line an operator can act on
    ├── ConfigError                 bad or missing config: names the key
    ├── FatalError                  the stream cannot go on; fix something, restart
    │   ├── SchemaError             tables / types cannot be mapped or adopted
    │   ├── CaptureError            triggers / changelog missing or broken
    │   ├── SourceError             source missing, unreadable, not a database
    │   └── StrictModeStop          strict = true and a row was rejected
    ├── RetryableError              passes by itself: retried with backoff
    │   ├── TargetUnavailable       PostgreSQL refused / lost the connection
    │   ├── SourceBusy              SQLite "database is locked"
    │   ├── SourceUnavailable       a source server (Chroma) is unreachable
    │   ├── LogGap                  the source purged changes syncd had not read: reconcile
    │   └── SchemaChanged           a captured SQLite table changed: re-captured, copied again
    └── RowError                    one row cannot be written: goes to the reject table

Adapters translate driver errors (asyncpg, sqlite3, chromadb) at their edge with
``raise X(...) from exc``; nothing above the adapters sees a driver exception.
Messages never contain a password: DSNs go through :func:`redact` first.
"""

from __future__ import annotations

from syncd.redact import redact as redact


class SyncdError(Exception):
    """Root of syncd's errors. The message is redacted on construction."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(SyncdError):
    """The configuration is invalid; the message names the key."""


class FatalError(SyncdError):
    """The stream cannot continue until an operator fixes something."""


class SchemaError(FatalError):
    """A table or column cannot be mapped to, or adopted in, the target."""


class CaptureError(FatalError):
    """Change capture is not installed or is broken."""


class SourceError(FatalError):
    """The source store is missing or unreadable."""


class StrictModeStop(FatalError):
    """strict = true and a row could not be written."""


class RetryableError(SyncdError):
    """A condition that passes by itself (network, locks); retried with backoff."""


class TargetUnavailable(RetryableError):
    """PostgreSQL is unreachable or the connection was lost."""


class SourceBusy(RetryableError):
    """SQLite answered 'database is locked'."""


class SourceUnavailable(RetryableError):
    """A source server (Chroma over HTTP) is unreachable or answered with a server error."""


class LogGap(RetryableError):
    """The source's log lost changes after the checkpoint (Chroma purged them); the stream
    reconciles that object from the source's current contents, then goes on."""


class SchemaChanged(RetryableError):
    """A captured SQLite table changed while streaming (columns added or changed, the table
    rebuilt, or a new table): capture was re-installed; the stream re-opens its sink, which
    adds the columns and copies those tables again."""


class RowError(SyncdError):
    """One row cannot be written to the target; it goes to the reject table."""

    def __init__(self, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column
