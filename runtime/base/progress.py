"""A one-line progress bar for long backend runs: samples done, rate and time left.

Drawn on a terminal only; ``bar_for(stream, label)`` returns None elsewhere (pipes, CI logs), so
callers pass it on as a progress callback without testing. The rate is measured from the first
report (a backend reports 0 done once it has started), so start-up costs do not inflate the
time left.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

WIDTH = 24


class ProgressBar:
    def __init__(self, stream: TextIO, label: str, clock: Callable[[], float] = time.monotonic):
        self.stream, self.label, self.clock = stream, label, clock
        self.first: Optional[tuple[float, int]] = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        self.stream.write("\r" + self.line(done, total, now) + ("\n" if done >= total else ""))
        self.stream.flush()

    def line(self, done: int, total: int, now: float) -> str:
        filled = WIDTH * done // max(total, 1)
        text = f"  {self.label}: [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} samples"
        started, done_then = self.first
        elapsed = now - started
        if done > done_then and elapsed > 0:
            rate = (done - done_then) / elapsed
            left = (total - done) / rate
            text += f"  {rate:.3g} samples/s"
            text += f"  {_clock(elapsed)} elapsed" if done >= total else f"  ETA {_clock(left)}"
        return text.ljust(78)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def bar_for(stream: TextIO, label: str) -> Optional[ProgressBar]:
    isatty = getattr(stream, "isatty", None)
    return ProgressBar(stream, label) if isatty is not None and isatty() else None
