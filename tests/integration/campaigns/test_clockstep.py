"""The short version of the clock-step campaign (bench/clockstep.py): the wall clock of the app,
`syncd run` and PostgreSQL stepped +1 h, back, −1 h and back while syncd streams; the lag stays
sane, nothing is retried, lost or doubled. docs/reliability.md has the longer run."""

from __future__ import annotations

from pathlib import Path

from tests.integration.campaigns.test_campaigns import campaign, passed

CHECKS = ("the daemon runs on the stepped clock", "step forward to +1 h: lag sane",
          "step back to +0 h: lag sane", "step back to -1 h: lag sane", "step forward to +0 h: lag sane",
          "no retry, timeout or traceback after the steps", "acknowledged writes lost",
          "acknowledged writes doubled", "rows equal (own comparison)", "syncd verify",
          "daemon stops on SIGTERM with exit 0")


def test_short_clock_steps(tmp_path: Path) -> None:
    out = campaign("bench.clockstep", "--minutes", "0.75", "--rate", "100", "--scale", "30",
                   "--work", str(tmp_path))
    passed(out, CHECKS)
