"""Progress for long work: a bar on a terminal, a periodic one-line status when output goes to a log."""

from __future__ import annotations

import contextlib
import os
import sys
import time

EVERY_S = 30.0  # seconds between status lines in a log; FEATX_PROGRESS_EVERY overrides it


def every_s() -> float:
    try:
        return float(os.environ.get("FEATX_PROGRESS_EVERY", EVERY_S))
    except ValueError:
        return EVERY_S


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class StatusLines:
    """`label: done/total (pct), rate/s, ETA m:ss` to stderr every `every` seconds, and once at the end
    (with `final=False`, at the end only when a line was already printed: short passes stay silent)."""

    def __init__(self, label: str, total: int, completed: int, unit: str = "img", every: float | None = None,
                 stream=None, final: bool = True):
        self.label, self.total, self.done, self.unit = label, total, completed, unit
        self.every = every_s() if every is None else every
        self.start_done, self.t0 = completed, time.monotonic()
        self.last = self.t0
        self.stream = stream or sys.stderr
        self.final, self.printed = final, False

    def line(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = (self.done - self.start_done) / dt
        left = (self.total - self.done) / rate if rate > 0 else None
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = _eta(left) if left is not None else "?"
        return (f"{self.label}: {self.done}/{self.total} ({pct:.1f}%), {rate:.1f} {self.unit}/s, "
                f"elapsed {_eta(dt)}, ETA {eta}")

    def advance(self, k: int) -> None:
        self.done += k
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last, self.printed = now, True
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.done > self.start_done and (self.final or self.printed):
            print(self.line(), file=self.stream, flush=True)


@contextlib.contextmanager
def progress_bar(show: bool, total: int, completed: int, label: str = "extract", unit: str = "img",
                 transient: bool = False):
    """Yields advance(k). A rich bar with rate and ETA on a terminal; status lines otherwise.
    `transient`: the bar goes when done, and a log gets no closing line for a pass shorter than a period."""
    if not show:
        yield lambda k: None
        return
    if not sys.stderr.isatty():
        status = StatusLines(label, total, completed, unit, final=not transient)
        yield status.advance
        status.close()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=transient) as p:
        task = p.add_task(label, total=total, completed=completed)
        yield lambda k: p.advance(task, k)
