"""`python -m headpursuit` / `headpursuit`: the Hydra entry point. It runs the stages, nothing else.

    validate -> resume check -> fail-fast skip -> preflight (no weights) -> model -> task -> ranking
    samples -> capture (cached) -> rank (cached) -> select heads -> head_scores.csv (+ heat map) ->
    evaluate unedited (cached), edited, random-head controls (intervention.batched_edits: the ones
    not cached generated first in one batched pass) -> record -> W&B -> results.json

Failures: results.json says `status: failed` (error.txt: the traceback); SIGTERM / SIGINT record
`status: interrupted` with the stage and exit 128 + the signal number; a heartbeat file shows a
killed job as stale (`aggregate`). A complete results.json is never overwritten by either. A full
disk (ENOSPC / EDQUOT, anywhere) ends the job, and a sweep, with one message naming the file, the
stage and the fix. A job holds `run_dir/.lock` (flock) while it runs: a second process on the same
directory says which process holds it and exits 75 without writing there.

The configs live in `conf/` at the repository top level (see `find_config_dir`). Results go to
Hydra's output directory (`HydraConfig.get().runtime.output_dir`); the job never changes directory.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from headpursuit.app.cache import RunCache, model_identity, task_identity
from headpursuit.app.config import ConfigError, ranking_config, resolve_k, validate_config
from headpursuit.app.files import RunDirBusy, RunDirLock, disk_full, write_csv_atomic
from headpursuit.app.interrupts import JobInterrupted, signals_ignored, signals_raise
from headpursuit.app.liveness import FailFastFlag, Heartbeat
from headpursuit.app.preflight import PreflightError, preflight
from headpursuit.app.record import batch_size_provenance, headline_lines, record
from headpursuit.app.results import (
    HEAD_SCORES_FILE,
    RESULTS_FILE,
    HeartbeatInfo,
    RunInfo,
    RunRecord,
    clear_error,
    completed_results,
    config_hash,
    write_error,
    write_record,
)
from headpursuit.app.schema import RENAMED_KEYS, AppConfig
from headpursuit.app.stages import (
    build_task_memo,
    cache_other_alphas,
    capture_cached,
    concept_token_ids,
    evaluate_cached,
    generate_uncached,
    load_model_memo,
    random_control_edits,
    random_control_sets,
    random_controls,
    rank_cached,
    rank_task_config,
    ranking_samples_cached,
)
from headpursuit.app.timer import Timer
from headpursuit.app.tracker import Tracker, flatten_metrics
from headpursuit.determinism import set_deterministic
from headpursuit.heads import Head, select_heads

if TYPE_CHECKING:
    from headpursuit.models import LoadedModel
    from headpursuit.ranking import HeadScores
    from headpursuit.tasks import Task, TaskOutputs

log = logging.getLogger("headpursuit")

HEATMAP_FILE = "head_scores_heatmap.png"


def find_config_dir() -> str:
    """$HEADPURSUIT_CONF, else `conf/` inside the package (installed wheel), else the repo's `conf/`."""
    package = Path(__file__).resolve().parents[1]
    candidates = [Path(os.environ["HEADPURSUIT_CONF"])] if os.environ.get("HEADPURSUIT_CONF") else []
    candidates += [package / "conf", package.parent / "conf"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return str(c.resolve())
    raise FileNotFoundError(
        f"No Hydra config tree (config.yaml) in {[str(c) for c in candidates]}; set HEADPURSUIT_CONF=/path/to/conf"
    )


def run_info(hc: Any, run_dir: Path) -> RunInfo:
    """Where and how Hydra ran this job (results.json `run`)."""
    try:
        job_num = int(hc.job.num)
    except Exception:  # single runs have no job number
        job_num = None
    return RunInfo(
        dir=str(run_dir),
        mode=hc.mode.name.lower(),
        job_num=job_num,
        overrides=list(hc.overrides.task),
        choices=dict(hc.runtime.choices),
    )


def start_tracker(config: Mapping[str, Any], conf: AppConfig, run_dir: Path, hc: Any) -> Tracker:
    """A W&B run named after the job's overrides, grouped by sweep (logger.group if set); `config`
    is what it records."""
    tracker = Tracker(config["logger"], run_dir)
    sweep = f"{hc.runtime.choices.get('experiment') or 'sweep'}-{Path(hc.sweep.dir).name}"
    tracker.start(
        config,
        group=conf.logger.group or (sweep if hc.mode == RunMode.MULTIRUN else None),
        name=run_name(hc.job.override_dirname, conf.intervention.where),
    )
    return tracker


def run_name(override_dirname: str | None, where: str) -> str:
    """The W&B run name: the job's overrides ("default" without any), and the edit's positions
    when they are not every position and no override says so (an experiment file set them)."""
    name = override_dirname or "default"
    if where != "all" and "intervention.where=" not in name:
        name += f",where={where}"
    return name


def write_head_scores(
    run_dir: Path,
    scores: HeadScores,
    heads: Sequence[Head],
    lm: LoadedModel,
    task: Task,
    method: str,
    *,
    plots: bool,
    timer: Timer,
) -> Path | None:
    """head_scores.csv, and (plots=true) the layers x heads heat map with the edited heads outlined."""
    write_csv_atomic(scores.table, run_dir / HEAD_SCORES_FILE)
    if not plots:
        return None
    from headpursuit.app.plots import score_heatmap  # matplotlib only when plots are made

    with timer("plots"):
        return score_heatmap(
            scores.table,
            lm.layout.n_layers,
            lm.layout.n_heads,
            run_dir / HEATMAP_FILE,
            title=f"{lm.name} | {task.name} | {method}",
            highlight=heads,
        )


def track(tracker: Tracker, rec: RunRecord, scores: HeadScores, heatmap: Path | None) -> None:
    """Mirror the record to W&B: metrics, k/alpha/heads, the score table and the heat map."""
    tracker.log_metrics(flatten_metrics(rec.to_json()))
    if rec.outcome is not None:
        edit = rec.outcome.edit
        tracker.log_summary({"k": edit.k, "alpha": edit.alpha, "heads": [f"{h.layer}.{h.head}" for h in edit.heads]})
    tracker.log_table("head_scores", scores.table)
    if heatmap is not None:
        tracker.log_image("head_scores_heatmap", heatmap)


#: libraries that give their root logger a stderr handler of their own when first imported
LIBRARY_LOGGERS = ("huggingface_hub", "transformers", "datasets")


def route_library_logs() -> None:
    """Send the Hugging Face libraries' log records through the root handlers only (Hydra's console
    and the job log file).

    Each library adds a stderr handler to its root logger when its logging module is first
    imported; huggingface_hub and datasets also propagate to the root, so each of their warnings
    (every hub retry) printed twice, and transformers' never reached the job log. The libraries are
    imported here, before their handlers are removed: a library first imported later (the model
    load imports huggingface_hub) would add its handler after this call and print every line again.
    """
    if not logging.getLogger().handlers:
        return  # nothing configured the root logger: the libraries' own handlers are the only ones
    for name in LIBRARY_LOGGERS:
        try:
            importlib.import_module(f"{name}.utils.logging")  # runs the library's own logging setup
        except ImportError:
            continue  # not installed: nothing of it to route
        library = logging.getLogger(name)
        for h in list(library.handlers):
            if type(h) is logging.StreamHandler:  # the library's console handler (not a file or a user's subclass)
                library.removeHandler(h)
        library.propagate = True


def warn_model_notes(lm: LoadedModel) -> None:
    """The model's provenance notes (random vision tower, quantised weights, ...) on the console,
    at WARNING, as the run starts: not only in results.json."""
    for note in lm.provenance.get("notes") or []:
        log.warning("%s: %s", lm.name, note)


def recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as results.json, the resume hash and W&B hold it: without the keys
    kept in the schema only to name their new names (`RENAMED_KEYS`, null unless set)."""
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    for old in RENAMED_KEYS:
        group, key = old.split(".")
        if isinstance(config.get(group), dict) and config[group].get(key) is None:
            config[group].pop(key, None)
    return config


def execute(
    cfg: DictConfig, run_dir: Path, rec: RunRecord, timer: Timer, fail_fast: FailFastFlag | None = None
) -> RunRecord:
    """The job, filling in `rec` (what a failure records) as it goes; returns the complete record
    (or the one of an earlier run with the same config, resume=true)."""
    hc = HydraConfig.get()
    config = recorded_config(cfg)
    rec.status, rec.config_hash, rec.config, rec.run = "running", config_hash(config), config, run_info(hc, run_dir)
    conf = validate_config(cfg)  # fail fast, naming the key; the typed config
    if conf.resume and (done := completed_results(run_dir, rec.config_hash)):
        log.info("%s: complete with the same config; skipping (resume=false to rerun)", run_dir)
        return done
    # After the resume check: a complete job of this launch is skipped as complete, not as aborted.
    if fail_fast is not None and fail_fast.tripped():
        raise RuntimeError(
            f"skipped: an earlier job of this launch failed and fail_fast=true ({fail_fast.path}); "
            "rerun the sweep after the fix: it runs what is missing"
        )
    with timer("preflight"):
        preflight(conf)  # data, concept, device: before any weight is read
    heartbeat = Heartbeat(run_dir, float(conf.heartbeat_s), lambda: timer.stage)
    rec.heartbeat = HeartbeatInfo.from_json(heartbeat.info())
    write_record(run_dir, rec)
    with heartbeat:
        return run_stages(conf, config, run_dir, rec, timer, hc)


def run_stages(
    conf: AppConfig, config: dict[str, Any], run_dir: Path, rec: RunRecord, timer: Timer, hc: Any
) -> RunRecord:
    """The stages of a validated run: `conf` (typed) says what to do, `config` (its resolved dict)
    is what the record, the cache keys and W&B hold."""
    iv, seed, cache = conf.intervention, conf.seed, RunCache(conf.cache_dir)
    random.seed(seed)
    if conf.deterministic:
        set_deterministic(True)
    tracker = start_tracker(config, conf, run_dir, hc)
    try:
        with timer("load_model"):
            lm, loaded_before = load_model_memo(conf.model, conf.device, conf.dtype)
        warn_model_notes(lm)
        L, H = lm.layout.n_layers, lm.layout.n_heads
        k = resolve_k(iv, L * H, lm.name)
        # rank_task (a transfer run): heads ranked on its data and concept, evaluated on `task`
        rank_cfg = rank_task_config(conf)
        rank_config_dict = config["rank_task"] if conf.rank_task is not None else config["task"]
        with timer("task"):
            task = build_task_memo(conf.task, lm)
            rank_task = build_task_memo(rank_cfg, lm) if conf.rank_task is not None else task
        model_id = model_identity(config["model"], lm)
        with timer("ranking_samples"):
            samples = ranking_samples_cached(
                cache,
                rank_task,
                lm,
                {"model": model_id, "task": task_identity(rank_config_dict, "ranking", rank_task.data_identity())},
            )
        with timer("capture"):
            acts, acts_key = capture_cached(
                cache,
                lm,
                samples,
                rank_cfg.positions,
                concept_token_ids(rank_task.concept),
                conf.capture_batch_size,
            )
        ranking = ranking_config(conf)
        with timer("rank"):
            scores = rank_cached(cache, acts, acts_key, lm, rank_task.concept, ranking, seed)
        heads = select_heads(scores, iv.heads, k, L, H, seed, explicit=iv.explicit)
        # Drawn now, before any generation: a pool that cannot supply them fails the run at once.
        random_sets = random_control_sets(
            heads,
            lm.layout,
            k=k,
            seeds=iv.random_seeds if iv.random_controls else [],
            pool=iv.random_pool,
            strict=iv.random_strict,
        )
        heatmap = write_head_scores(
            run_dir, scores, heads, lm, rank_task, ranking.method, plots=conf.plots, timer=timer
        )
        eval_id = {"model": model_id, "task": task_identity(config["task"], "eval", task.data_identity())}
        alpha = float(iv.alpha)
        edit = {h: alpha for h in heads}
        batched = iv.batched_edits and task.shares_edit_batches
        generated: dict[str, TaskOutputs] = {}
        other_alphas = sorted({float(a) for a in iv.batch_alphas} - {alpha}) if batched else []
        if batched:  # every evaluation not cached, in one pass; each is still cached on its own
            with timer("generate_edits"):
                edits = [{}, edit, *random_control_edits(random_sets, alpha)]
                for a in other_alphas:  # the sweep's other alphas: scored and cached below
                    edits += [{h: a for h in heads}, *random_control_edits(random_sets, a)]
                generated = generate_uncached(cache, lm, task, eval_id, edits, seed=seed, where=iv.where)
        with timer("baseline"):
            baseline = evaluate_cached(cache, lm, task, eval_id, {}, label="baseline", seed=seed, generated=generated)
        with timer("edited"):
            edited = evaluate_cached(
                cache, lm, task, eval_id, edit, label="edited", seed=seed, generated=generated, where=iv.where
            )
        with timer("random"):
            per_seed = random_controls(
                cache, lm, task, eval_id, random_sets, alpha=alpha, seed=seed, generated=generated, where=iv.where
            )
        if other_alphas and generated:
            with timer("other_alphas"):
                cache_other_alphas(
                    cache, lm, task, eval_id, heads, random_sets, other_alphas, seed, generated, where=iv.where
                )
        outcome = record(
            lm=lm,
            task=task,
            config=config,
            k=k,
            heads=heads,
            scores=scores,
            baseline=baseline,
            edited=edited,
            per_seed=per_seed,
            random_sets=random_sets,
            samples=samples,
            acts=acts,
            cache=cache,
            timings=timer.seconds,
            model_loaded_in_process=loaded_before,
            batch_sizes=batch_size_provenance(lm, task, config, n_batched_edits=len(generated) if batched else 0),
            batched_edits=batched,
            rank_task=rank_task if conf.rank_task is not None else None,
        )
        rec.outcome, rec.status = outcome, "complete"
        for warning in outcome.warnings or ():  # on the console too, not only in results.json
            log.warning("%s: %s", run_dir.name, warning)
        for line in headline_lines(outcome):
            log.info("%s", line)
        track(tracker, rec, scores, heatmap)
        tracker.finish(0)
    except BaseException:
        tracker.finish(1)
        rec.tracking = tracker.status
        raise
    rec.tracking = tracker.status
    write_record(run_dir, rec)
    clear_error(run_dir)  # an error.txt of an earlier attempt no longer describes this run
    log.info(
        "%s: %s",
        run_dir,
        {k: round(v, 3) for k, v in flatten_metrics(rec.to_json()).items() if "/std/" not in k and k.count("/") == 2},
    )
    return rec


#: exit status of a job whose run directory another live process holds (EX_TEMPFAIL: try again later)
EXIT_BUSY = 75
#: exit status of a job stopped by a full disk
EXIT_DISK_FULL = 1
#: exit status of a job whose configuration or input is invalid (a ConfigError: the message names the
#: key and the fix); the job's results.json says failed
EXIT_CONFIG = 2


def record_failure(
    run_dir: Path, exc: BaseException, rec: RunRecord, *, status: str = "failed", stage: str | None = None
) -> BaseException | None:
    """`write_error`, or as much of it as a full disk lets through: returns the disk-full error that
    stopped the record (None when it was written). Each file is replaced only by a complete new
    version (`write_text_atomic`), so a record cut short leaves what was there intact."""
    try:
        write_error(run_dir, exc, rec, status=status, stage=stage)
    except Exception as err:
        if (full := disk_full(err)) is None:
            raise
        return full
    return None


def record_interrupt(run_dir: Path, exc: JobInterrupted, rec: RunRecord) -> None:
    """results.json `status: interrupted` + error.txt, and a short message (no traceback)."""
    with signals_ignored():  # a second Ctrl-C does not cut the record short
        full = record_failure(run_dir, exc, rec, status="interrupted", stage=exc.stage)
    recorded = (
        f"recorded as status=interrupted in {run_dir / RESULTS_FILE}"
        if full is None
        else f"not recorded (no space left on the device: {full})"
    )
    print(
        f"headpursuit: {run_dir}: {exc}; {recorded}. Rerun the same command to run it again (complete jobs are skipped).",
        file=sys.stderr,
    )


def report_disk_full(run_dir: Path, cfg: DictConfig, full: BaseException, stage: str | None) -> None:
    """The one message of a run stopped by a full disk (or a spent quota): which file, which stage,
    the fix."""
    reason = full.strerror if isinstance(full, OSError) and full.strerror else "No space left on device"
    path = getattr(full, "filename", None)
    what = f" writing {path}" if path else f" ({type(full).__name__}: {full})"
    print(
        f"headpursuit: {run_dir}: {reason}{what} (stage: {stage or 'start'}). Files already written are "
        "intact (each is replaced only by a complete new version). Free space on that file system, or move "
        f"the writes to a disk with room: cache_dir=/path/with/room (now {cfg.cache_dir}) for the "
        f"caches, hydra.run.dir=... (hydra.sweep.dir=... with -m; now {run_dir}) for the results; then "
        "rerun the same command (complete jobs are skipped).",
        file=sys.stderr,
    )


@hydra.main(version_base="1.3", config_path=find_config_dir(), config_name="config")
def main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    route_library_logs()
    return run_locked(cfg, hc, run_job, program="headpursuit")


def run_locked(cfg: DictConfig, hc: Any, job: Callable[[DictConfig, Any, Path], Any], *, program: str) -> Any:
    """`job(cfg, hc, run_dir)` holding the run directory's lock (one process per run directory, for
    the job's whole duration): a busy directory or a full disk at the lock is one line and an exit
    code, with nothing written there. Every Hydra entry of the app runs its job through this."""
    run_dir = Path(hc.runtime.output_dir)
    try:
        with RunDirLock(run_dir):
            return job(cfg, hc, run_dir)
    except RunDirBusy as busy:  # raised before anything was written: results.json untouched
        print(f"{program}: {busy}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY) from None
    except OSError as exc:  # the lock file could not be made (the job reports its own errors)
        if disk_full(exc) is None:
            raise
        report_disk_full(run_dir, cfg, exc, "start")
        raise SystemExit(EXIT_DISK_FULL) from None


def run_job(cfg: DictConfig, hc: Any, run_dir: Path) -> dict | None:
    """One job in its (locked) run directory: `execute`, and what a failure or a signal records."""
    return run_recorded(cfg, hc, run_dir, RunRecord(status="running"), execute)


#: a job body: (cfg, run_dir, its record, timer, the sweep's fail-fast flag) -> the complete record
JobBody = Callable[[DictConfig, Path, Any, Timer, FailFastFlag | None], Any]


def run_recorded(cfg: DictConfig, hc: Any, run_dir: Path, rec: Any, body: JobBody) -> dict | None:
    """Run `body` (a steer run's `execute`, the atlas's) with `rec` (a `RunRecord`, filled in as the
    job goes) as what a failure or a signal records: the one failure policy of every job."""
    multirun = hc.mode == RunMode.MULTIRUN
    # Keyed by this launch: a rerun into the same sweep dir is not skipped by an old failure.
    fail_fast = FailFastFlag(hc.sweep.dir) if multirun and cfg.fail_fast else None
    timer = Timer(announce=lambda name: log.info("%s: stage %s", run_dir.name, name))
    # A log line the job log cannot take (a full disk) prints no traceback of its own: a full disk
    # is reported once, below.
    raise_log_errors, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        with signals_raise(lambda: timer.stage):
            return body(cfg, run_dir, rec, timer, fail_fast).to_json()
    except JobInterrupted as exc:
        record_interrupt(run_dir, exc, rec)
        # SystemExit passes Hydra's error report: the process exits 130 (SIGINT) / 143 (SIGTERM).
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        stage = timer.stage_of_failure()
        full = record_failure(run_dir, exc, rec, stage=stage)
        if (full := disk_full(exc) or full) is not None:
            # Every later write (other jobs of a sweep included) would fail alike: stop, one message.
            report_disk_full(run_dir, cfg, full, stage)
            raise SystemExit(EXIT_DISK_FULL) from None
        log.error("%s failed: %s: %s (see %s/error.txt)", run_dir, type(exc).__name__, exc, run_dir)
        if fail_fast is not None:
            fail_fast.trip()
        # A single run, a config error or fail_fast raises (Hydra records it; the process exits 1).
        # Otherwise a sweep records the failure in the job's dir and goes on with the other jobs;
        # so it does for a job whose input (data, concept) fails preflight: jobs may differ there.
        config_error = isinstance(exc, ConfigError) and not isinstance(exc, PreflightError)
        if not multirun or fail_fast is not None or config_error:
            if isinstance(exc, ConfigError) and not multirun:
                # Bad input, named with its fix: the message is the whole story, no traceback. (A
                # sweep raises: its other jobs still run, or skip themselves under fail_fast.)
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(EXIT_CONFIG) from None
            raise
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        logging.raiseExceptions = raise_log_errors


if __name__ == "__main__":
    main()
