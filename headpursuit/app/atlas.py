"""`python -m headpursuit.app.atlas` / `headpursuit-atlas`: a head atlas of one model (Hydra app,
config `conf/atlas.yaml`, the `model`, `logger` and `task` groups shared with `python -m headpursuit`).

    validate -> resume check -> preflight (no weights) -> model -> prompt sources -> the model's
    answers (cached) -> capture (cached) -> ONE full-vocabulary SOMP per head (cached) -> every
    concept's score and its random token sets (`headpursuit.atlas`) -> atlas.csv, atlas.md,
    overlap.csv, atlas_layers.csv, heat maps -> W&B -> results.json

The run directory gets the files below (`ATLAS_FILES`); results.json holds the status, the config,
the provenance of a steer run where it applies (model notes, environment, seeds, code fingerprint,
cache hits, timings) and a summary (top heads per concept, heads beyond the random token sets,
the overlap). Failures and interrupts are recorded as `python -m headpursuit` records them
(`headpursuit.app.run`): a complete results.json is never overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from headpursuit.app.cache import CACHE_VERSION, RunCache, model_identity, stable_hash, task_identity
from headpursuit.app.config import LOGGER_MODES, check_task_sizes
from headpursuit.app.interrupts import JobInterrupted, signals_raise
from headpursuit.app.preflight import PreflightError, check_cache_dir, check_data_file, standalone_tokenizer
from headpursuit.app.run import (
    EXIT_BUSY,
    EXIT_DISK_FULL,
    find_config_dir,
    record_failure,
    record_interrupt,
    report_disk_full,
    route_library_logs,
    run_info,
    warn_model_notes,
)
from headpursuit.app.stages import build_task_memo, capture_cached, load_model_memo, ranking_samples_cached
from headpursuit.app.tracking import (
    RESULTS_FILE,
    FailFastFlag,
    Heartbeat,
    RunDirBusy,
    RunDirLock,
    Timer,
    Tracker,
    clear_error,
    completed_results,
    config_hash,
    disk_full,
    environment,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from headpursuit.atlas import CONTROL_POOLS, HeadAtlas, SharedPursuit, head_atlas, logit_lens_tokens, shared_pursuit
from headpursuit.concepts import Concept, load_concept
from headpursuit.determinism import set_deterministic
from headpursuit.errors import ConfigError
from headpursuit.fingerprint import code_fingerprint
from headpursuit.models.loading import check_device
from headpursuit.ranking.inputs import format_tokens
from headpursuit.tasks import known_tasks

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample, HeadActivations
    from headpursuit.models import LoadedModel

log = logging.getLogger("headpursuit")

ATLAS_CSV = "atlas.csv"
ATLAS_MD = "atlas.md"
OVERLAP_CSV = "overlap.csv"
OVERLAP_PNG = "overlap.png"
LAYERS_CSV = "atlas_layers.csv"
LAYERS_PNG = "atlas_layers.png"
#: the per-concept heat map: atlas_<concept>.png
CONCEPT_PNG = "atlas_{}.png"

#: activation rows an atlas reads: every one that does not depend on a concept (answer_concept does)
ATLAS_POSITIONS = ("answer", "all", "last_prompt", "prompt_mean", "image_mean")
#: rows that read only the prompt: the model's answers are not needed, so each source generates one
#: token (one forward pass per batch) where it would generate max_new_tokens
PROMPT_ONLY_POSITIONS = ("last_prompt", "prompt_mean", "image_mean")
#: which prompt sources: auto (image_prompts for a model with a processor, text_prompts otherwise)
PROMPT_SETS = ("auto", "text", "images")
PROMPT_NODES = {"text": "text_prompts", "images": "image_prompts"}
SOMP_AGGREGATIONS = ("l1", "l2")


# ----------------------------------------------------------------------------------------------
# checks before the model loads


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_count(atlas: Mapping[str, Any], key: str, minimum: int, fix: int) -> None:
    value: Any = atlas.get(key)
    if not (_is_int(value) and value >= minimum):
        raise ConfigError(f"atlas.{key} must be an integer >= {minimum}, got {value!r}. Fix: atlas.{key}={fix}")


def validate_atlas(config: Mapping[str, Any]) -> None:
    """Every check of an atlas config that needs neither model nor tokenizer; ConfigError naming
    the key and a fix that works as written."""
    atlas = config.get("atlas")
    if not isinstance(atlas, Mapping):
        raise ConfigError("the config has no `atlas` node; run with the atlas config (python -m headpursuit.app.atlas)")
    model = config.get("model")
    if not isinstance(model, Mapping) or not isinstance(model.get("name_or_path"), str):
        raise ConfigError(
            "model.name_or_path must be a registry name, hub id or directory; choose one with model=smollm2"
        )
    concepts = atlas.get("concepts")
    if not isinstance(concepts, (list, tuple)) or not concepts or not all(isinstance(c, str) for c in concepts):
        raise ConfigError(
            f"atlas.concepts must be a non-empty list of concept names or word-list files, got {concepts!r}. "
            "Fix: atlas.concepts=[countries,colors]"
        )
    somp = atlas.get("somp")
    if not isinstance(somp, Mapping):
        raise ConfigError(f"atlas.somp must hold the SOMP options (steps, aggregation, ...), got {somp!r}")
    if not (_is_int(somp.get("steps")) and somp["steps"] >= 1):
        raise ConfigError(
            f"atlas.somp.steps must be an integer >= 1, got {somp.get('steps')!r}. Fix: atlas.somp.steps=10"
        )
    if somp.get("aggregation", "l1") not in SOMP_AGGREGATIONS:
        raise ConfigError(
            f"atlas.somp.aggregation={somp.get('aggregation')!r} is not one of {', '.join(SOMP_AGGREGATIONS)}. "
            "Fix: atlas.somp.aggregation=l1"
        )
    for key in ("fold_norm_gain", "center", "normalize_atoms"):
        if not isinstance(somp.get(key), bool):
            raise ConfigError(f"atlas.somp.{key} must be true or false, got {somp.get(key)!r}")
    positions = atlas.get("positions")
    if positions not in ATLAS_POSITIONS:
        why = " (its rows depend on the concept; an atlas reads the same rows for every concept)"
        raise ConfigError(
            f"atlas.positions={positions!r} is not one of {', '.join(ATLAS_POSITIONS)}"
            f"{why if positions == 'answer_concept' else ''}. Fix: atlas.positions=answer"
        )
    if atlas.get("prompts") not in PROMPT_SETS:
        raise ConfigError(
            f"atlas.prompts={atlas.get('prompts')!r} is not one of {', '.join(PROMPT_SETS)}. Fix: atlas.prompts=auto"
        )
    for node in PROMPT_NODES.values():
        sources = atlas.get(node) or {}
        if not isinstance(sources, Mapping):
            raise ConfigError(f"atlas.{node} must map source names to task configs, got {sources!r}")
        for name, task_cfg in sources.items():
            where = f"atlas.{node}.{name}"
            if not isinstance(task_cfg, Mapping) or task_cfg.get("name") not in known_tasks():
                raise ConfigError(
                    f"{where} is not a task config (known tasks: {', '.join(known_tasks())}). Fix: compose one "
                    f"from conf/task/ with +task@{where}=qa_countries, or drop it with ~task@{where}"
                )
            check_task_sizes(atlas_task_config(task_cfg, 1), node=where)
    _check_count(atlas, "n_per_group", 1, 16)
    _check_count(atlas, "random_draws", 0, 20)
    for key, fix in (("top_k", 10), ("table_heads", 5), ("top_tokens", 5), ("lens_top", 5)):
        _check_count(atlas, key, 1, fix)
    if atlas.get("control_pool") not in CONTROL_POOLS:
        raise ConfigError(
            f"atlas.control_pool={atlas.get('control_pool')!r} is not one of {', '.join(CONTROL_POOLS)}. "
            "Fix: atlas.control_pool=matched"
        )
    logger = config.get("logger") or {}
    if logger.get("mode", "disabled") not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={logger.get('mode')!r} is not one of {', '.join(LOGGER_MODES)}")
    if not _is_int(config.get("seed", 0)):
        raise ConfigError(f"seed must be an integer, got {config.get('seed')!r}")
    cbs = config.get("capture_batch_size", 8)
    if not (cbs == "auto" or (_is_int(cbs) and cbs >= 1)):
        raise ConfigError(f"capture_batch_size must be an integer >= 1 or auto, got {cbs!r}")


def atlas_task_config(task_cfg: Mapping[str, Any], n_per_group: int, positions: str = "answer") -> dict[str, Any]:
    """A prompt source's task config as the atlas uses it: the ranking split of both groups,
    `n_per_group` items each (the evaluation split, unused, gets the one item a split needs); with
    `positions` that read only the prompt (`PROMPT_ONLY_POSITIONS`) one new token per answer."""
    out = {
        **dict(task_cfg),
        "n_rank": {"concept": int(n_per_group), "control": int(n_per_group)},
        "rank_groups": ["concept", "control"],
        "n_eval": 1,
    }
    if positions in PROMPT_ONLY_POSITIONS and "max_new_tokens" in out:
        out["max_new_tokens"] = 1
    return out


def prompt_set(atlas: Mapping[str, Any], is_vlm: bool) -> str:
    """`text` or `images`: `atlas.prompts`, with auto resolved by the model (a processor: images)."""
    choice = str(atlas["prompts"])
    return ("images" if is_vlm else "text") if choice == "auto" else choice


def prompt_sources(atlas: Mapping[str, Any], which: str) -> dict[str, dict[str, Any]]:
    """{source name: its task config for the atlas} of the `which` prompt set; ConfigError when empty."""
    node = PROMPT_NODES[which]
    sources = atlas.get(node) or {}
    if not sources:
        raise ConfigError(
            f"atlas.{node} holds no prompt source (atlas.prompts={atlas['prompts']} chose the {which} set). "
            f"Fix: +task@atlas.{node}.qa=qa_countries"
            + (", or atlas.prompts=images for a vision-language model" if which == "text" else "")
        )
    return {name: atlas_task_config(cfg, atlas["n_per_group"], atlas["positions"]) for name, cfg in sources.items()}


def load_atlas_concepts(names: Sequence[str], tokenizer: Any) -> dict[str, Concept]:
    """{concept name: Concept} for `atlas.concepts`; ConfigError naming the key for an unknown
    name, an unreadable file, a concept without tokens or two entries with one name."""
    out: dict[str, Concept] = {}
    for spec in names:
        try:
            concept = load_concept(spec, tokenizer)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise PreflightError(
                f"atlas.concepts: {spec!r} is not a usable concept ({exc}). Fix: a shipped name (countries, colors, "
                "numbers, quantity, sentiment, toxic, countries_single_word) or a word-list file, one word per line"
            ) from None
        if concept.name in out:
            raise ConfigError(f"atlas.concepts names the concept {concept.name!r} twice; list it once")
        if concept.token_ids.numel() == 0:
            raise PreflightError(f"atlas.concepts: {spec!r} has no token in this model's vocabulary; drop it")
        out[concept.name] = concept
    return out


def preflight_atlas(config: Mapping[str, Any]) -> None:
    """The atlas's input checks that need no weights: device, cache_dir, every prompt source's data
    file, and (with the model's tokenizer) the concepts."""
    check_device(config.get("device", "auto"))
    check_cache_dir(config.get("cache_dir"))
    atlas = config["atlas"]
    for node in PROMPT_NODES.values():
        for name, task_cfg in (atlas.get(node) or {}).items():
            for key in ("data_path", "rank_data_path"):
                check_data_file(task_cfg, key=key, node=f"atlas.{node}.{name}")
    tokenizer = standalone_tokenizer(config["model"])
    if tokenizer is not None:
        load_atlas_concepts(atlas["concepts"], tokenizer)


# ----------------------------------------------------------------------------------------------
# stages


def atlas_samples(
    cache: RunCache, lm: LoadedModel, sources: Mapping[str, Mapping[str, Any]], model_id: dict
) -> tuple[list[CaptureSample], dict[str, int]]:
    """Every source's ranking samples (prompt + the model's greedy answer; cached like a run's),
    in source order, and the count per source."""
    samples: list[CaptureSample] = []
    counts: dict[str, int] = {}
    for name, task_cfg in sources.items():
        task = build_task_memo(task_cfg, lm)
        ident = {"model": model_id, "task": task_identity(task_cfg, "ranking", task.data_identity())}
        got = ranking_samples_cached(cache, task, lm, ident)
        counts[name] = len(got)
        samples += got
    return samples, counts


def pursuit_cached(
    cache: RunCache, acts: HeadActivations, acts_key: str, lm: LoadedModel, somp_cfg: Mapping[str, Any]
) -> SharedPursuit:
    """`shared_pursuit` (one full-vocabulary SOMP per head), cached on (activations, SOMP options,
    code) under the label `somp`."""
    opts = dict(somp_cfg)
    steps = int(opts.pop("steps"))
    key = stable_hash("atlas_somp", CACHE_VERSION, acts_key, steps, opts, code_fingerprint())
    pursuit, _ = cache.get_or_compute(
        "atlas", key, lambda: shared_pursuit(acts, lm, steps, **opts), fmt="pickle", label="somp"
    )
    return pursuit


# ----------------------------------------------------------------------------------------------
# outputs


def model_notes(lm: LoadedModel) -> list[str]:
    return [str(n) for n in lm.provenance.get("notes") or []]


def atlas_csv_table(atlas: HeadAtlas, lm: LoadedModel) -> pd.DataFrame:
    """atlas.csv: the atlas table with the model and its notes (quantised, RANDOM-INITIALISED) on
    every row, so the file says what it describes wherever it is copied."""
    table = atlas.table.copy()
    table.insert(0, "model", lm.name)
    table["model_notes"] = "; ".join(model_notes(lm))
    return table


def layer_profile(atlas: HeadAtlas) -> pd.DataFrame:
    """concepts x layers: the sum of each concept's scores over the heads of each layer."""
    layers = atlas.pursuit.layers
    per_layer = atlas.scores.reshape(len(atlas.concepts), len(layers), atlas.pursuit.n_heads).sum(dim=2)
    m = pd.DataFrame(per_layer.numpy(), index=atlas.concepts, columns=layers)
    m.index.name = "concept"
    m.columns.name = "layer"
    return m


def _fmt(v: float, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _token_gains(atlas: HeadAtlas, row: int, tokenizer: Any, n: int) -> str:
    idx = atlas.pursuit.indices[row, :n].tolist()
    gains = atlas.pursuit.gains[row, :n].tolist()
    return ", ".join(f"{format_tokens(tokenizer, [i])} {g:.3f}" for i, g in zip(idx, gains) if i >= 0)


def _share_line(atlas: HeadAtlas, c_i: int) -> str:
    """How many heads have a share of the concept, against random token sets of its size."""
    n_share = int(atlas.heads_with_share[c_i])
    n_beyond = int(atlas.beyond_random[c_i].sum())
    text = f"{n_share} heads have a share of it, {n_beyond} of them beyond every random token set"
    draws = atlas.random_heads_with_share[c_i]
    if draws.numel():
        text += (
            f"; a random token set of the same size has a share in {float(draws.float().mean()):.1f} heads on "
            f"average (at most {int(draws.max())}, {draws.numel()} sets)"
        )
    return text + "."


def table_heads(atlas: HeadAtlas, n: int) -> dict[str, list[tuple[int, int]]]:
    """{concept: its n best heads} (the rows of atlas.md)."""
    return {c: atlas.top_heads(c, n) for c in atlas.concepts}


def atlas_markdown(
    atlas: HeadAtlas,
    lm: LoadedModel,
    *,
    lens: Mapping[tuple[int, int], list[int]],
    shown: Mapping[str, list[tuple[int, int]]],
    overlap: pd.DataFrame,
    top_k: int,
    n_tokens: int,
    rows_info: str,
) -> str:
    """atlas.md: per concept its best heads with their SOMP tokens (the paper's Table 1) and their
    logit-lens tokens (Table 6) side by side; the specialists; the overlap matrix."""
    tok = lm.tokenizer
    heads = atlas.pursuit.heads
    row_of = {h: i for i, h in enumerate(heads)}
    beyond = atlas.beyond_random
    meta = atlas.meta
    lines = [f"# Head atlas: {lm.name}", ""]
    for note in model_notes(lm):
        lines.append(f"> **{note}**")
    if model_notes(lm):
        lines.append("")
    lines += [
        rows_info,
        "",
        f"One full-vocabulary SOMP per head ({meta['steps']} steps; {meta['somp_runs']} SOMP runs for "
        f"{len(atlas.concepts)} concepts and {meta['n_draws']} random token sets per concept). A concept's score: the "
        "explained-variance gain of the steps whose token is one of the concept's (concept_share). Beyond random: "
        f"the score is > 0 and above all {meta['n_draws']} random token sets of the concept's size (pool "
        f"`{meta['pool']}`: as many tokens of each form as the concept has; {meta['pool_size']} tokens; never the "
        f"concept's own; seed {meta['seed']}) for that head.",
        "",
        "## Top heads per concept",
        "",
    ]
    for c_i, concept in enumerate(atlas.concepts):
        lines += [f"### {concept} ({meta['concept_sizes'][concept]} tokens)", "", _share_line(atlas, c_i), ""]
        if not shown[concept]:
            lines += ["No head selected one of its tokens.", ""]
            continue
        lines += [
            "| head | score | random max | beyond random | specialisation | SOMP tokens (gain) | logit lens (most frequent top-5) |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in shown[concept]:
            r = row_of[h]
            rand = atlas.random_scores[c_i, :, r]
            rand_max = _fmt(float(rand.max())) if rand.numel() else ""
            lines.append(
                f"| L{h[0]}.H{h[1]} | {_fmt(float(atlas.scores[c_i, r]))} | {rand_max} | "
                f"{'yes' if bool(beyond[c_i, r]) else 'no'} | {_fmt(float(atlas.index[r]), 2)} | "
                f"{_md_cell(_token_gains(atlas, r, tok, n_tokens))} | {_md_cell(format_tokens(tok, lens.get(h, [])))} |"
            )
        lines.append("")
    spec = atlas.table[atlas.table["specialist"] != ""]
    lines += [
        "## Specialists",
        "",
        "Specialisation index of a head: its largest concept score over the score of the union of the concepts' "
        "tokens (for disjoint concepts: over the sum of its concept scores); undefined for a head none of whose "
        f"SOMP tokens is a concept token ({len(heads) - len(spec)} of {len(heads)} heads).",
        "",
        "| concept | heads it leads | of which index >= 0.9 | of which beyond random |",
        "|---|---|---|---|",
    ]
    for c_i, concept in enumerate(atlas.concepts):
        lead = atlas.specialist == c_i
        strong = lead & (atlas.index >= 0.9)
        lines.append(f"| {concept} | {int(lead.sum())} | {int(strong.sum())} | {int((strong & beyond[c_i]).sum())} |")
    lines += ["", f"## Overlap: Jaccard of the top-{top_k} head sets", ""]
    lines.append("| | " + " | ".join(overlap.columns) + " |")
    lines.append("|---" * (len(overlap.columns) + 1) + "|")
    for name, row in overlap.iterrows():
        lines.append(f"| {name} | " + " | ".join(_fmt(float(v), 2) for v in row) + " |")
    lines.append("")
    return "\n".join(lines)


def write_plots(
    run_dir: Path, atlas: HeadAtlas, lm: LoadedModel, overlap: pd.DataFrame, profile: pd.DataFrame, top_k: int
) -> dict[str, Path]:
    """The heat maps: layers x heads per concept, concepts x layers, the overlap matrix."""
    from headpursuit.app import plots  # matplotlib only when plots are made

    notes = "; ".join(model_notes(lm))
    suffix = f"\n{notes}" if notes else ""
    out: dict[str, Path] = {}
    L, H = lm.layout.n_layers, lm.layout.n_heads
    for c_i, concept in enumerate(atlas.concepts):
        table = atlas.table[["layer", "head"]].assign(score=atlas.scores[c_i].numpy())
        out[f"atlas_{concept}"] = plots.score_heatmap(
            table,
            L,
            H,
            run_dir / CONCEPT_PNG.format(concept),
            title=f"{lm.name} | {concept}: concept_share score from the shared SOMP{suffix}",
        )
    out["atlas_layers"] = plots.concept_layer_heatmap(
        profile, run_dir / LAYERS_PNG, title=f"{lm.name}: where each concept is written{suffix}"
    )
    out["overlap"] = plots.matrix_heatmap(
        overlap,
        run_dir / OVERLAP_PNG,
        title=f"{lm.name}: Jaccard of the top-{top_k} head sets{suffix}",
        label="Jaccard",
        vmax=1.0,
    )
    return out


def write_outputs(
    run_dir: Path,
    atlas: HeadAtlas,
    lm: LoadedModel,
    acts: HeadActivations,
    atlas_cfg: Mapping[str, Any],
    rows_info: str,
    *,
    plots: bool,
    timer: Timer | None = None,
) -> tuple[dict[str, Path], pd.DataFrame, pd.DataFrame, dict[str, Path]]:
    """Every file of an atlas in `run_dir` (atlas.csv, atlas.md with the logit-lens description of
    its heads, overlap.csv, atlas_layers.csv, and with `plots` the heat maps). Returns (files by
    name, the overlap matrix, the concepts x layers profile, the images by name)."""
    timer = timer or Timer()
    top_k = int(atlas_cfg["top_k"])
    with timer("logit_lens"):
        shown = table_heads(atlas, int(atlas_cfg["table_heads"]))
        lens = logit_lens_tokens(
            acts,
            lm,
            [h for hs in shown.values() for h in hs],
            per_row=int(atlas_cfg["lens_top"]),
            n_most=int(atlas_cfg["lens_top"]),
            fold_norm_gain=bool(atlas_cfg["somp"]["fold_norm_gain"]),
            normalize_atoms=bool(atlas_cfg["somp"]["normalize_atoms"]),
        )
    with timer("outputs"):
        overlap = atlas.overlap(top_k)
        profile = layer_profile(atlas)
        files = {
            "atlas_csv": write_csv_atomic(atlas_csv_table(atlas, lm), run_dir / ATLAS_CSV),
            "overlap_csv": write_csv_atomic(overlap.reset_index(), run_dir / OVERLAP_CSV),
            "layers_csv": write_csv_atomic(profile.reset_index(), run_dir / LAYERS_CSV),
        }
        md = atlas_markdown(
            atlas,
            lm,
            lens=lens,
            shown=shown,
            overlap=overlap,
            top_k=top_k,
            n_tokens=int(atlas_cfg["top_tokens"]),
            rows_info=rows_info,
        )
        files["atlas_md"] = write_text_atomic(run_dir / ATLAS_MD, md)
    images: dict[str, Path] = {}
    if plots:
        with timer("plots"):
            images = write_plots(run_dir, atlas, lm, overlap, profile, top_k)
    return {**files, **images}, overlap, profile, images


def _draw_stats(counts: Any) -> dict[str, float] | None:
    if counts.numel() == 0:
        return None
    return {"mean": float(counts.float().mean()), "max": int(counts.max()), "min": int(counts.min())}


def concept_summary(atlas: HeadAtlas, k: int) -> dict[str, dict[str, Any]]:
    """results.json `concepts`: per concept its token count, top-k heads, heads beyond random."""
    beyond = atlas.beyond_random
    heads = atlas.pursuit.heads
    out = {}
    for c_i, concept in enumerate(atlas.concepts):
        out[concept] = {
            "n_tokens": atlas.meta["concept_sizes"][concept],
            "top_heads": [list(h) for h in atlas.top_heads(concept, k)],
            "n_heads_with_share": int(atlas.heads_with_share[c_i]),
            "random_heads_with_share": _draw_stats(atlas.random_heads_with_share[c_i]),
            "beyond_random": [list(heads[i]) for i in beyond[c_i].nonzero().flatten().tolist()],
            "n_specialist": int((atlas.specialist == c_i).sum()),
        }
    return out


# ----------------------------------------------------------------------------------------------
# the job


def execute(cfg: DictConfig, run_dir: Path, res: dict, timer: Timer, fail_fast: FailFastFlag | None = None) -> dict:
    hc = HydraConfig.get()
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    res.update(
        status="running", kind="atlas", config_hash=config_hash(config), config=config, run=run_info(hc, run_dir)
    )
    validate_atlas(config)
    if cfg.resume and (done := completed_results(run_dir, res["config_hash"])):
        log.info("%s: complete with the same config; skipping (resume=false to rerun)", run_dir)
        return done
    if fail_fast is not None and fail_fast.tripped():
        raise RuntimeError(
            f"skipped: an earlier job of this launch failed and fail_fast=true ({fail_fast.path}); "
            "rerun the sweep after the fix: it runs what is missing"
        )
    with timer("preflight"):
        preflight_atlas(config)
    heartbeat = Heartbeat(run_dir, float(cfg.get("heartbeat_s", 30)), lambda: timer.stage)
    res["heartbeat"] = heartbeat.info()
    write_json_atomic(run_dir / RESULTS_FILE, res)
    with heartbeat:
        return run_stages(cfg, config, run_dir, res, timer, hc)


def run_stages(cfg: DictConfig, config: dict[str, Any], run_dir: Path, res: dict, timer: Timer, hc: Any) -> dict:
    atlas_cfg, seed, cache = config["atlas"], int(cfg.seed), RunCache(cfg.cache_dir)
    random.seed(seed)
    if cfg.get("deterministic"):
        set_deterministic(True)
    tracker = Tracker(config.get("logger"), run_dir)
    tracker.start(
        config,
        group=(config.get("logger") or {}).get("group")
        or (f"atlas-{Path(hc.sweep.dir).name}" if hc.mode == RunMode.MULTIRUN else None),
        name=hc.job.override_dirname or "atlas",
        job_type="atlas",
    )
    try:
        with timer("load_model"):
            lm, loaded_before = load_model_memo(config["model"], cfg.device, cfg.dtype)
        warn_model_notes(lm)
        which = prompt_set(atlas_cfg, lm.processor is not None)
        sources = prompt_sources(atlas_cfg, which)
        model_id = model_identity(config["model"], lm)
        with timer("answers"):
            samples, counts = atlas_samples(cache, lm, sources, model_id)
        with timer("capture"):
            acts, acts_key = capture_cached(cache, lm, samples, atlas_cfg["positions"], [], cfg.capture_batch_size)
        with timer("somp"):
            pursuit = pursuit_cached(cache, acts, acts_key, lm, atlas_cfg["somp"])
        with timer("concepts"):
            concepts = load_atlas_concepts(atlas_cfg["concepts"], lm.tokenizer)
            atlas = head_atlas(
                pursuit,
                concepts,
                tokenizer=lm.tokenizer,
                n_draws=int(atlas_cfg["random_draws"]),
                seed=seed,
                pool=atlas_cfg["control_pool"],
                top_tokens=int(atlas_cfg["top_tokens"]),
            )
        top_k = int(atlas_cfg["top_k"])
        rows_info = (
            f"Rows: `positions={atlas_cfg['positions']}`, {acts.n_rows} activation rows from {len(samples)} prompts "
            f"({', '.join(f'{n}: {c}' for n, c in counts.items())}; {atlas_cfg['n_per_group']} per group and "
            + (
                "source; the rows read the prompts only)."
                if atlas_cfg["positions"] in PROMPT_ONLY_POSITIONS
                else "source, with the model's own greedy answers)."
            )
        )
        files, overlap, profile, images = write_outputs(
            run_dir, atlas, lm, acts, atlas_cfg, rows_info, plots=bool(cfg.plots), timer=timer
        )
        res.update(
            {
                "model": lm.name,
                "concepts": concept_summary(atlas, top_k),
                "top_k": top_k,
                "overlap": {
                    a: {b: _json_float(v) for b, v in row.items()} for a, row in overlap.to_dict("index").items()
                },
                "somp_runs": atlas.meta["somp_runs"],
                "control": {k: atlas.meta[k] for k in ("n_draws", "pool", "pool_size", "seed")},
                "files": {k: Path(v).name for k, v in files.items()},
                "provenance": {
                    "model": {
                        **lm.provenance,
                        "layout": dataclasses.asdict(lm.layout),
                        "loaded_in_process": loaded_before,
                    },
                    "prompts": {"set": which, "sources": counts, "n_per_group": atlas_cfg["n_per_group"]},
                    "environment": environment(),
                    "seeds": {"seed": seed},
                    "code_fingerprint": code_fingerprint(),
                    "n_prompts": len(samples),
                    "n_activation_rows": int(acts.n_rows),
                    "positions": atlas_cfg["positions"],
                    "somp": pursuit.meta,
                    "cache": {"dir": str(cache.root) if cache.enabled else None, "hits": dict(cache.hits)},
                    "timings": dict(timer.seconds),
                },
                "status": "complete",
            }
        )
        track(tracker, atlas, overlap, profile, images, res)
        tracker.finish(0)
    except BaseException:
        tracker.finish(1)
        res["tracking"] = tracker.status
        raise
    res["tracking"] = tracker.status
    write_json_atomic(run_dir / RESULTS_FILE, res)
    clear_error(run_dir)
    log.info(
        "%s: atlas of %s: %s",
        run_dir,
        lm.name,
        {c: len(v["beyond_random"]) for c, v in res["concepts"].items()},
    )
    return res


def _json_float(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def track(
    tracker: Tracker,
    atlas: HeadAtlas,
    overlap: pd.DataFrame,
    profile: pd.DataFrame,
    images: Mapping[str, Path],
    res: Mapping[str, Any],
) -> None:
    """Mirror the atlas to W&B: the tables, the heat maps and a summary."""
    tracker.log_table("atlas", atlas.table)
    tracker.log_table("overlap", overlap.reset_index())
    tracker.log_table("atlas_layers", profile.reset_index().rename(columns=str))
    for name, path in images.items():
        tracker.log_image(name, path)
    tracker.log_summary(
        {
            "somp_runs": res["somp_runs"],
            **{f"beyond_random/{c}": len(v["beyond_random"]) for c, v in res["concepts"].items()},
            **{f"specialists/{c}": v["n_specialist"] for c, v in res["concepts"].items()},
        }
    )


@hydra.main(version_base="1.3", config_path=find_config_dir(), config_name="atlas")
def main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    route_library_logs()
    run_dir = Path(hc.runtime.output_dir)
    try:
        with RunDirLock(run_dir):
            return run_job(cfg, hc, run_dir)
    except RunDirBusy as busy:
        print(f"headpursuit-atlas: {busy}", file=sys.stderr)
        raise SystemExit(EXIT_BUSY) from None
    except OSError as exc:
        if disk_full(exc) is None:
            raise
        report_disk_full(run_dir, cfg, exc, "start")
        raise SystemExit(EXIT_DISK_FULL) from None


def run_job(cfg: DictConfig, hc: Any, run_dir: Path) -> dict | None:
    """One atlas in its (locked) run directory; failures and signals recorded as a steer run's."""
    multirun = hc.mode == RunMode.MULTIRUN
    fail_fast = FailFastFlag(hc.sweep.dir) if multirun and cfg.get("fail_fast") else None
    res: dict = {"status": "running", "kind": "atlas"}
    timer = Timer(announce=lambda name: log.info("%s: stage %s", run_dir.name, name))
    try:
        with signals_raise(lambda: timer.stage):
            return execute(cfg, run_dir, res, timer, fail_fast)
    except JobInterrupted as exc:
        record_interrupt(run_dir, exc, res)
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        stage = timer.stage_of_failure()
        full = record_failure(run_dir, exc, res, stage=stage)
        if (full := disk_full(exc) or full) is not None:
            report_disk_full(run_dir, cfg, full, stage)
            raise SystemExit(EXIT_DISK_FULL) from None
        log.error("%s failed: %s: %s (see %s/error.txt)", run_dir, type(exc).__name__, exc, run_dir)
        if fail_fast is not None:
            fail_fast.trip()
        config_error = isinstance(exc, ConfigError) and not isinstance(exc, PreflightError)
        if not multirun or fail_fast is not None or config_error:
            raise
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    main()
