"""Progress bars appear when syncd runs in a terminal, and never in plain output."""

from __future__ import annotations

import os
import pty
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import REPO, run_syncd, syncd_cmd


def test_bars_in_a_terminal_only(tmp_path: Path, make_config: Any) -> None:
    db = tmp_path / "app.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [(i, "x" * 50) for i in range(150000)])
    conn.commit()
    conn.close()
    cfg = make_config(db, chunk_rows=1000)
    run_syncd("--config", str(cfg), "init")

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(syncd_cmd("--config", str(cfg), "--log-level", "warning", "run",
                                      "--until-caught-up"),
                            cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    assert proc.wait(timeout=60) == 0
    os.close(controller)
    text = seen.decode(errors="replace")
    assert "users" in text and "150,000/150,000 rows" in text and "rows/s" in text, text[-500:]
    assert "syncd: caught up in " in text and "150,000 rows copied" in text, text[-800:]
    assert "Next: `syncd verify`" in text, text[-800:]

    # plain output (pipes): no bars
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM users WHERE id < 10")
    conn.commit()
    conn.close()
    proc2 = run_syncd("--config", str(cfg), "run", "--until-caught-up")
    assert "█" not in proc2.stdout + proc2.stderr and "rows/s" not in proc2.stdout + proc2.stderr
    assert "caught up in" not in proc2.stdout + proc2.stderr  # JSON log lines only
