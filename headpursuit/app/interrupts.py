"""SIGTERM / SIGINT during a run: raise `JobInterrupted` where the run is, so the job records where
it stopped (results.json `status: interrupted`, error.txt) and exits with a short message.

SLURM sends SIGTERM before it kills a job at its time limit (or on preemption); Ctrl-C sends
SIGINT. SIGKILL cannot be caught: the heartbeat (`liveness.Heartbeat`) shows such a run as stale.

    with signals_raise(lambda: timer.stage):
        run()                     # a signal raises JobInterrupted(signal, stage) here
    ...
    except JobInterrupted as exc:
        with signals_ignored():   # a second Ctrl-C does not cut the record short
            record_it(exc)
        raise SystemExit(exc.exit_code)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["HANDLED_SIGNALS", "JobInterrupted", "signals_raise", "signals_ignored"]

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobInterrupted(KeyboardInterrupt):
    """A run stopped by a signal. A KeyboardInterrupt, so that code which catches `Exception`
    (caches, W&B) lets it through, and code which re-raises KeyboardInterrupt does too."""

    def __init__(self, signum: int, stage: str | None):
        self.signum = int(signum)
        self.signal = signal.Signals(signum).name
        self.stage = stage
        super().__init__(f"interrupted by {self.signal} during stage {stage or 'start'}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum


def _install(handler: Callable[[int, FrameType | None], object] | int) -> dict[int, object]:
    previous: dict[int, object] = {}
    for s in HANDLED_SIGNALS:
        previous[s] = signal.getsignal(s)
        signal.signal(s, handler)  # type: ignore[arg-type]
    return previous


def _restore(previous: dict[int, object]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)  # type: ignore[arg-type]


@contextlib.contextmanager
def signals_raise(stage: Callable[[], str | None]) -> Iterator[None]:
    """SIGTERM and SIGINT raise JobInterrupted(signal, stage()) inside the block; the previous
    handlers are back on exit. Off the main thread (signals cannot be handled there) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        _install(signal.SIG_IGN)  # the first signal wins; the record is written undisturbed
        raise JobInterrupted(signum, stage())

    previous = _install(handler)
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGTERM and SIGINT ignored inside the block (while an interrupted run writes its record)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _install(signal.SIG_IGN)
    try:
        yield
    finally:
        _restore(previous)
