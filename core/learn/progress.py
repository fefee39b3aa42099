"""Progress of long work when not on a terminal: one line every few seconds instead of a bar.

A zoo of thousands of networks takes minutes to convert and to probe; a terminal shows a rich progress bar,
and a log (CI, a batch job, ``| tee``) gets these lines, none at all for work shorter than the interval.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


class Ticker:
    """Counts finished units of one job and calls ``report(line)`` with ``label: done/total, t s`` at most
    every ``every_s`` seconds, and once at the end if it reported before."""

    def __init__(self, label: str, total: int, report, every_s: float = 5.0):
        self.label, self.total, self.report, self.every_s = label, total, report, every_s
        self.done, self.start = 0, time.monotonic()
        self.last, self.reported = self.start, False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.reported and self.done >= self.total):
            self.last, self.reported = now, True
            self.report(f"{self.label}: {self.done}/{self.total}, {now - self.start:.0f} s")


@contextmanager
def tracked(label: str, total: int, bar: bool = False, status=None):
    """Progress of one job of ``total`` units: a rich bar on the terminal when ``bar``, and ``status(line)``
    lines (:class:`Ticker`) when given; yields the ``advance()`` to call after each unit."""
    from rich.progress import Progress
    ticker = Ticker(label, total, status) if status else None
    with Progress(transient=True, disable=not bar) as progress:
        task = progress.add_task(label, total=total)

        def advance() -> None:
            progress.advance(task)
            if ticker is not None:
                ticker.advance()
        yield advance
