"""How sure an effect is: paired bootstrap intervals over evaluation items, specificity, and the
empirical p-value of the edited heads against the random head sets.

    items = {"concept": {"accuracy": [1, 0, 1, ...]}, "control": {...}}   # per evaluation item
    boot = paired_bootstrap(baseline_items, [edited_items, *random_items], IntervalConfig())
    boot.baseline["concept"]["accuracy"]          # Interval(lo, hi) of the unedited accuracy
    boot.effects[0].delta["concept"]["accuracy"]  # edited minus unedited, paired
    boot.effects[0].ratio[...]; boot.effects[0].specificity["accuracy"]
    rank, p = empirical_p(edited_value, random_values, direction="lower")

**Items.** A group metric here is the mean of one value per evaluation item (a question, an image,
a prompt: a task's `score` gives them as `items`, each metric exactly the mean of its items).
Sampled generations (toxicity's continuations) are one item per prompt: the prompt's value over its
continuations (their mean, max, ...), so prompts are resampled, never continuations.

**Resampling.** Group g (the i-th of `GROUPS_ORDER`, or of the sorted groups) draws its resamples
from ``numpy.random.default_rng([seed, i])``: ``rng.integers(0, n, size=(n_resamples, n))``, one row
of n item indices per resample. The same rows index every evaluation of the run (the baseline,
the edited heads, each random set: they score the same items), so differences and ratios are
*paired*. Groups are resampled independently (their items are different questions).

**Intervals** are percentile intervals at `level` (linear interpolation, numpy's default): of the
resampled mean (value), of edited minus baseline (delta), of edited / baseline (ratio, the paper's
normalised value), and of the specificity (below). A ratio whose baseline resample is 0 is
undefined; its interval is then NaN (null in results.json), as is any interval over a metric with
a NaN item.

**Specificity** of an edit for a metric: retained(control) - retained(concept), retained =
edited / baseline. 1 - 0 = 1: the concept is gone and the control untouched; 0: both kept alike.

**Significance against the random sets:** the edited set's `rank` = 1 + the number of random
sets doing at least as much (`direction`: "lower" when the edit is meant to lower the metric, a
suppression; "higher" for an enhancement) and the empirical p-value ``rank / (1 + N)`` over the N
random sets with a value. With N sets the smallest p is 1 / (N + 1): 10 sets can show p = 0.09 at
best, never p < 0.05; it says how the edit ranks among random edits of the same size, not how
often a new draw of the edited heads would win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "GROUPS_ORDER",
    "Direction",
    "Interval",
    "IntervalConfig",
    "ItemValues",
    "EffectIntervals",
    "GroupIntervals",
    "PairedBootstrap",
    "check_interval_config",
    "edit_direction",
    "empirical_p",
    "group_intervals_from_json",
    "group_intervals_json",
    "paired_bootstrap",
    "resample_indices",
    "retained",
    "specificity",
]

#: the order of the groups whose resample streams are fixed (`resample_indices`); other groups follow, sorted
GROUPS_ORDER = ("concept", "control")
#: {group: {metric: one value per evaluation item}}
ItemValues = Mapping[str, Mapping[str, Sequence[float]]]
#: which way an edit is meant to move a metric
Direction = Literal["lower", "higher"]


@dataclass(kw_only=True)
class IntervalConfig:
    """The bootstrap intervals of a run (the ``intervals`` config node; these are its only defaults)."""

    #: resamples of the evaluation items (0: no intervals)
    n_resamples: int = 1000
    #: the intervals' coverage, e.g. 0.95 (the 2.5th and 97.5th percentiles of the resamples)
    level: float = 0.95
    #: seeds the resamples (numpy's default_rng([seed, group index]))
    seed: int = 0


def check_interval_config(config: IntervalConfig) -> None:
    """ValueError naming the key unless n_resamples is an int >= 0 and 0 < level < 1."""
    n = config.n_resamples
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"intervals.n_resamples must be an integer >= 0 (e.g. 1000; 0: no intervals), got {n!r}")
    level = config.level
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < float(level) < 1:
        raise ValueError(f"intervals.level must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}")


@dataclass(frozen=True)
class Interval:
    """A two-sided interval; NaN bounds when undefined."""

    lo: float
    hi: float

    @property
    def defined(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the interval (False when it is undefined)."""
        return self.defined and self.lo <= value <= self.hi

    def to_json(self) -> dict[str, float]:
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_json(cls, obj: Mapping[str, object] | None) -> Interval:
        def num(v: object) -> float:
            return float(v) if isinstance(v, (int, float)) else math.nan

        obj = obj or {}
        return cls(num(obj.get("lo")), num(obj.get("hi")))


#: {group: {metric: Interval}}
GroupIntervals = dict[str, dict[str, Interval]]


def metric_intervals_json(metrics: Mapping[str, Interval]) -> dict[str, dict[str, float]]:
    return {m: iv.to_json() for m, iv in metrics.items()}


def metric_intervals_from_json(obj: object) -> dict[str, Interval]:
    """{metric: Interval} from its JSON ({} for anything but a mapping)."""
    return {str(m): Interval.from_json(iv) for m, iv in (obj if isinstance(obj, Mapping) else {}).items()}


def group_intervals_json(groups: GroupIntervals) -> dict[str, dict[str, dict[str, float]]]:
    return {g: metric_intervals_json(ms) for g, ms in groups.items()}


def group_intervals_from_json(obj: object) -> GroupIntervals:
    return {str(g): metric_intervals_from_json(ms) for g, ms in (obj if isinstance(obj, Mapping) else {}).items()}


@dataclass(frozen=True)
class EffectIntervals:
    """The intervals of one edited evaluation (the edited heads, or a random set: its `seed`) against
    the baseline: its `value`, `delta` (edited - baseline), `ratio` (edited / baseline), each
    {group: {metric: Interval}}, and `specificity` {metric: Interval} (metrics the concept and
    control groups both have). results.json's `intervals.edited` / `intervals.random[i]`."""

    value: GroupIntervals = field(default_factory=dict)
    delta: GroupIntervals = field(default_factory=dict)
    ratio: GroupIntervals = field(default_factory=dict)
    specificity: dict[str, Interval] = field(default_factory=dict)
    seed: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {} if self.seed is None else {"seed": self.seed}
        out.update(
            value=group_intervals_json(self.value),
            delta=group_intervals_json(self.delta),
            ratio=group_intervals_json(self.ratio),
            specificity=metric_intervals_json(self.specificity),
        )
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> EffectIntervals:
        seed = obj.get("seed")
        return cls(
            value=group_intervals_from_json(obj.get("value")),
            delta=group_intervals_from_json(obj.get("delta")),
            ratio=group_intervals_from_json(obj.get("ratio")),
            specificity=metric_intervals_from_json(obj.get("specificity")),
            seed=None if seed is None or isinstance(seed, bool) else int(seed),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class PairedBootstrap:
    """`paired_bootstrap`'s answer: the baseline's value intervals, one `EffectIntervals` per
    evaluated edit (in the order given), and the item counts per group."""

    baseline: GroupIntervals
    effects: list[EffectIntervals]
    n_items: dict[str, int]


def _group_order(groups: Sequence[str]) -> list[str]:
    return [g for g in GROUPS_ORDER if g in groups] + sorted(g for g in groups if g not in GROUPS_ORDER)


def resample_indices(n: int, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """(n_resamples, n) item indices drawn with replacement from ``default_rng([seed, stream])``."""
    rng = np.random.default_rng([int(seed), int(stream)])
    return rng.integers(0, n, size=(n_resamples, n))


def _interval(samples: np.ndarray, level: float) -> Interval:
    """The percentile interval of `samples` (NaN when any sample is undefined)."""
    if samples.size == 0 or not np.all(np.isfinite(samples)):
        return Interval(math.nan, math.nan)
    tail = (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [100.0 * tail, 100.0 * (1.0 - tail)])
    return Interval(float(lo), float(hi))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def paired_bootstrap(
    baseline: ItemValues, evaluations: Sequence[ItemValues], config: IntervalConfig
) -> PairedBootstrap:
    """Paired percentile-bootstrap intervals (see the module docstring) of the baseline's metrics and,
    per evaluation, its value, delta, ratio and specificity. A metric is bootstrapped in a group
    where the baseline and the evaluation both have its items, as many as the group's items; a
    mismatch of counts (different items) raises ValueError."""
    check_interval_config(config)
    groups = _group_order(list(baseline))
    n_items = {g: _count(baseline[g], g) for g in groups}
    idx = {
        g: resample_indices(n_items[g], config.n_resamples, config.seed, i)
        for i, g in enumerate(groups)
        if n_items[g] > 0 and config.n_resamples > 0
    }

    def resampled(values: Sequence[float], g: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n_items[g],):
            raise ValueError(f"group {g!r}: {arr.shape[0]} item values, the baseline has {n_items[g]} items")
        return arr[idx[g]].mean(axis=1)

    base_means = {g: {m: resampled(v, g) for m, v in baseline[g].items()} for g in groups if g in idx}
    base_iv = {g: {m: _interval(s, config.level) for m, s in ms.items()} for g, ms in base_means.items()}
    effects = []
    for ev in evaluations:
        value: GroupIntervals = {}
        delta: GroupIntervals = {}
        ratio: GroupIntervals = {}
        ratios: dict[str, dict[str, np.ndarray]] = {}
        for g in groups:
            if g not in idx or g not in ev:
                continue
            value[g], delta[g], ratio[g], ratios[g] = {}, {}, {}, {}
            for m, v in ev[g].items():
                if m not in base_means[g]:
                    continue
                s, b = resampled(v, g), base_means[g][m]
                ratios[g][m] = _ratio(s, b)
                value[g][m] = _interval(s, config.level)
                delta[g][m] = _interval(s - b, config.level)
                ratio[g][m] = _interval(ratios[g][m], config.level)
        spec: dict[str, Interval] = {}
        if "concept" in ratios and "control" in ratios:
            for m in sorted(set(ratios["concept"]) & set(ratios["control"])):
                spec[m] = _interval(ratios["control"][m] - ratios["concept"][m], config.level)
        effects.append(EffectIntervals(value=value, delta=delta, ratio=ratio, specificity=spec))
    return PairedBootstrap(baseline=base_iv, effects=effects, n_items=n_items)


def _count(metrics: Mapping[str, Sequence[float]], group: str) -> int:
    counts = {len(v) for v in metrics.values()}
    if len(counts) > 1:
        raise ValueError(f"group {group!r}: metrics have different item counts {sorted(counts)}")
    return counts.pop() if counts else 0


def retained(edited: float, baseline: float) -> float:
    """edited / baseline: the share of the unedited value kept (NaN when the baseline is 0 or either is undefined)."""
    if not (math.isfinite(edited) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return edited / baseline


def specificity(
    baseline: Mapping[str, Mapping[str, float]], edited: Mapping[str, Mapping[str, float]], metric: str
) -> float:
    """retained(control) - retained(concept) of `metric` ({group: {metric: value}} per evaluation)."""

    def kept(g: str) -> float:
        return retained(
            float(edited.get(g, {}).get(metric, math.nan)), float(baseline.get(g, {}).get(metric, math.nan))
        )

    return kept("control") - kept("concept")


def edit_direction(alpha: float) -> Direction:
    """Which way an edit by `alpha` is meant to move its concept: "lower" for a suppression (alpha < 1:
    flipped, ablated or damped heads), "higher" for an enhancement (alpha > 1)."""
    return "higher" if alpha > 1 else "lower"


def empirical_p(edited: float, random: Sequence[float], direction: Direction) -> tuple[int | None, float, int]:
    """(rank, p, N) of the edited value among the random sets' values: rank = 1 + the number of sets
    doing at least as much in `direction` (as low or lower for "lower"), p = rank / (1 + N), N =
    the sets with a defined value. (None, NaN, N) when the edited value is undefined."""
    values = [float(v) for v in random if math.isfinite(float(v))]
    n = len(values)
    if not math.isfinite(edited):
        return None, math.nan, n
    if direction == "lower":
        at_least = sum(v <= edited for v in values)
    elif direction == "higher":
        at_least = sum(v >= edited for v in values)
    else:
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    rank = 1 + at_least
    return rank, rank / (1 + n), n
