"""What a run measured, built from the stages' outputs: the `Outcome` of its results record
(`app.results`): what was edited, the three evaluations, the summaries and their provenance.

    rec.outcome = record(lm=lm, task=task, config=config, k=k, heads=heads, scores=scores, ...)

`seed_summary` reduces the random-head controls to mean / std / median / q25 / q75 per metric;
`normalized` divides every metric by the unedited model's (the paper reports only such ratios):
`normalized.edited.<group>.<metric>` and `normalized.random.<stat>.<group>.<metric>`.
`run_warnings` lists what makes a result suspect (results.json `warnings`; the run logs each):
an evaluation whose outputs are more than half empty (`EMPTY_WARNING_FRACTION`).
`summarize_seeds`, `normalized_metrics`, `relaxation` and `relaxed_layers` give the same parts as
results.json writes them (NaN where undefined).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.app.cache import RunCache, code_fingerprint
from headpursuit.app.environment import environment
from headpursuit.app.files import to_jsonable
from headpursuit.app.results import (
    Borrowed,
    CacheProvenance,
    Edit,
    EditedHead,
    Evaluation,
    Intervals,
    ModelProvenance,
    Normalized,
    Outcome,
    Provenance,
    RandomControl,
    RandomControls,
    SeedStats,
    Significance,
    Specificity,
    Transfer,
    is_metric_group,
)
from headpursuit.app.stages import transfer_info
from headpursuit.heads import ControlDraw, Head, head_records, possible_control_sets
from headpursuit.models.batching import CPU_BATCH_SIZES, chosen_batch_sizes
from headpursuit.stats import IntervalConfig, edit_direction, empirical_p, paired_bootstrap, specificity
from headpursuit.tasks.base import ITEMS_KEY

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample, HeadActivations
    from headpursuit.models import LoadedModel
    from headpursuit.ranking import HeadScores
    from headpursuit.tasks import Task

__all__ = [
    "record",
    "batch_size_provenance",
    "cache_provenance",
    "evaluation",
    "seed_summary",
    "summarize_seeds",
    "relaxation_of",
    "relaxation",
    "relaxed_layers_of",
    "relaxed_layers",
    "seed_stats",
    "percentile",
    "normalize_to_baseline",
    "normalized",
    "normalized_metrics",
    "metric_groups",
    "run_warnings",
    "interval_config",
    "headline_lines",
    "evaluation_items",
    "intervals",
    "specificity_of",
    "significance_of",
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


#: keys of an evaluation result (or a random set's) that hold no metric group
NOT_METRIC_GROUPS = (*Evaluation.KEYS, *RandomControl.KEYS, "fluency_info")


def metric_groups(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The per-group metric dicts of an evaluation result (drops n, examples, ...)."""
    return {g: dict(v) for g, v in result.items() if is_metric_group(g, v, NOT_METRIC_GROUPS)}


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


def seed_summary(per_seed: Sequence[Mapping[str, Any]]) -> SeedStats:
    """Mean, std, median, q25 and q75 of every metric over the random sets (see `seed_stats`).

    The median and the quartiles (see `percentile`) are reported next to the mean because on small
    models a single draw that hits a load-bearing head (layer 0/1) can break every answer and drag
    the mean down on its own; the paper reports median and interquartile range. With one set the
    std is undefined, NaN (null in results.json), and `std_note` says so.
    """
    stats = seed_stats(per_seed)
    return SeedStats(
        **{stat: stats[stat] for stat in SEED_STATS},
        n_seeds=len(per_seed),
        std_note=STD_NOTE if len(per_seed) < 2 else None,
    )


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """`seed_summary` as results.json's `random` writes it: {group: {metric: mean}, "std": {..},
    "median": {..}, "q25": {..}, "q75": {..}, "n_seeds": n} (and `std_note` with one set)."""
    return seed_summary(per_seed).to_json(means_at_top=True)


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


def normalized(baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence[Mapping]) -> Normalized:
    """Every metric over the unedited model's (the paper's reporting): the edited heads', and the
    random sets' statistics (None without random sets). Each random set is normalised by the
    baseline first, then summarised."""
    random = seed_summary([normalize_to_baseline(r, baseline) for r in per_seed]) if per_seed else None
    return Normalized(edited=normalize_to_baseline(edited, baseline), random=random)


def normalized_metrics(baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence[Mapping]) -> dict:
    """`normalized` as results.json writes it:

    {"edited": {group: {metric: edited / baseline}},
     "random": {stat: {group: {metric}}} | None, with stat in SEED_STATS and "n_seeds"}
    """
    return normalized(baseline, edited, per_seed).to_json()


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


def relaxation_of(draw: ControlDraw) -> dict[int, Borrowed]:
    """What a layer_counts set borrowed from the nearest layers, by the short layer
    (`heads.layer_count_draw`); {} when it borrowed none."""
    return {layer: Borrowed(short=sum(src.values()), sources=dict(src)) for layer, src in draw.borrowed.items()}


def relaxed_layers_of(draws: Sequence[ControlDraw]) -> dict[int, Borrowed]:
    """Over a run's random sets, by short layer: the heads a set lacked there (the same for every
    set: it depends on the edited heads alone), the sets that borrowed for it (`n_sets`) and the
    heads borrowed from each layer, all sets together; {} when no set borrowed."""
    short: dict[int, int] = {}
    n_sets: dict[int, int] = {}
    sources: dict[int, dict[int, int]] = {}
    for draw in draws:
        for layer, src in draw.borrowed.items():
            short[layer] = max(short.get(layer, 0), sum(src.values()))
            n_sets[layer] = n_sets.get(layer, 0) + 1
            into = sources.setdefault(layer, {})
            for s, n in src.items():
                into[s] = into.get(s, 0) + n
    return {
        layer: Borrowed(short=short[layer], sources=dict(sorted(sources[layer].items())), n_sets=n_sets[layer])
        for layer in sorted(short)
    }


def relaxation(draw: ControlDraw) -> dict[str, dict[str, Any]]:
    """`relaxation_of` as results.json `random.per_seed[i].relaxed` writes it: {"<short layer>":
    {"short": n heads, "from": {"<layer>": n heads}}}."""
    return {str(layer): b.to_json() for layer, b in relaxation_of(draw).items()}


def relaxed_layers(draws: Sequence[ControlDraw]) -> dict[str, dict[str, Any]]:
    """`relaxed_layers_of` as results.json `random.relaxed_layers` writes it: {"<short layer>":
    {"short": .., "n_sets": .., "from": {"<layer>": ..}}}."""
    return {str(layer): b.to_json() for layer, b in relaxed_layers_of(draws).items()}


def interval_config(config: Mapping[str, Any]) -> IntervalConfig:
    """The run config's `intervals` node (its defaults where a config has none: built in code)."""
    return IntervalConfig(**dict(config.get("intervals") or {}))


def evaluation_items(result: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """An evaluation result's per-item metric values ({} when its task gives none)."""
    items = result.get(ITEMS_KEY) or {}
    return {str(g): {str(m): [float(x) for x in v] for m, v in ms.items()} for g, ms in items.items()}


def intervals(
    baseline: Mapping[str, Any],
    edited: Mapping[str, Any],
    per_seed: Sequence[Mapping[str, Any]],
    config: IntervalConfig,
) -> Intervals | None:
    """`intervals` (`headpursuit.stats.paired_bootstrap` over the evaluations' items): the baseline's,
    the edited heads' and each random set's; None without items or with ``n_resamples=0``."""
    base_items = evaluation_items(baseline)
    if not base_items or config.n_resamples == 0:
        return None
    boot = paired_bootstrap(base_items, [evaluation_items(edited), *(evaluation_items(r) for r in per_seed)], config)
    return Intervals(
        level=float(config.level),
        n_resamples=int(config.n_resamples),
        seed=int(config.seed),
        n_items=boot.n_items,
        baseline=boot.baseline,
        edited=boot.effects[0],
        random=[dataclasses.replace(e, seed=int(r["seed"])) for e, r in zip(boot.effects[1:], per_seed)],
    )


def _shared_metrics(result: Mapping[str, Any]) -> list[str]:
    """The metrics both the concept and the control group have (specificity needs both)."""
    groups = metric_groups(result)
    return sorted(set(groups.get("concept", {})) & set(groups.get("control", {})))


def specificity_of(
    baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]], headline: str | None
) -> Specificity | None:
    """`specificity` per metric (`headpursuit.stats.specificity`): the edited heads', and the random
    sets' median and quartiles; None when the groups share no metric (e.g. no control group)."""
    metrics = _shared_metrics(edited)
    if not metrics:
        return None
    base = metric_groups(baseline)
    random = {m: [specificity(base, metric_groups(r), m) for r in per_seed] for m in metrics}
    finite = {m: [v for v in vs if math.isfinite(v)] for m, vs in random.items()}
    return Specificity(
        metric=headline if headline in metrics else None,
        edited={m: specificity(base, metric_groups(edited), m) for m in metrics},
        random_median={m: statistics.median(v) if v else math.nan for m, v in finite.items()},
        random_q25={m: percentile(v, 0.25) for m, v in finite.items()},
        random_q75={m: percentile(v, 0.75) for m, v in finite.items()},
        random_n={m: len(v) for m, v in finite.items()},
    )


def significance_of(
    baseline: Mapping[str, Any], edited: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]], alpha: float
) -> Significance | None:
    """`significance`: every metric's rank and empirical p-value among the random sets
    (`headpursuit.stats.empirical_p`, in the edit's direction), and the specificity's (higher = more
    specific); None without random sets."""
    if not per_seed:
        return None
    direction = edit_direction(alpha)
    randoms = [metric_groups(r) for r in per_seed]
    rank: dict[str, dict[str, int | None]] = {}
    p: dict[str, dict[str, float]] = {}
    n_sets: dict[str, dict[str, int]] = {}
    for g, metrics in metric_groups(edited).items():
        rank[g], p[g], n_sets[g] = {}, {}, {}
        for m, value in metrics.items():
            values = [float(r.get(g, {}).get(m, math.nan)) for r in randoms]
            rank[g][m], p[g][m], n_sets[g][m] = empirical_p(float(value), values, direction)
    base, spec_rank, spec_p = metric_groups(baseline), {}, {}
    for m in _shared_metrics(edited):
        values = [specificity(base, r, m) for r in randoms]
        spec_rank[m], spec_p[m], _ = empirical_p(specificity(base, metric_groups(edited), m), values, "higher")
    return Significance(
        direction=direction, rank=rank, p=p, n_sets=n_sets, specificity_rank=spec_rank, specificity_p=spec_p
    )


def _num(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def _bounds(iv: Any) -> str:
    return "" if iv is None or not iv.defined else f" [{iv.lo:.3f}, {iv.hi:.3f}]"


def headline_lines(outcome: Outcome) -> list[str]:
    """What the console says of a run's effect: the headline metric per group (unedited -> edited,
    the change's interval, the rank and p-value against the random sets), then the specificity with
    its interval beside the random sets' median [IQR] and its p-value."""
    spec, sig, ivs = outcome.specificity, outcome.significance, outcome.intervals
    if spec is None or spec.metric is None:
        return []
    metric = spec.metric
    level = f"{ivs.level:.0%} " if ivs is not None else ""
    lines = []
    for g in ("concept", "control"):
        base, edited = outcome.baseline.metric(g, metric), outcome.edited.metric(g, metric)
        delta = ivs.edited.delta.get(g, {}).get(metric) if ivs is not None else None
        n = outcome.baseline.n.get(g)
        text = f"{g} {metric}: {_num(base)} -> {_num(edited)} (n={n}; change {_num(edited - base)}{_bounds(delta)})"
        if sig is not None:
            p, n_sets = sig.p.get(g, {}).get(metric, math.nan), sig.n_sets.get(g, {}).get(metric, 0)
            text += f"; p={_num(p)} vs {n_sets} random sets ({sig.direction} is the edit's aim)"
        lines.append(text)
    text = f"specificity ({metric}: control retained - concept retained): {_num(spec.edited.get(metric, math.nan))}"
    if ivs is not None:
        text += f" {level}CI{_bounds(ivs.edited.specificity.get(metric)) or ' n/a'}"
    if spec.random_n.get(metric):
        text += (
            f"; random sets median {_num(spec.random_median[metric])} [IQR {_num(spec.random_q25[metric])}, "
            f"{_num(spec.random_q75[metric])}]"
        )
    if sig is not None:
        text += f"; p={_num(sig.specificity_p.get(metric, math.nan))}"
    lines.append(text)
    return lines


def cache_provenance(cache: RunCache) -> CacheProvenance:
    """Where the cache lives and, per stage, whether it was read from it (from `cache.hits`)."""
    return CacheProvenance(
        dir=str(cache.root) if cache.enabled else None,
        **{flag: cache.hit(label) for flag, label in CACHE_FLAGS.items()},
        random_from_cache=list(cache.hits.get("random", [])),
    )


def evaluation(result: Mapping[str, Any]) -> Evaluation:
    """An evaluation result (`stages.evaluate_cached`) as the record holds it: its JSON form (what
    a reader of results.json gets back), typed."""
    return Evaluation.from_json(to_jsonable(result))


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
        "capture": config["capture_batch_size"],
        "batched_edits": n_batched_edits,
        "edit_rows": edit_rows,
        "auto_chosen": [dataclasses.asdict(c) for c in chosen_batch_sizes(lm)],
    }
    if "auto" in (task_size, config["capture_batch_size"]) and lm.device.type != "cuda":
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
) -> Outcome:
    """The one builder of what a complete run measured (`RunRecord.outcome`), from the stages'
    outputs.

    `rank_task`: the task the heads were ranked on when it is not `task` (a transfer run,
    config `rank_task`); results then say ``transfer: {source, target}`` (`transfer_info`) and
    carry its provenance as ``provenance.rank_task``; `dataset` is the evaluated task's dataset
    (classification: task.dataset) or null. `random_sets`: the draws behind `per_seed` (one per
    seed): each seed's `relaxed` and the run's `random.relaxed_layers` say what they borrowed.
    Free-form parts (task and model provenance, environment) are held in their JSON form."""
    iv, seed = config["intervention"], int(config["seed"])
    layout = lm.layout
    random = None
    if per_seed:
        draws = {draw.seed: draw for draw in random_sets}  # a seed's draw is fixed by the seed
        random = RandomControls(
            stats=seed_summary(per_seed),
            seeds=[int(s) for s in iv["random_seeds"]],
            pool=iv["random_pool"],
            relaxed_layers=relaxed_layers_of(random_sets),
            per_seed=[
                RandomControl(
                    seed=int(r["seed"]),
                    heads=[(int(a), int(b)) for a, b in r["heads"]],
                    result=evaluation({key: v for key, v in r.items() if key not in RandomControl.KEYS}),
                    relaxed=relaxation_of(draws[r["seed"]]),
                    redraw=draws[r["seed"]].redraw,
                )
                for r in per_seed
            ],
            n_possible=possible_control_sets(heads, layout.n_layers, layout.n_heads, k, iv["random_pool"]),
        )
    alpha = float(iv["alpha"])
    spec = specificity_of(baseline, edited, per_seed, getattr(task, "headline_metric", None))
    transfer = transfer_info(config) if rank_task is not None else None
    return Outcome(
        model=lm.name,
        task=task.name,
        dataset=getattr(task, "dataset", None),
        transfer=None if transfer is None else Transfer(**transfer),
        ranking=config["ranking"]["method"],
        edit=Edit(
            k=k,
            k_frac=None if iv["k_frac"] is None else float(iv["k_frac"]),
            alpha=float(iv["alpha"]),
            heads_mode=iv["heads"],
            n_heads_total=layout.n_layers * layout.n_heads,
            heads=[EditedHead.from_json(h) for h in head_records(heads, scores.table)],
        ),
        baseline=evaluation(baseline),
        edited=evaluation(edited),
        random=random,
        normalized=normalized(baseline, edited, per_seed),
        intervals=intervals(baseline, edited, per_seed, interval_config(config)),
        specificity=spec,
        significance=significance_of(baseline, edited, per_seed, alpha),
        warnings=run_warnings(heads, alpha, baseline, edited, per_seed),
        provenance=Provenance(
            model=ModelProvenance(
                details=to_jsonable(lm.provenance),
                layout=dataclasses.asdict(layout),
                loaded_in_process=model_loaded_in_process,
            ),
            task=to_jsonable(task.provenance()),
            rank_task=to_jsonable(rank_task.provenance()) if rank_task is not None else None,
            environment=to_jsonable(environment()),
            seeds={"seed": seed, "random_heads": list(iv["random_seeds"])},
            code_fingerprint=code_fingerprint(),
            n_ranking_samples=len(samples),
            n_activation_rows=int(acts.n_rows),
            cache=cache_provenance(cache),
            timings={stage: float(seconds) for stage, seconds in timings.items()},
            batch_sizes=to_jsonable(dict(batch_sizes or {})),
            batched_edits=bool(batched_edits),
        ),
    )
