"""Progress on stderr for long steps: shown only on a terminal, and only after about a second.

Anything that finishes within the delay shows nothing; output that goes to a
pipe or a file never carries progress, so scripts and CI logs stay clean.
Progress is written to stderr only: stdout (text, JSON, YAML...) is the same
with or without it. `kpa --no-progress` (or KPA_NO_PROGRESS=1) turns it off.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Seconds a step runs before its progress appears (KPA_PROGRESS_DELAY overrides it).
DELAY = 1.0


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get("KPA_PROGRESS_DELAY", DELAY)))
    except ValueError:
        return DELAY


_disabled = False


def disable() -> None:
    """Show no progress in this process (`kpa --no-progress`)."""
    global _disabled
    _disabled = True


def enabled() -> bool:
    """Progress is shown: stderr is a terminal and nobody turned it off."""
    if _disabled or os.environ.get("KPA_NO_PROGRESS", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


class _Delayed:
    """Starts a rich live display after DELAY seconds unless stopped first."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._live: Any = None
        self._stopped = False
        self._timer = threading.Timer(_delay(), self._start)
        self._timer.daemon = True

    def _start(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._live = self._make()
            self._live.start()

    def begin(self) -> None:
        self._timer.start()

    def end(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._stopped = True
            if self._live is not None:
                self._live.stop()

    @property
    def live(self) -> Any:
        return self._live


@contextmanager
def status(what: str) -> Iterator[None]:
    """A spinner naming ``what`` while the block runs (longer than DELAY, on a terminal)."""
    if not enabled():
        yield
        return
    from rich.console import Console
    from rich.status import Status

    console = Console(stderr=True, highlight=False)
    delayed = _Delayed(lambda: Status(f"kpa: {what} ...", console=console))
    delayed.begin()
    try:
        yield
    finally:
        delayed.end()


@contextmanager
def bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar; the block calls the yielded ``advance(done, total)``."""
    if not enabled():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True, highlight=False)
    progress = Progress(TextColumn(f"kpa: {what}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(what, total=None)
    delayed = _Delayed(lambda: progress)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    delayed.begin()
    try:
        yield advance
    finally:
        delayed.end()


__all__ = ["DELAY", "bar", "disable", "enabled", "status"]
