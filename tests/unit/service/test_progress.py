from __future__ import annotations

import io

from syncd.model import Phase
from syncd.service.progress import ProgressBars, render
from syncd.status import StreamStatus


def snap(obj: str | None, done: int, total: int, phase: Phase = Phase.SNAPSHOT) -> StreamStatus:
    return StreamStatus(name="sqlite", phase=phase, snapshot_object=obj, snapshot_object_copied=done,
                        snapshot_object_total=total, rows_per_second=1000.0)


def test_render_shows_rows_speed_and_eta() -> None:
    line = render(snap("users", 2500, 10000))
    assert line is not None
    assert "users" in line and "25.0%" in line and "2,500/10,000 rows" in line
    assert "1,000 rows/s" in line and "ETA 00:08" in line
    assert render(snap(None, 0, 0, Phase.STREAMING)) is None


def test_bars_finish_each_object_on_its_own_line() -> None:
    out = io.StringIO()
    bars = ProgressBars(out)
    bars.draw([snap("documents", 10, 20)])
    bars.draw([snap("users", 5, 50)])
    bars.draw([snap(None, 0, 0, Phase.CATCH_UP)])
    bars.close()
    finished = [line for line in out.getvalue().split("\n") if line.strip()]
    assert len(finished) == 2
    assert "documents" in finished[0] and "users" in finished[1]
    assert all("100.0%" in f and f.endswith("done") for f in finished)
