from __future__ import annotations

import io

from syncd.model import Phase
from syncd.service.progress import Meter, ProgressBars, render
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


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_draws_rows_rate_and_eta_of_counted_rows() -> None:
    out, clock = Tty(), Clock()
    meter = Meter("export", out, interval=0.0, clock=clock)
    meter.begin("notes", 10_000, done=1_000)  # a resumed object: 1,000 rows there before
    clock.now += 2.0
    meter.add(2_000)
    drawn = out.getvalue().split("\r\x1b[K")[-1]
    assert "export notes" in drawn and "30.0%" in drawn and "3,000/10,000 rows" in drawn, drawn
    assert "1,000 rows/s" in drawn and "ETA 00:07" in drawn, drawn  # 7,000 rows left at 1,000 rows/s
    meter.begin("docs", 50)
    clock.now += 1.0
    meter.add(50)
    meter.close()
    finished = [line.split("\r\x1b[K")[-1] for line in out.getvalue().split("\n") if line.strip()]
    assert len(finished) == 2, finished
    assert "notes" in finished[0] and "10,000/10,000 rows" in finished[0] and finished[0].endswith("done")
    assert "docs" in finished[1] and "50/50 rows" in finished[1] and finished[1].endswith("done")


def test_meter_draws_nothing_when_not_a_tty() -> None:
    out, clock = io.StringIO(), Clock()
    meter = Meter("import", out, interval=0.0, clock=clock)
    meter.begin("notes", 100)
    clock.now += 1.0
    meter.add(100)
    meter.close()
    assert out.getvalue() == ""


def test_meter_closed_midway_shows_where_it_stopped() -> None:
    out, clock = Tty(), Clock()
    meter = Meter("export", out, interval=60.0, clock=clock)
    meter.begin("notes", 1_000)
    clock.now += 1.0
    meter.add(400)  # not drawn yet (interval)
    meter.close()  # the export failed here
    last = out.getvalue().rstrip("\n").split("\r\x1b[K")[-1]
    assert "400/1,000 rows" in last and "400 rows/s" in last and "done" not in last, last
