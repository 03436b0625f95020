"""The shell's files: atomic writes of results (JSON, CSV, text), reading them back, one process per
run directory (the lock), and a full disk recognised.

    write_json_atomic(run_dir / "results.json", results)      # temp file + fsync + os.replace
    read_json(run_dir / "results.json")                        # None when missing or unreadable
    with RunDirLock(run_dir): ...                              # RunDirBusy when another process has it
    disk_full(exc)                                             # the ENOSPC / EDQUOT in exc's chain

The atomic write and `disk_full` are the library store's (`headpursuit.store`): one
implementation for the cache and the results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headpursuit.store import DISK_FULL_ERRNOS, DISK_FULL_TEXT, disk_full, write_atomic

log = logging.getLogger(__name__)

__all__ = [
    "DISK_FULL_ERRNOS",
    "DISK_FULL_TEXT",
    "LOCK_FILE",
    "RunDirBusy",
    "RunDirLock",
    "disk_full",
    "read_json",
    "to_jsonable",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


# ------------------------------------------------------------------------------------------
# Atomic files
# ------------------------------------------------------------------------------------------


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temp file in the same directory, fsync, then `os.replace` onto `path`
    (`headpursuit.store.write_atomic`).

    A reader sees either the old file or the complete new one, never a half-written file; an
    interrupted write leaves only a hidden `.NAME.tmpPID` file that every reader ignores; a failed
    write names `path` (e.g. a full disk).
    """
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=True)


def _json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def to_jsonable(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null (strict JSON), unknown objects their repr."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    conv = _json_default(obj)
    return conv if conv is obj else to_jsonable(conv)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_csv_atomic(df, path: str | os.PathLike) -> Path:
    """A pandas DataFrame to CSV, atomically; list/tuple cells are written as JSON."""
    df = df.copy()
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, (list, tuple))).any():
            df[col] = df[col].map(lambda v: json.dumps(list(v)) if isinstance(v, (list, tuple)) else v)
    return write_text_atomic(path, df.to_csv(index=False))


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`, or None when it is missing or unreadable (e.g. truncated)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------
# One process per run directory: the lock
# ------------------------------------------------------------------------------------------

LOCK_FILE = ".lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """An exclusive, non-blocking `fcntl.flock` on `run_dir/.lock` for the duration of a job, the
    file holding {pid, host, started} of the holder. A second process on the same directory gets
    `RunDirBusy` naming the holder, before it writes anything there.

    The kernel releases a flock when its process dies, however it dies, so a lock file left by a
    killed job blocks nothing (the file stays; only the lock matters). Where the file system has no
    flock (some network file systems), the job goes on unguarded, with a warning."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._file: Any = None

    def holder(self) -> str:
        """'pid@host since <time>' of the process named in the lock file (what it wrote)."""
        info = read_json(self.path) or {}
        since = info.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        return f"process {info.get('pid', '?')}@{info.get('host', '?')} since {when}"

    def __enter__(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # not "w": the holder's record stays readable
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunDirBusy(
                f"{self.path.parent} is in use by {self.holder()} (lock {self.path}). Wait for that job to "
                "end, or give this one another directory (hydra.run.dir=... / hydra.sweep.dir=...)."
            ) from None
        except (ImportError, OSError) as exc:  # no flock here (Windows, some network file systems)
            log.warning("%s: no lock on the run directory (%s); nothing stops a second process there", self.path, exc)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"
        try:  # unbuffered (nothing left to flush at close); "a+" appends, at 0 after the truncation
            os.ftruncate(f.fileno(), 0)
            os.write(f.fileno(), record.encode())
        except OSError as exc:  # the record is advisory (a full disk is reported at the run's first write)
            log.debug("%s: holder not recorded (%s)", self.path, exc)
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
