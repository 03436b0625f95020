"""`python -m headpursuit.app.atlas` / `headpursuit-atlas`: a head atlas of one model (Hydra app,
config `conf/atlas.yaml` on the schema `AtlasAppConfig`, the `model`, `logger` and `task` groups
shared with `python -m headpursuit`).

    validate -> resume check -> preflight (no weights) -> model -> prompt sources -> the model's
    answers (cached) -> capture (cached) -> ONE full-vocabulary SOMP per head (cached) -> every
    concept's score and its random token sets (`headpursuit.atlas`) -> atlas.csv, atlas.md,
    overlap.csv, atlas_layers.csv, heat maps -> W&B -> results.json

What it writes and its results.json record: `headpursuit.app.atlas_report`. Failures and
interrupts are recorded as `python -m headpursuit` records them (`headpursuit.app.run`): a
complete results.json is never overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from headpursuit.app.atlas_report import (
    AtlasOutcome,
    AtlasRecord,
    concept_summary,
    overlap_json,
    track,
    write_outputs,
)
from headpursuit.app.cache import RunCache, model_identity, task_identity
from headpursuit.app.config import check_job, check_task_sizes, schema_config
from headpursuit.app.environment import environment
from headpursuit.app.liveness import FailFastFlag, Heartbeat
from headpursuit.app.preflight import (
    PreflightError,
    check_cache_dir,
    check_data_file,
    check_task_builds,
    standalone_tokenizer,
)
from headpursuit.app.results import (
    RESULTS_FILE,
    HeartbeatInfo,
    clear_error,
    completed_results,
    config_hash,
    write_record,
)
from headpursuit.app.run import (
    find_config_dir,
    recorded_config,
    route_library_logs,
    run_info,
    run_locked,
    run_recorded,
    warn_model_notes,
)
from headpursuit.app.schema import AtlasAppConfig, AtlasConfig, AtlasSompConfig
from headpursuit.app.stages import build_task_memo, capture_cached, load_model_memo, ranking_samples_cached
from headpursuit.app.timer import Timer
from headpursuit.app.tracker import Tracker
from headpursuit.atlas import CONTROL_POOLS, SharedPursuit, head_atlas, shared_pursuit
from headpursuit.concepts import Concept, available_concepts, load_concept
from headpursuit.determinism import set_deterministic
from headpursuit.errors import ConfigError
from headpursuit.fingerprint import code_fingerprint
from headpursuit.models.loading import check_device
from headpursuit.store import entry_key
from headpursuit.tasks import TaskConfig, task_config

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample, HeadActivations
    from headpursuit.models import LoadedModel

log = logging.getLogger("headpursuit")

#: activation rows an atlas reads: every one that does not depend on a concept (answer_concept does)
ATLAS_POSITIONS = ("answer", "all", "last_prompt", "prompt_mean", "image_mean")
#: rows that read only the prompt: the model's answers are not needed, so each source generates one
#: token (one forward pass per batch) where it would generate max_new_tokens
PROMPT_ONLY_POSITIONS = ("last_prompt", "prompt_mean", "image_mean")
#: which prompt sources: auto (image_prompts for a model with a processor, text_prompts otherwise)
PROMPT_SETS = ("auto", "text", "images")
#: prompt set -> the `AtlasConfig` field holding its sources
PROMPT_NODES = {"text": "text_prompts", "images": "image_prompts"}
SOMP_AGGREGATIONS = ("l1", "l2")
#: the atlas's counts: key -> (the smallest value, the fix a message suggests)
ATLAS_COUNTS = {
    "n_per_group": (1, 16),
    "random_draws": (0, 20),
    "top_k": (1, 10),
    "table_heads": (1, 5),
    "top_tokens": (1, 5),
    "lens_top": (1, 5),
}


# ----------------------------------------------------------------------------------------------
# checks before the model loads


def validate_atlas(cfg: Any) -> AtlasAppConfig:
    """The typed atlas config (`AtlasAppConfig`; every prompt source as its task kind's
    `TaskConfig`) after every check that needs neither model nor tokenizer; ConfigError naming the
    key and a fix that works as written. `cfg`: a composed config or a mapping of some keys."""
    conf = schema_config(cfg, AtlasAppConfig)
    check_job(conf)
    atlas = conf.atlas
    if not atlas.concepts:
        raise ConfigError(
            "atlas.concepts must be a non-empty list of concept names or word-list files, got []. "
            "Fix: atlas.concepts=[countries,colors]"
        )
    if atlas.somp.somp_steps < 1:
        raise ConfigError(
            f"atlas.somp.somp_steps must be an integer >= 1, got {atlas.somp.somp_steps}. "
            f"Fix: atlas.somp.somp_steps={AtlasSompConfig.somp_steps}"
        )
    if atlas.somp.aggregation not in SOMP_AGGREGATIONS:
        raise ConfigError(
            f"atlas.somp.aggregation={atlas.somp.aggregation!r} is not one of {', '.join(SOMP_AGGREGATIONS)}. "
            "Fix: atlas.somp.aggregation=l1"
        )
    if atlas.positions not in ATLAS_POSITIONS:
        why = " (its rows depend on the concept; an atlas reads the same rows for every concept)"
        raise ConfigError(
            f"atlas.positions={atlas.positions!r} is not one of {', '.join(ATLAS_POSITIONS)}"
            f"{why if atlas.positions == 'answer_concept' else ''}. Fix: atlas.positions={AtlasConfig.positions}"
        )
    if atlas.prompts not in PROMPT_SETS:
        raise ConfigError(
            f"atlas.prompts={atlas.prompts!r} is not one of {', '.join(PROMPT_SETS)}. Fix: atlas.prompts=auto"
        )
    for key, (minimum, fix) in ATLAS_COUNTS.items():
        value = getattr(atlas, key)
        if value < minimum:
            raise ConfigError(f"atlas.{key} must be an integer >= {minimum}, got {value}. Fix: atlas.{key}={fix}")
    if atlas.control_pool not in CONTROL_POOLS:
        raise ConfigError(
            f"atlas.control_pool={atlas.control_pool!r} is not one of {', '.join(CONTROL_POOLS)}. "
            f"Fix: atlas.control_pool={AtlasConfig.control_pool}"
        )
    for node in PROMPT_NODES.values():
        sources = getattr(atlas, node)
        for name in sources:
            where = f"atlas.{node}.{name}"
            try:
                sources[name] = task_config(sources[name], node=where)
            except ConfigError as exc:
                raise ConfigError(
                    f"{exc}. Fix: compose the source from conf/task/ with +task@{where}=qa_countries, or drop it "
                    f"with ~task@{where}"
                ) from None
            check_task_sizes(atlas_task_config(sources[name], 1, atlas.positions), node=where)
    return conf


def atlas_task_config(task_cfg: TaskConfig, n_per_group: int, positions: str) -> TaskConfig:
    """A prompt source's task config as the atlas uses it: the ranking split of both groups,
    `n_per_group` items each (the evaluation split, unused, gets the one item a split needs); with
    `positions` that read only the prompt (`PROMPT_ONLY_POSITIONS`) one new token per answer."""
    changes: dict[str, Any] = {
        "n_rank": {"concept": n_per_group, "control": n_per_group},
        "rank_groups": ["concept", "control"],
        "n_eval": 1,
    }
    if positions in PROMPT_ONLY_POSITIONS and hasattr(task_cfg, "max_new_tokens"):
        changes["max_new_tokens"] = 1
    return dataclasses.replace(task_cfg, **changes)


def prompt_set(atlas: AtlasConfig, is_vlm: bool) -> str:
    """`text` or `images`: `atlas.prompts`, with auto resolved by the model (a processor: images)."""
    return ("images" if is_vlm else "text") if atlas.prompts == "auto" else atlas.prompts


def prompt_sources(atlas: AtlasConfig, which: str) -> dict[str, TaskConfig]:
    """{source name: its task config for the atlas} of the `which` prompt set; ConfigError when empty."""
    node = PROMPT_NODES[which]
    sources = getattr(atlas, node)
    if not sources:
        raise ConfigError(
            f"atlas.{node} holds no prompt source (atlas.prompts={atlas.prompts} chose the {which} set). "
            f"Fix: +task@atlas.{node}.qa=qa_countries"
            + (", or atlas.prompts=images for a vision-language model" if which == "text" else "")
        )
    return {
        name: atlas_task_config(task_config(cfg, node=f"atlas.{node}.{name}"), atlas.n_per_group, atlas.positions)
        for name, cfg in sources.items()
    }


def load_atlas_concepts(names: Sequence[str], tokenizer: Any) -> dict[str, Concept]:
    """{concept name: Concept} for `atlas.concepts`; ConfigError naming the key for an unknown
    name, an unreadable file, a concept without tokens or two entries with one name."""
    out: dict[str, Concept] = {}
    for spec in names:
        try:
            concept = load_concept(spec, tokenizer)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise PreflightError(
                f"atlas.concepts: {spec!r} is not a usable concept ({exc}). Fix: a shipped name "
                f"({', '.join(available_concepts())}) or a word-list file, one word per line"
            ) from None
        if concept.name in out:
            raise ConfigError(f"atlas.concepts names the concept {concept.name!r} twice; list it once")
        if concept.token_ids.numel() == 0:
            raise PreflightError(f"atlas.concepts: {spec!r} has no token in this model's vocabulary; drop it")
        out[concept.name] = concept
    return out


def preflight_atlas(conf: AtlasAppConfig) -> None:
    """The atlas's input checks that need no weights: device, cache_dir, every prompt source's data
    file, and (with the model's tokenizer) each source built as the atlas builds it, the SOMP steps
    against the vocabulary and the concepts."""
    check_device(conf.device)
    check_cache_dir(conf.cache_dir)
    atlas = conf.atlas
    sources = {
        f"atlas.{node}.{name}": atlas_task_config(task_cfg, atlas.n_per_group, atlas.positions)
        for node in PROMPT_NODES.values()
        for name, task_cfg in getattr(atlas, node).items()
    }
    for where, task_cfg in sources.items():
        for key in ("data_path", "rank_data_path"):
            check_data_file(task_cfg, key=key, node=where)
    tokenizer = standalone_tokenizer(conf.model)
    if tokenizer is None:
        return
    steps = atlas.somp.somp_steps
    if steps > len(tokenizer):
        raise ConfigError(
            f"atlas.somp.somp_steps={steps} (SOMP steps) is larger than the vocabulary of {conf.model.name_or_path} "
            f"({len(tokenizer)} tokens). Fix: atlas.somp.somp_steps={AtlasSompConfig.somp_steps}"
        )
    for where, task_cfg in sources.items():
        # the text sources only: the image sources are built with the model (a text model, the
        # default, never reads them, and their images are not worth decoding twice)
        if where.startswith(f"atlas.{PROMPT_NODES['text']}."):
            check_task_builds(task_cfg, tokenizer, node=where)
    load_atlas_concepts(atlas.concepts, tokenizer)


# ----------------------------------------------------------------------------------------------
# stages


def atlas_samples(
    cache: RunCache, lm: LoadedModel, sources: dict[str, TaskConfig], model_id: dict
) -> tuple[list[CaptureSample], dict[str, int]]:
    """Every source's ranking samples (prompt + the model's greedy answer; cached like a run's),
    in source order, and the count per source."""
    samples: list[CaptureSample] = []
    counts: dict[str, int] = {}
    for name, task_cfg in sources.items():
        task = build_task_memo(task_cfg, lm)
        ident = {
            "model": model_id,
            "task": task_identity(dataclasses.asdict(task_cfg), "ranking", task.data_identity()),
        }
        got = ranking_samples_cached(cache, task, lm, ident)
        counts[name] = len(got)
        samples += got
    return samples, counts


def pursuit_cached(
    cache: RunCache, acts: HeadActivations, acts_key: str, lm: LoadedModel, somp: AtlasSompConfig
) -> SharedPursuit:
    """`shared_pursuit` (one full-vocabulary SOMP per head), cached on (the activations' key, the
    SOMP options, the code: `entry_key`) under the label `somp`."""
    options = dataclasses.asdict(somp)
    key = entry_key("pursuit", acts_key, options)
    pursuit, _ = cache.get_or_compute(
        "pursuit", key, lambda: shared_pursuit(acts, lm, **options), fmt="pickle", label="somp"
    )
    return pursuit


# ----------------------------------------------------------------------------------------------
# the job


def execute(
    cfg: DictConfig, run_dir: Path, rec: AtlasRecord, timer: Timer, fail_fast: FailFastFlag | None = None
) -> AtlasRecord:
    """The job, filling in `rec` (what a failure records) as it goes; returns the complete record
    (or, resume=true, the one of an earlier atlas with the same config)."""
    hc = HydraConfig.get()
    config = recorded_config(cfg)
    rec.status, rec.config_hash, rec.config, rec.run = "running", config_hash(config), config, run_info(hc, run_dir)
    conf = validate_atlas(cfg)
    if conf.resume and completed_results(run_dir, rec.config_hash) is not None:
        log.info("%s: complete with the same config; skipping (resume=false to rerun)", run_dir)
        done = AtlasRecord.read(run_dir / RESULTS_FILE)
        if done is not None:  # None only if the file went away since completed_results read it
            return done
    if fail_fast is not None and fail_fast.tripped():
        raise RuntimeError(
            f"skipped: an earlier job of this launch failed and fail_fast=true ({fail_fast.path}); "
            "rerun the sweep after the fix: it runs what is missing"
        )
    with timer("preflight"):
        preflight_atlas(conf)
    heartbeat = Heartbeat(run_dir, float(conf.heartbeat_s), lambda: timer.stage)
    rec.heartbeat = HeartbeatInfo.from_json(heartbeat.info())
    write_record(run_dir, rec)
    with heartbeat:
        return run_stages(conf, config, run_dir, rec, timer, hc)


def rows_description(atlas: AtlasConfig, n_rows: int, n_prompts: int, counts: dict[str, int]) -> str:
    """atlas.md's line on the activation rows the atlas read."""
    per_source = ", ".join(f"{n}: {c}" for n, c in counts.items())
    what = (
        "the rows read the prompts only"
        if atlas.positions in PROMPT_ONLY_POSITIONS
        else "with the model's own greedy answers"
    )
    return (
        f"Rows: `positions={atlas.positions}`, {n_rows} activation rows from {n_prompts} prompts ({per_source}; "
        f"{atlas.n_per_group} per group and source; {what})."
    )


def run_stages(
    conf: AtlasAppConfig, config: dict[str, Any], run_dir: Path, rec: AtlasRecord, timer: Timer, hc: Any
) -> AtlasRecord:
    """The stages of a validated atlas: `conf` (typed) says what to do, `config` (its resolved
    dict) is what the record, the cache keys and W&B hold."""
    atlas_cfg, seed, cache = conf.atlas, conf.seed, RunCache(conf.cache_dir)
    random.seed(seed)
    if conf.deterministic:
        set_deterministic(True)
    tracker = Tracker(conf.logger, run_dir)
    tracker.start(
        config,
        group=conf.logger.group or (f"atlas-{Path(hc.sweep.dir).name}" if hc.mode == RunMode.MULTIRUN else None),
        name=hc.job.override_dirname or "atlas",
        job_type="atlas",
    )
    try:
        with timer("load_model"):
            lm, loaded_before = load_model_memo(conf.model, conf.device, conf.dtype)
        warn_model_notes(lm)
        which = prompt_set(atlas_cfg, lm.processor is not None)
        sources = prompt_sources(atlas_cfg, which)
        model_id = model_identity(config["model"], lm)
        with timer("answers"):
            samples, counts = atlas_samples(cache, lm, sources, model_id)
        with timer("capture"):
            acts, acts_key = capture_cached(cache, lm, samples, atlas_cfg.positions, [], conf.capture_batch_size)
        with timer("somp"):
            pursuit = pursuit_cached(cache, acts, acts_key, lm, atlas_cfg.somp)
        with timer("concepts"):
            atlas = head_atlas(
                pursuit,
                load_atlas_concepts(atlas_cfg.concepts, lm.tokenizer),
                tokenizer=lm.tokenizer,
                n_draws=atlas_cfg.random_draws,
                seed=seed,
                pool=atlas_cfg.control_pool,
                top_tokens=atlas_cfg.top_tokens,
            )
        rows_info = rows_description(atlas_cfg, acts.n_rows, len(samples), counts)
        files, overlap, profile, images = write_outputs(
            run_dir, atlas, lm, acts, atlas_cfg, rows_info, plots=conf.plots, timer=timer
        )
        rec.atlas = AtlasOutcome(
            model=lm.name,
            concepts=concept_summary(atlas, atlas_cfg.top_k),
            top_k=atlas_cfg.top_k,
            overlap=overlap_json(overlap),
            somp_runs=atlas.meta["somp_runs"],
            control={k: atlas.meta[k] for k in ("n_draws", "pool", "pool_size", "seed")},
            files={k: Path(v).name for k, v in files.items()},
            provenance={
                "model": {
                    **lm.provenance,
                    "layout": dataclasses.asdict(lm.layout),
                    "loaded_in_process": loaded_before,
                },
                "prompts": {"set": which, "sources": counts, "n_per_group": atlas_cfg.n_per_group},
                "environment": environment(),
                "seeds": {"seed": seed},
                "code_fingerprint": code_fingerprint(),
                "n_prompts": len(samples),
                "n_activation_rows": int(acts.n_rows),
                "positions": atlas_cfg.positions,
                "somp": pursuit.meta,
                "cache": {"dir": str(cache.root) if cache.enabled else None, "hits": dict(cache.hits)},
                "timings": dict(timer.seconds),
            },
        )
        rec.status = "complete"
        track(tracker, atlas, overlap, profile, images, rec.atlas)
        tracker.finish(0)
    except BaseException:
        tracker.finish(1)
        rec.tracking = tracker.status
        raise
    rec.tracking = tracker.status
    write_record(run_dir, rec)
    clear_error(run_dir)  # an error.txt of an earlier attempt no longer describes this atlas
    log.info(
        "%s: atlas of %s: heads beyond random %s",
        run_dir,
        lm.name,
        {c: len(s.beyond_random) for c, s in rec.atlas.concepts.items()},
    )
    return rec


@hydra.main(version_base="1.3", config_path=find_config_dir(), config_name="atlas")
def main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    route_library_logs()
    return run_locked(cfg, hc, run_job, program="headpursuit-atlas")


def run_job(cfg: DictConfig, hc: Any, run_dir: Path) -> dict | None:
    """One atlas in its (locked) run directory; failures and signals recorded as a steer run's."""
    return run_recorded(cfg, hc, run_dir, AtlasRecord(status="running"), execute)


if __name__ == "__main__":
    main()
