"""Progress of long loops in the terminal, in a notebook or in a log file.

This module imports nothing of the package, so that modules whose source keys a cache (the feature cache's
``mmlib.experiment.FEATURE_SOURCES``) can show progress without pulling the whole package into their key.
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress_bar", "clock"]


def progress_bar(items, comment: str = "", *, stream=None, marks: int = 4):
    """Iterate over ``items`` showing progress: fastprogress's bar in a notebook or a terminal; where stdout is not a
    terminal (a log file, CI), a line ``[mmlib] <comment>: done/total (share) elapsed`` at every ``1/marks`` of the
    way, instead of one line of carriage returns that grows with every step."""
    from fastprogress.fastprogress import IN_NOTEBOOK
    from fastprogress.fastprogress import progress_bar as bar

    out = stream or sys.stdout
    if stream is None and (IN_NOTEBOOK or out.isatty()):
        b = bar(items)
        b.comment = comment
        return b
    return _progress_lines(items, comment, out, max(1, int(marks)))


def _progress_lines(items, comment, stream, marks):
    total, t0, mark = len(items), time.perf_counter(), 1
    for i, item in enumerate(items, 1):
        yield item
        if i * marks >= mark * total:
            print(f"[mmlib] {comment}: {i}/{total} ({i / total:.0%}) {clock(time.perf_counter() - t0)}",
                  file=stream, flush=True)
            mark = i * marks // total + 1


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration in seconds; ``?`` for nan (nothing finished yet)."""
    if seconds != seconds:  # nan: nothing finished yet
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
