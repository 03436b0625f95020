"""Whether a run is alive: its heartbeat while it runs, the stale check of a run that says running,
and the fail-fast flag that stops the other jobs of a sweep's launch.

    with Heartbeat(run_dir, interval_s=30, stage=lambda: timer.stage): ...   # run_dir/.heartbeat
    running_state(run_dir, results)            # "running" or "stale" for a results.json saying running
    flag = FailFastFlag(sweep_dir); flag.trip(); flag.tripped()             # this launch only
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from headpursuit.app.files import read_json, write_text_atomic
from headpursuit.app.results import RESULTS_FILE

log = logging.getLogger(__name__)

__all__ = [
    "FAIL_FAST_FILE",
    "HEARTBEAT_FILE",
    "MULTIRUN_FILE",
    "STALE_INTERVALS",
    "STALE_MIN_S",
    "FailFastFlag",
    "Heartbeat",
    "launch_id",
    "running_state",
]


# ------------------------------------------------------------------------------------------
# One launch of a sweep: the fail_fast flag
# ------------------------------------------------------------------------------------------

FAIL_FAST_FILE = ".fail_fast_abort"
#: written by Hydra's sweeper in the launching process, once per launch, before any job starts
MULTIRUN_FILE = "multirun.yaml"


def launch_id(sweep_dir: str | os.PathLike) -> str:
    """An id every job of one launch of a sweep shares, and a later launch into the same directory
    does not: the modification time of the `multirun.yaml` Hydra's sweeper writes there at each
    launch. Jobs in other processes (submitit, SLURM) read the same file. Without that file (a
    sweeper that writes none) the launching process: the basic launcher runs every job in it."""
    try:
        return f"{MULTIRUN_FILE}@{(Path(sweep_dir) / MULTIRUN_FILE).stat().st_mtime_ns}"
    except OSError:
        return f"process {socket.gethostname()}:{os.getpid()}"


class FailFastFlag:
    """`sweep_dir/.fail_fast_abort`, holding the id of the launch whose job failed. Only the jobs
    of that launch skip themselves: a rerun after a fix is a new launch and runs what is missing."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.path = Path(sweep_dir) / FAIL_FAST_FILE
        self.launch = launch_id(sweep_dir)

    def tripped(self) -> bool:
        try:
            return self.path.read_text(encoding="utf-8").strip() == self.launch
        except OSError:
            return False

    def trip(self) -> None:
        write_text_atomic(self.path, self.launch + "\n")


# ------------------------------------------------------------------------------------------
# A heartbeat while a run is running
# ------------------------------------------------------------------------------------------

HEARTBEAT_FILE = ".heartbeat"
#: a running job whose heartbeat is older than this many intervals (and at least STALE_MIN_S) is stale
STALE_INTERVALS = 4
STALE_MIN_S = 120.0


class Heartbeat:
    """A daemon thread that rewrites `run_dir/.heartbeat` every `interval_s` seconds while a run
    is running: {time, pid, host, stage}. A results.json that says running with an old heartbeat
    (or one from a dead process on this host) belongs to a job that was killed (SIGKILL, node
    failure, out-of-memory killer): `aggregate` reports it as stale."""

    def __init__(self, run_dir: str | os.PathLike, interval_s: float, stage: Callable[[], str | None]):
        self.path = Path(run_dir) / HEARTBEAT_FILE
        self.interval_s = float(interval_s)
        self.stage = stage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def info(self) -> dict:
        """What results.json records under `heartbeat`."""
        return {"file": HEARTBEAT_FILE, "interval_s": self.interval_s, "pid": os.getpid(), "host": socket.gethostname()}

    def beat(self) -> None:
        try:
            body = {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), "stage": self.stage()}
            write_text_atomic(self.path, json.dumps(body) + "\n")
        except Exception as exc:  # liveness is advisory: never fail the run for it
            log.debug("heartbeat %s not written: %s", self.path, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="headpursuit-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # The run ended (complete, failed or interrupted: results.json says which). Only a killed
        # run leaves its heartbeat behind, to go stale.
        self.path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell
    return True


def running_state(run_dir: str | os.PathLike, res: Mapping[str, Any], *, stale_after: float | None = None) -> str:
    """For a results.json `res` that says status=running: "running" if its run may still be
    alive, else "stale".

    Stale: its process is gone (same host), or its last heartbeat (results.json's time for runs
    without one) is older than `stale_after` seconds (default: STALE_INTERVALS heartbeat
    intervals, at least STALE_MIN_S)."""
    run_dir = Path(run_dir)
    info = res.get("heartbeat") or {}
    beat = read_json(run_dir / HEARTBEAT_FILE) or {}
    host, pid = beat.get("host", info.get("host")), beat.get("pid", info.get("pid"))
    if host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid):
        return "stale"
    last = beat.get("time")
    if not isinstance(last, (int, float)):
        try:
            last = max(p.stat().st_mtime for p in (run_dir / HEARTBEAT_FILE, run_dir / RESULTS_FILE) if p.exists())
        except ValueError:
            return "stale"
    interval = float(info.get("interval_s") or 30.0)
    limit = stale_after if stale_after is not None else max(STALE_INTERVALS * interval, STALE_MIN_S)
    return "stale" if time.time() - float(last) > limit else "running"
