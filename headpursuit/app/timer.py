"""The seconds of each stage of a run (the record's provenance) and the stage running now (what an
interrupted or failed run records)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["Timer"]


class Timer:
    """`with timer("capture"): ...` adds the stage's seconds to `timer.seconds["capture"]`;
    `timer.stage` names the stage running now (what an interrupted run records)."""

    def __init__(self, announce: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.current: list[str] = []
        self.last: str | None = None
        self.announce = announce  # called with a stage's name as it starts (progress per stage)
        self.failed_in: str | None = None  # the innermost stage an exception left

    def stage_of_failure(self) -> str | None:
        """Where the exception being handled came from: the stage it left, else `stage`."""
        return self.failed_in or self.stage

    @property
    def stage(self) -> str | None:
        """The innermost stage running now, else `after <the last one>` (None before the first)."""
        if self.current:
            return self.current[-1]
        return f"after {self.last}" if self.last else None

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.current.append(name)
        if self.announce is not None:
            self.announce(name)
        try:
            yield
        except BaseException:
            self.failed_in = self.failed_in or name
            raise
        finally:
            self.current.pop()
            self.last = name
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
