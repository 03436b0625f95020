"""The results.json record of a run: what was edited, the three evaluations and their provenance.

    res.update(record(lm=lm, task=task, config=config, k=k, heads=heads, scores=scores, ...))

`summarize_seeds` reduces the random-head controls to mean / std / median per metric.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.app.cache import RunCache, code_fingerprint
from headpursuit.app.tracking import environment
from headpursuit.heads import Head, head_records

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample, HeadActivations
    from headpursuit.models import LoadedModel
    from headpursuit.ranking import HeadScores
    from headpursuit.tasks import Task

__all__ = ["record", "summarize_seeds", "metric_groups", "CACHE_FLAGS"]

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
        and g not in ("n", "examples", "fluency_info")
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())
    }


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """{group: {metric: mean}, "std": {..: sample std}, "median": {..: median}, "n_seeds": n}.

    The median is reported next to the mean because on small models a single draw that hits a
    load-bearing head (layer 0/1) can break every answer and drag the mean down on its own.

    NaN values (e.g. an undefined metric) are left out of a metric's mean/std; a metric NaN for
    every seed stays NaN. The std is the sample standard deviation (n-1), 0 for one seed.
    """
    out: dict[str, Any] = {"std": {}, "median": {}, "n_seeds": len(per_seed)}
    groups: dict[str, set[str]] = {}
    for r in per_seed:
        for g, m in metric_groups(r).items():
            groups.setdefault(g, set()).update(m)
    for g, metrics in groups.items():
        out[g], out["std"][g], out["median"][g] = {}, {}, {}
        for name in sorted(metrics):
            vals = [float(r[g][name]) for r in per_seed if g in r and name in r[g] and math.isfinite(float(r[g][name]))]
            if not vals:
                out[g][name] = out["std"][g][name] = out["median"][g][name] = float("nan")
                continue
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            out[g][name], out["std"][g][name] = mean, math.sqrt(var)
            out["median"][g][name] = statistics.median(vals)
    return out


def cache_provenance(cache: RunCache) -> dict:
    """Where the cache lives and, per stage, whether it was read from it (from `cache.hits`)."""
    return {
        "dir": str(cache.root) if cache.enabled else None,
        **{flag: cache.hit(label) for flag, label in CACHE_FLAGS.items()},
        "random_from_cache": list(cache.hits.get("random", [])),
    }


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
    acts: HeadActivations,
    cache: RunCache,
    timings: Mapping[str, float],
    model_loaded_in_process: bool,
) -> dict:
    """The fields a complete run adds to results.json (after status, config_hash, config, run)."""
    iv, seed = config["intervention"], int(config["seed"])
    layout = lm.layout
    random = None
    if per_seed:
        random = {
            **summarize_seeds(per_seed),
            "seeds": list(iv["random_seeds"]),
            "pool": iv.get("random_pool", "all"),
            "per_seed": per_seed,
        }
    return {
        "model": lm.name,
        "task": task.name,
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
        "provenance": {
            "model": {
                **lm.provenance,
                "layout": dataclasses.asdict(layout),
                "loaded_in_process": model_loaded_in_process,
            },
            "task": task.provenance(),
            "environment": environment(),
            "seeds": {"seed": seed, "random_heads": list(iv["random_seeds"])},
            "code_fingerprint": code_fingerprint(),
            "n_ranking_samples": len(samples),
            "n_activation_rows": int(acts.n_rows),
            "cache": cache_provenance(cache),
            "timings": dict(timings),
        },
        "status": "complete",
    }
