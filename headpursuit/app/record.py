"""The results.json record of a run: what was edited, the three evaluations and their provenance.

    res.update(record(lm=lm, task=task, config=config, k=k, heads=heads, scores=scores, ...))

`summarize_seeds` reduces the random-head controls to mean / std / median / q25 / q75 per metric;
`normalized_metrics` divides every metric by the unedited model's (the paper reports only such
ratios): `normalized.edited.<group>.<metric>` and `normalized.random.<stat>.<group>.<metric>`.
`run_warnings` lists what makes a result suspect (results.json `warnings`; the run logs each):
an evaluation whose outputs are more than half empty (`EMPTY_WARNING_FRACTION`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.app.cache import RunCache, code_fingerprint
from headpursuit.app.stages import transfer_info
from headpursuit.app.tracking import environment
from headpursuit.heads import ControlDraw, Head, head_records
from headpursuit.models.batching import CPU_BATCH_SIZES, chosen_batch_sizes

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample, HeadActivations
    from headpursuit.models import LoadedModel
    from headpursuit.ranking import HeadScores
    from headpursuit.tasks import Task

__all__ = [
    "record",
    "batch_size_provenance",
    "summarize_seeds",
    "relaxation",
    "relaxed_layers",
    "seed_stats",
    "percentile",
    "normalize_to_baseline",
    "normalized_metrics",
    "metric_groups",
    "run_warnings",
    "CACHE_FLAGS",
    "SEED_STATS",
    "STD_NOTE",
    "EMPTY_WARNING_FRACTION",
]

#: provenance.cache flag -> the RunCache label of the stage it reports
CACHE_FLAGS = {
    "ranking_samples_from_cache": "samples",
    "activations_from_cache": "acts",
    "scores_from_cache": "scores",
    "baseline_from_cache": "baseline",
    "edited_from_cache": "edited",
}


def metric_groups(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The per-group metric dicts of an evaluation result (drops n, examples, ...)."""
    return {
        g: dict(v)
        for g, v in result.items()
        if isinstance(v, Mapping)
        and g not in ("n", "examples", "fluency_info", "relaxed")
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())
    }


#: the statistics of the random-head controls, per group and metric
SEED_STATS = ("mean", "std", "median", "q25", "q75")
STD_NOTE = "std is null: the sample standard deviation of one seed is undefined (use two or more random_seeds)"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) by linear interpolation between order statistics: position
    q * (n - 1) in the sorted values. This is numpy's default (`method="linear"`) and, for the
    quartiles, `statistics.quantiles(values, n=4, method="inclusive")`; one value is its own
    quantile."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _stats(vals: Sequence[float]) -> dict[str, float]:
    if not vals:
        return dict.fromkeys(SEED_STATS, float("nan"))
    mean = sum(vals) / len(vals)
    # The sample std of one value is undefined (n - 1 = 0): NaN, written as null, not 0.
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
    return {
        "mean": mean,
        "std": std,
        "median": statistics.median(vals),
        "q25": percentile(vals, 0.25),
        "q75": percentile(vals, 0.75),
    }


def seed_stats(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{stat: {group: {metric: value}}} over the seeds, for every stat of SEED_STATS.

    NaN values (e.g. an undefined metric) are left out of a metric's statistics; a metric NaN for
    every seed stays NaN. The std is the sample standard deviation (n-1), NaN (undefined) when
    fewer than two seeds have a value.
    """
    groups: dict[str, set[str]] = {}
    for r in per_seed:
        for g, m in metric_groups(r).items():
            groups.setdefault(g, set()).update(m)
    out: dict[str, dict[str, dict[str, float]]] = {stat: {} for stat in SEED_STATS}
    for g, metrics in groups.items():
        for stat in SEED_STATS:
            out[stat][g] = {}
        for name in sorted(metrics):
            vals = [float(r[g][name]) for r in per_seed if g in r and name in r[g] and math.isfinite(float(r[g][name]))]
            for stat, v in _stats(vals).items():
                out[stat][g][name] = v
    return out


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """{group: {metric: mean}, "std": {..}, "median": {..}, "q25": {..}, "q75": {..}, "n_seeds": n}.

    The median and the quartiles (see `percentile`) are reported next to the mean because on small
    models a single draw that hits a load-bearing head (layer 0/1) can break every answer and drag
    the mean down on its own; the paper reports median and interquartile range.

    NaN values (e.g. an undefined metric) are left out of a metric's mean/std; a metric NaN for
    every seed stays NaN. The std is the sample standard deviation (n-1): with one seed it is
    undefined, NaN (null in results.json), and `std_note` says so.
    """
    stats = seed_stats(per_seed)
    out: dict[str, Any] = {"std": stats["std"], "median": stats["median"], "n_seeds": len(per_seed)}
    if len(per_seed) < 2:
        out["std_note"] = STD_NOTE
    out.update(stats["mean"])
    out["q25"], out["q75"] = stats["q25"], stats["q75"]
    return out


def normalize_to_baseline(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{group: {metric: result / baseline}} for the metrics of `result` that the baseline has.

    A zero or non-finite baseline (or a non-finite result) gives NaN: the ratio is undefined there.
    """
    base = metric_groups(baseline)
    out: dict[str, dict[str, float]] = {}
    for g, metrics in metric_groups(result).items():
        out[g] = {}
        for name, v in metrics.items():
            b, x = float(base.get(g, {}).get(name, float("nan"))), float(v)
            out[g][name] = x / b if math.isfinite(b) and b != 0.0 and math.isfinite(x) else float("nan")
    return out


def normalized_metrics(baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence[Mapping]) -> dict:
    """results.json `normalized`: every metric over the unedited model's (the paper's reporting).

    {"edited": {group: {metric: edited / baseline}},
     "random": {stat: {group: {metric}}} | None, with stat in SEED_STATS and "n_seeds"}

    Each random seed is normalised by the baseline first, then summarised.
    """
    random = None
    if per_seed:
        random = {
            **seed_stats([normalize_to_baseline(r, baseline) for r in per_seed]),
            "n_seeds": len(per_seed),
        }
        if len(per_seed) < 2:
            random["std_note"] = STD_NOTE
    return {"edited": normalize_to_baseline(edited, baseline), "random": random}


#: above this share of empty outputs an evaluation is flagged (`run_warnings`)
EMPTY_WARNING_FRACTION = 0.5


def _heads_text(heads: Sequence[Sequence[int]], shown: int = 8) -> str:
    """`[[3, 1], [5, 2]]` -> "3.1 5.2" (the first `shown`, then how many more)."""
    text = " ".join(f"{a}.{b}" for a, b in list(heads)[:shown])
    return text + (f" (+{len(heads) - shown} more)" if len(heads) > shown else "")


def run_warnings(
    heads: Sequence[Head], alpha: float, baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence
) -> list[str]:
    """results.json `warnings`: each evaluation (unedited, edited, every random control) whose
    outputs are more than `EMPTY_WARNING_FRACTION` empty (`empty_fraction`, counted when the outputs
    were scored), naming the edit and the fraction: its metrics then describe a silenced model."""
    evaluations = [
        ("the unedited model", baseline),
        (f"the edited heads {_heads_text(heads)} x alpha={alpha:g}", edited),
    ]
    evaluations += [
        (f"random control seed {r.get('seed')} (heads {_heads_text(r.get('heads') or [])} x alpha={alpha:g})", r)
        for r in per_seed
    ]
    out = []
    for what, result in evaluations:
        fraction = result.get("empty_fraction")
        if fraction is not None and fraction > EMPTY_WARNING_FRACTION:
            out.append(
                f"{what}: {result.get('n_empty')} of {result.get('n_outputs')} outputs ({fraction:.0%}) are empty; "
                "its metrics describe a model that says nothing"
            )
    return out


def relaxation(draw: ControlDraw) -> dict[str, dict[str, Any]]:
    """results.json `random.per_seed[i].relaxed`: {"<short layer>": {"short": n heads, "from":
    {"<layer>": n heads}}}, the heads a layer_counts set borrowed from the nearest layers for a layer
    that could not supply its count (`heads.layer_count_draw`); {} when it borrowed none."""
    return {
        str(layer): {"short": sum(src.values()), "from": {str(s): n for s, n in src.items()}}
        for layer, src in draw.borrowed.items()
    }


def relaxed_layers(draws: Sequence[ControlDraw]) -> dict[str, dict[str, Any]]:
    """results.json `random.relaxed_layers`, over a run's random sets: {"<short layer>": {"short":
    heads a set lacked there (the same for every set: it depends on the edited heads alone),
    "n_sets": sets that borrowed for it, "from": {"<layer>": heads borrowed from it, all sets}}};
    {} when no set borrowed."""
    out: dict[int, dict[str, Any]] = {}
    for draw in draws:
        for layer, src in draw.borrowed.items():
            entry = out.setdefault(layer, {"short": 0, "n_sets": 0, "from": {}})
            entry["short"] = max(entry["short"], sum(src.values()))
            entry["n_sets"] += 1
            for s, n in src.items():
                entry["from"][s] = entry["from"].get(s, 0) + n
    return {
        str(layer): {**e, "from": {str(s): n for s, n in sorted(e["from"].items())}} for layer, e in sorted(out.items())
    }


def cache_provenance(cache: RunCache) -> dict:
    """Where the cache lives and, per stage, whether it was read from it (from `cache.hits`)."""
    return {
        "dir": str(cache.root) if cache.enabled else None,
        **{flag: cache.hit(label) for flag, label in CACHE_FLAGS.items()},
        "random_from_cache": list(cache.hits.get("random", [])),
    }


def batch_size_provenance(lm: LoadedModel, task: Task, config: Mapping[str, Any], *, n_batched_edits: int = 0) -> dict:
    """results.json `provenance.batch_sizes`: the configured sizes (task generation, capture), the
    rows per batch of the batched-edits pass (`n_batched_edits` edits together; None without one),
    and what "auto" chose: the probed choices on CUDA (`chosen_batch_sizes`), the fixed CPU defaults
    elsewhere."""
    task_size = task.batch_size
    edit_rows: int | str | None = None
    if n_batched_edits:
        edit_rows = "auto" if task_size == "auto" else n_batched_edits * int(task_size)
    out: dict[str, Any] = {
        "task": task_size,
        "capture": config.get("capture_batch_size"),
        "batched_edits": n_batched_edits,
        "edit_rows": edit_rows,
        "auto_chosen": [dataclasses.asdict(c) for c in chosen_batch_sizes(lm)],
    }
    if "auto" in (task_size, config.get("capture_batch_size")) and lm.device.type != "cuda":
        out["auto_cpu_defaults"] = dict(CPU_BATCH_SIZES)
    return out


def record(
    *,
    lm: LoadedModel,
    task: Task,
    config: Mapping[str, Any],
    k: int,
    heads: Sequence[Head],
    scores: HeadScores,
    baseline: dict,
    edited: dict,
    per_seed: list[dict],
    samples: Sequence[CaptureSample],
    random_sets: Sequence[ControlDraw],
    acts: HeadActivations,
    cache: RunCache,
    timings: Mapping[str, float],
    model_loaded_in_process: bool,
    batch_sizes: Mapping[str, Any] | None = None,
    batched_edits: bool = False,
    rank_task: Task | None = None,
) -> dict:
    """The fields a complete run adds to results.json (after status, config_hash, config, run).

    `rank_task`: the task the heads were ranked on when it is not `task` (a transfer run,
    config `rank_task`); results then say ``transfer: {source, target}`` (`transfer_info`) and
    carry its provenance as ``provenance.rank_task``; `dataset` is the evaluated task's dataset
    (classification: task.dataset) or null. `random_sets`: the draws behind `per_seed` (one per
    seed): each seed's `relaxed` and the run's `random.relaxed_layers` say what they borrowed."""
    iv, seed = config["intervention"], int(config["seed"])
    layout = lm.layout
    random = None
    if per_seed:
        draws = {draw.seed: draw for draw in random_sets}  # a seed's draw is fixed by the seed
        random = {
            **summarize_seeds(per_seed),
            "seeds": list(iv["random_seeds"]),
            "pool": iv.get("random_pool", "all"),
            "relaxed_layers": relaxed_layers(random_sets),
            "per_seed": [{**r, "relaxed": relaxation(draws[r["seed"]])} for r in per_seed],
        }
    return {
        "model": lm.name,
        "task": task.name,
        "dataset": getattr(task, "dataset", None),
        "transfer": transfer_info(config) if rank_task is not None else None,
        "ranking": config["ranking"]["method"],
        "k": k,
        "k_frac": iv.get("k_frac"),
        "alpha": float(iv["alpha"]),
        "heads_mode": iv.get("heads", "ranked"),
        "n_heads_total": layout.n_layers * layout.n_heads,
        "heads": head_records(heads, scores.table),
        "baseline": baseline,
        "edited": edited,
        "random": random,
        "normalized": normalized_metrics(baseline, edited, per_seed),
        "warnings": run_warnings(heads, float(iv["alpha"]), baseline, edited, per_seed),
        "provenance": {
            "model": {
                **lm.provenance,
                "layout": dataclasses.asdict(layout),
                "loaded_in_process": model_loaded_in_process,
            },
            "task": task.provenance(),
            "rank_task": rank_task.provenance() if rank_task is not None else None,
            "environment": environment(),
            "seeds": {"seed": seed, "random_heads": list(iv["random_seeds"])},
            "code_fingerprint": code_fingerprint(),
            "n_ranking_samples": len(samples),
            "n_activation_rows": int(acts.n_rows),
            "cache": cache_provenance(cache),
            "timings": dict(timings),
            "batch_sizes": dict(batch_sizes or {}),
            "batched_edits": bool(batched_edits),
        },
        "status": "complete",
    }
