"""The record of a run on disk: results.json and head_scores.csv, resume, error records; and the
facade of the shell's recording rooms, so that `from headpursuit.app.tracking import X` works for
every name it has exported:

    files.py        atomic writes, read_json, the run-dir lock, a full disk
    liveness.py     heartbeat, running_state, the fail-fast flag
    tracker.py      the W&B mirror (Tracker) and flatten_metrics
    environment.py  versions, git, host: the environment provenance
    timer.py        Timer: the seconds and the name of each stage
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headpursuit.app.environment import environment, git_commit
from headpursuit.app.files import (
    DISK_FULL_ERRNOS,
    DISK_FULL_TEXT,
    LOCK_FILE,
    RunDirBusy,
    RunDirLock,
    disk_full,
    read_json,
    to_jsonable,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from headpursuit.app.liveness import (
    FAIL_FAST_FILE,
    HEARTBEAT_FILE,
    MULTIRUN_FILE,
    STALE_INTERVALS,
    STALE_MIN_S,
    FailFastFlag,
    Heartbeat,
    launch_id,
    running_state,
)
from headpursuit.app.timer import Timer
from headpursuit.app.tracker import RESULT_SECTIONS, Tracker, flatten_metrics

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
HEAD_SCORES_FILE = "head_scores.csv"
ERROR_FILE = "error.txt"
RESULTS_VERSION = 1

# Config keys that do not change a run's results: left out of the config hash used for resume.
VOLATILE_KEYS = ("logger", "cache_dir", "resume", "fail_fast", "plots", "heartbeat_s")


# ------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------


def config_hash(config: Mapping[str, Any], ignore: tuple[str, ...] = VOLATILE_KEYS) -> str:
    """A stable hash of a resolved config, without the keys that do not change results."""
    body = {k: v for k, v in config.items() if k not in ignore and k != "hydra"}
    text = json.dumps(to_jsonable(body), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def completed_results(run_dir: str | os.PathLike, cfg_hash: str) -> dict | None:
    """results.json of `run_dir` if it says status=complete for the same config hash, else None."""
    res = read_json(Path(run_dir) / RESULTS_FILE)
    if res and res.get("status") == "complete" and res.get("config_hash") == cfg_hash:
        return res
    return None


def write_error(
    run_dir: str | os.PathLike,
    exc: BaseException,
    results: dict | None = None,
    *,
    status: str = "failed",
    stage: str | None = None,
) -> dict:
    """error.txt (traceback) + results.json with `status` (failed, interrupted) and whatever was
    computed; `stage` is the stage the run was in.

    A results.json that says status=complete is never replaced: a failure or a skip of a later
    launch into the same directory (e.g. a rerun with another config) writes error.txt only, which
    says that the complete results were kept.
    """
    run_dir = Path(run_dir)
    kept = read_json(run_dir / RESULTS_FILE) or {}
    keep = kept.get("status") == "complete"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"status: {status}" + (f" (stage: {stage})" if stage else "") + "\n"
    if keep:
        head += (
            f"results.json was kept: it says status=complete (config_hash {kept.get('config_hash')}); "
            f"a failure never overwrites complete results. This {status} run had config_hash "
            f"{(results or {}).get('config_hash')}.\n"
        )
    write_text_atomic(run_dir / ERROR_FILE, head + "\n" + tb)
    results = dict(results or {})
    results["status"] = status
    results["error"] = {"type": type(exc).__name__, "message": str(exc), "file": ERROR_FILE, "stage": stage}
    if keep:
        log.warning(
            "%s: results.json (status=complete) kept; the %s run is described in %s", run_dir, status, ERROR_FILE
        )
    else:
        write_json_atomic(run_dir / RESULTS_FILE, results)
    return results


def clear_error(run_dir: str | os.PathLike) -> None:
    """Remove the error.txt of an earlier attempt once the run is complete."""
    (Path(run_dir) / ERROR_FILE).unlink(missing_ok=True)


__all__ = [
    "RESULTS_FILE",
    "HEAD_SCORES_FILE",
    "ERROR_FILE",
    "write_text_atomic",
    "write_json_atomic",
    "write_csv_atomic",
    "read_json",
    "config_hash",
    "completed_results",
    "write_error",
    "clear_error",
    "launch_id",
    "FailFastFlag",
    "FAIL_FAST_FILE",
    "Heartbeat",
    "HEARTBEAT_FILE",
    "LOCK_FILE",
    "RunDirBusy",
    "RunDirLock",
    "disk_full",
    "running_state",
    "environment",
    "flatten_metrics",
    "Tracker",
    "Timer",
    "to_jsonable",
    # exported before the split as module attributes; still importable from here
    "DISK_FULL_ERRNOS",
    "DISK_FULL_TEXT",
    "MULTIRUN_FILE",
    "RESULT_SECTIONS",
    "RESULTS_VERSION",
    "STALE_INTERVALS",
    "STALE_MIN_S",
    "VOLATILE_KEYS",
    "git_commit",
]
