"""The progress bar of long backend runs (Lava): samples done, rate and time left, on terminals only."""
from __future__ import annotations

import io

from pmsm.runtime.base.progress import ProgressBar, bar_for


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_shows_samples_done_rate_and_time_left_then_time_taken():
    now = [100.0]
    screen = Terminal()
    bar = ProgressBar(screen, "lava T=2", clock=lambda: now[0])
    bar(0, 64)                       # the backend has started: the clock starts here
    now[0] += 4.0
    bar(16, 64)
    assert "16/64 samples" in screen.getvalue() and "4 samples/s" in screen.getvalue()
    assert "ETA 0:12" in screen.getvalue()
    now[0] += 12.0
    bar(64, 64)
    last = screen.getvalue().split("\r")[-1]
    assert "64/64 samples" in last and "0:16 elapsed" in last and last.endswith("\n")
    assert "[" + "#" * 24 + "]" in last


def test_no_bar_in_pipes_and_logs():
    assert bar_for(io.StringIO(), "lava T=1") is None
    assert isinstance(bar_for(Terminal(), "lava T=1"), ProgressBar)
