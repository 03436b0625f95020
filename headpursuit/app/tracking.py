"""Recording a run: `results.json` + `head_scores.csv` (atomic) and Weights & Biases (optional).

Local files are the record of truth; W&B only mirrors them. W&B failing (not installed, no
network, a broken service) never fails a run: the error is logged as a warning and written into
`results.json` under `tracking`.

    write_json_atomic(run_dir / "results.json", results)      # temp file + os.replace
    tracker = Tracker(cfg.logger, run_dir=run_dir)
    tracker.start(config, group=..., name=..., job_type=...)
    tracker.log_metrics(flatten_metrics(results))
    tracker.log_table("head_scores", scores.table)
    tracker.log_image("head_scores_heatmap", path)
    tracker.finish(exit_code=0)
    results["tracking"] = tracker.status

Timer records the seconds of each stage for the record's provenance.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from headpursuit.app.result_neutral import RESULT_NEUTRAL_KEYS

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
HEAD_SCORES_FILE = "head_scores.csv"
ERROR_FILE = "error.txt"
RESULTS_VERSION = 1

# Config keys that do not change a run's results: left out of the config hash used for resume.
VOLATILE_KEYS = RESULT_NEUTRAL_KEYS  # the one list (headpursuit.app.result_neutral)


# ------------------------------------------------------------------------------------------
# Atomic files
# ------------------------------------------------------------------------------------------


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temp file in the same directory, fsync, then `os.replace` onto `path`.

    A reader sees either the old file or the complete new one, never a half-written file; an
    interrupted write leaves only a hidden `.NAME.tmpPID` file that every reader ignores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: say which one (e.g. a full disk)
            exc.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)
    return path


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


# ------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------

#: what a write reports when the device is full or the user's quota is spent
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that write through their own I/O (safetensors, in Rust) say it in their message only.
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The exception in `exc`'s chain (itself, its cause, its context) that says the disk is full
    (ENOSPC) or the quota is spent (EDQUOT), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if any(text in str(exc) for text in DISK_FULL_TEXT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------------------------------
# Liveness: a heartbeat while a run is running
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


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def git_commit(path: str | os.PathLike | None = None) -> dict:
    root = Path(path) if path else Path(__file__).resolve().parents[2]  # the repository
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)} if commit else {}
    except Exception:
        return {}


def environment() -> dict:
    """Versions, host and scheduler ids: what a reader needs to reproduce or question a number."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "versions": {
            d: _version(d)
            for d in (
                "headpursuit",
                "torch",
                "transformers",
                "accelerate",
                "gguf",
                "hydra-core",
                "omegaconf",
                "hydra-submitit-launcher",
                "submitit",
                "wandb",
                "numpy",
                "pandas",
                "datasets",
                "alt-profanity-check",
                "detoxify",
                "scikit-learn",
                "sacrebleu",
                "spams-bin",
            )
        },
        "git": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = {"device": torch.cuda.get_device_name(0), "version": torch.version.cuda}
    except Exception:  # pragma: no cover
        pass
    return env


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------

# `normalized` holds the same metrics over the unedited model's (edited/baseline, per-seed random).
RESULT_SECTIONS = ("baseline", "edited", "random", "normalized")


def flatten_metrics(results: Mapping[str, Any], sections=RESULT_SECTIONS, sep: str = "/") -> dict[str, float]:
    """`{"edited/concept/accuracy": 0.1, "random/std/concept/accuracy": ...}` from results.json."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k in ("examples", "per_seed", "heads", "n", "from_cache", "seeds", "relaxed_layers"):
                    continue
                walk(f"{prefix}{sep}{k}", v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)

    for s in sections:
        if isinstance(results.get(s), Mapping):
            walk(s, results[s])
    return out


# ------------------------------------------------------------------------------------------
# W&B
# ------------------------------------------------------------------------------------------


class Tracker:
    """A W&B run per job, or nothing. Every method swallows its own errors (and says so)."""

    def __init__(self, logger_cfg: Mapping[str, Any] | None, run_dir: str | os.PathLike):
        cfg = dict(logger_cfg or {})
        self.backend = cfg.get("backend", "none")
        self.mode = cfg.get("mode", "offline")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run: Any = None
        self.status: dict[str, Any] = {"backend": self.backend, "mode": self.mode, "status": "off"}

    @property
    def active(self) -> bool:
        return self.run is not None

    def _fail(self, what: str, exc: BaseException) -> None:
        msg = f"W&B {what} failed ({type(exc).__name__}: {exc}); the run goes on without it"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        self.status.setdefault("errors", []).append(f"{what}: {type(exc).__name__}: {exc}")
        if what == "init":
            self.status["status"] = "failed"

    def start(
        self,
        config: Mapping[str, Any],
        *,
        group: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
    ) -> None:
        if self.backend != "wandb" or self.mode == "disabled":
            return
        try:
            import wandb

            settings = wandb.Settings(silent=True, console="off", init_timeout=float(self.cfg.get("init_timeout", 90)))
            self.run = wandb.init(
                project=self.cfg.get("project") or "headpursuit",
                entity=self.cfg.get("entity"),
                config=dict(config),
                group=group,
                name=name,
                job_type=job_type or self.cfg.get("job_type"),
                tags=list(self.cfg.get("tags") or []) or None,
                mode=self.mode,
                dir=str(self.run_dir),
                settings=settings,
            )
            self.status.update(
                {
                    "status": "ok",
                    "run_id": self.run.id,
                    "run_name": name,
                    "group": group,
                    "dir": str(Path(self.run.dir).parent),
                    "sync": f"wandb sync {Path(self.run.dir).parent}" if self.mode == "offline" else None,
                }
            )
        except BaseException as exc:  # noqa: BLE001 - W&B must never fail the run
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.run = None
            self._fail("init", exc)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            clean = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
            self.run.log(clean)
            for k, v in clean.items():
                self.run.summary[k] = v
        except Exception as exc:
            self._fail("log_metrics", exc)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            for k, v in values.items():
                self.run.summary[k] = v
        except Exception as exc:
            self._fail("log_summary", exc)

    def log_table(self, name: str, df) -> None:
        if not self.active or not self.cfg.get("log_table", True):
            return
        try:
            import wandb

            df = df.copy()
            for col in df.columns:  # W&B tables want scalars
                if df[col].map(lambda v: isinstance(v, (list, tuple))).any():
                    df[col] = df[col].map(lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            self.run.log({name: wandb.Table(dataframe=df)})
        except Exception as exc:
            self._fail("log_table", exc)

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        if not self.active or not self.cfg.get("log_plots", True) or not Path(path).exists():
            return
        try:
            import wandb

            self.run.log({name: wandb.Image(str(path))})
        except Exception as exc:
            self._fail("log_image", exc)

    def finish(self, exit_code: int = 0) -> None:
        if not self.active:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:
            self._fail("finish", exc)
        finally:
            self.run = None


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
]
