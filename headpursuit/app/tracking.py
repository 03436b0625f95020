"""The facade of the shell's recording rooms, so that `from headpursuit.app.tracking import X` works
for every name it has exported:

    results.py      the results record: RunRecord, its writer and reader, resume, error records
    files.py        atomic writes, read_json, the run-dir lock, a full disk
    liveness.py     heartbeat, running_state, the fail-fast flag
    tracker.py      the W&B mirror (Tracker) and flatten_metrics
    environment.py  versions, git, host: the environment provenance
    timer.py        Timer: the seconds and the name of each stage
"""

from __future__ import annotations

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
from headpursuit.app.results import (
    ERROR_FILE,
    HEAD_SCORES_FILE,
    RESULTS_FILE,
    RESULTS_VERSION,
    VOLATILE_KEYS,
    clear_error,
    completed_results,
    config_hash,
    write_error,
)
from headpursuit.app.timer import Timer
from headpursuit.app.tracker import RESULT_SECTIONS, Tracker, flatten_metrics

#: the results record's names (moved to headpursuit.app.results); still importable from here
RESULTS_NAMES = (
    "RESULTS_FILE",
    "HEAD_SCORES_FILE",
    "ERROR_FILE",
    "RESULTS_VERSION",
    "VOLATILE_KEYS",
    "config_hash",
    "completed_results",
    "write_error",
    "clear_error",
)

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
    "RESULTS_NAMES",
    "RESULTS_VERSION",
    "STALE_INTERVALS",
    "STALE_MIN_S",
    "VOLATILE_KEYS",
    "git_commit",
]
