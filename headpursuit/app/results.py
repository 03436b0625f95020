"""The record of a run, `results.json`: its typed parts, its schema version, the one writer and the
one reader, the resume check and the error record.

    rec = RunRecord(status="running", config_hash=config_hash(config), config=config, run=info)
    write_record(run_dir, rec)                    # the one writer: temp file + os.replace
    rec.outcome = record(...)                     # app/record.py: what a complete run measured
    rec.status = "complete"; write_record(run_dir, rec)
    rec = RunRecord.read(run_dir / RESULTS_FILE)  # None when missing or not JSON; version 1 files too
    rec.outcome.edited.groups["concept"]["accuracy"]

A running, failed or interrupted run is the same type with its `status` and what is known so far
(no `outcome` until the run has measured it; `error` for a failed or interrupted one).

The file's layout is that of version 1 with `results_version` added (a file without it is version
1). A part's fields are its keys, except where a docstring says otherwise: the `outcome` and its
`edit` are written flat, at the top level, and an evaluation's metric groups sit beside its counts.

    results_version, status, config_hash, config, run, heartbeat,
    model, task, dataset, transfer, ranking,                          (outcome)
    k, k_frac, alpha, heads_mode, n_heads_total, heads,               (outcome.edit)
    baseline, edited, random, normalized, intervals, specificity,     (outcome)
    significance, warnings, provenance,
    tracking, error

A metric that is undefined (e.g. a ratio over an unedited value of 0) is NaN here and null in the
file. Free-form parts (the resolved `config`, the task's and the environment's provenance, the W&B
`tracking` status, an evaluation's task-specific keys) stay JSON dicts.

To add a part (e.g. statistics over the evaluation items): a frozen dataclass with `to_json` /
`from_json`, one field on `Outcome` (default None, so that older files read as "absent"), one line
in each of `Outcome.to_json` / `Outcome.from_json`; no reader of the other parts changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headpursuit.app.files import read_json, to_jsonable, write_json_atomic, write_text_atomic
from headpursuit.app.result_neutral import RESULT_NEUTRAL_KEYS
from headpursuit.stats import (
    EffectIntervals,
    GroupIntervals,
    group_intervals_from_json,
    group_intervals_json,
)

log = logging.getLogger(__name__)

__all__ = [
    "RESULTS_FILE",
    "HEAD_SCORES_FILE",
    "ERROR_FILE",
    "RESULTS_VERSION",
    "VOLATILE_KEYS",
    "STATUSES",
    "Groups",
    "RunRecord",
    "RunInfo",
    "HeartbeatInfo",
    "ErrorInfo",
    "Outcome",
    "Transfer",
    "Edit",
    "EditedHead",
    "Evaluation",
    "RandomControl",
    "RandomControls",
    "Borrowed",
    "SeedStats",
    "Normalized",
    "Intervals",
    "EffectIntervals",
    "Specificity",
    "Significance",
    "ItemGroups",
    "Provenance",
    "ModelProvenance",
    "CacheProvenance",
    "ResultsError",
    "is_metric_group",
    "write_record",
    "config_hash",
    "completed_results",
    "write_error",
    "clear_error",
]

RESULTS_FILE = "results.json"
HEAD_SCORES_FILE = "head_scores.csv"
ERROR_FILE = "error.txt"
#: the schema version of results.json. 1: no `results_version` key (written before the typed
#: record); 2: the typed record (the same layout, `results_version` added).
RESULTS_VERSION = 2
#: what `status` says: running (the job is at work, or was killed: see `liveness`), complete, failed
#: (error.txt holds the traceback), interrupted (SIGTERM / SIGINT, at `error.stage`)
STATUSES = ("running", "complete", "failed", "interrupted")

# Config keys that do not change a run's results: left out of the config hash used for resume.
VOLATILE_KEYS = RESULT_NEUTRAL_KEYS  # the one list (headpursuit.app.result_neutral)

#: {group: {metric: value}}: one evaluation's metrics per item group (concept, control); NaN where
#: undefined (null in the file)
Groups = dict[str, dict[str, float]]
#: {group: {metric: [value per evaluation item]}}
ItemGroups = dict[str, dict[str, list[float]]]


class ResultsError(ValueError):
    """A results.json this version cannot read: a newer schema, or a part of the wrong shape."""


# ------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------


def _metric_value(value: Any) -> float:
    """A metric as the record holds it: a float, NaN for null (undefined)."""
    return float("nan") if value is None else float(value)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def is_metric_group(key: str, value: Any, reserved: Sequence[str] = ()) -> bool:
    """Whether `key: value` of an evaluation (or of a summary over random sets) is a metric group:
    {metric: number or null}, under a key that is not one of the part's own (`reserved`)."""
    return key not in reserved and isinstance(value, Mapping) and all(_is_number(v) for v in value.values())


def _groups(obj: Any) -> Groups:
    """{group: {metric: float}} from a mapping of groups (None and absent -> {})."""
    return {str(g): {str(m): _metric_value(v) for m, v in metrics.items()} for g, metrics in (obj or {}).items()}


def _groups_json(groups: Groups) -> dict[str, dict[str, float]]:
    return {g: dict(m) for g, m in groups.items()}


def _optional(cast: Any, value: Any) -> Any:
    return None if value is None else cast(value)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _fields(cls: Any, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `obj` that are fields of the dataclass `cls` (a part written field for field)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in obj.items() if k in names}


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """`run`: where and how Hydra ran the job."""

    dir: str | None = None
    mode: str | None = None  # run | multirun
    job_num: int | None = None  # the job's number in a sweep; None for a single run
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)  # Hydra's config-group choices (experiment, task, ...)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunInfo:
        return cls(
            **{**_fields(cls, obj), "overrides": list(obj.get("overrides") or []), "choices": _dict(obj.get("choices"))}
        )


@dataclass(frozen=True)
class HeartbeatInfo:
    """`heartbeat`: the liveness file of a running job and who writes it."""

    file: str | None = None
    interval_s: float | None = None
    pid: int | None = None
    host: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HeartbeatInfo:
        return cls(**_fields(cls, obj))


@dataclass(frozen=True)
class ErrorInfo:
    """`error`: what stopped a failed or interrupted run (`file`: the traceback, error.txt)."""

    type: str | None = None
    message: str | None = None
    file: str | None = None
    stage: str | None = None  # the stage the run was in

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ErrorInfo:
        return cls(**_fields(cls, obj))


@dataclass(frozen=True)
class Transfer:
    """`transfer` of a run with `rank_task`: the dataset the heads were ranked on, the one evaluated."""

    source: str | None = None
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Transfer:
        return cls(**_fields(cls, obj))


@dataclass(frozen=True)
class EditedHead:
    """One entry of `heads`: an edited head, with its score and rank when the ranking scored it."""

    layer: int
    head: int
    score: float | None = None
    rank: int | None = None

    @property
    def pair(self) -> tuple[int, int]:
        return (self.layer, self.head)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "head": self.head}
        if self.score is not None:  # a head the ranking did not score (explicit, random) has neither
            out["score"] = self.score
        if self.rank is not None:
            out["rank"] = self.rank
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EditedHead:
        return cls(
            layer=int(obj["layer"]),
            head=int(obj["head"]),
            score=_optional(float, obj.get("score")),
            rank=_optional(int, obj.get("rank")),
        )


@dataclass(frozen=True)
class Edit:
    """What was edited: `k` heads (`k_frac` of all when so configured) scaled by `alpha`, chosen by
    `heads_mode` (ranked, random, explicit) out of `n_heads_total`. Written flat, at the top level."""

    k: int | None = None
    k_frac: float | None = None
    alpha: float | None = None
    heads_mode: str | None = None
    n_heads_total: int | None = None
    heads: list[EditedHead] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The edited heads as (layer, head)."""
        return [h.pair for h in self.heads]

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "k_frac": self.k_frac,
            "alpha": self.alpha,
            "heads_mode": self.heads_mode,
            "n_heads_total": self.n_heads_total,
            "heads": [h.to_json() for h in self.heads],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Edit:
        return cls(
            k=_optional(int, obj.get("k")),
            k_frac=_optional(float, obj.get("k_frac")),
            alpha=_optional(float, obj.get("alpha")),
            heads_mode=obj.get("heads_mode"),
            n_heads_total=_optional(int, obj.get("n_heads_total")),
            heads=[EditedHead.from_json(h) for h in obj.get("heads") or []],
        )


@dataclass(frozen=True)
class Evaluation:
    """One evaluation (`baseline`, `edited`, a random set): its metric groups, the item counts `n`,
    a few example outputs and the count of empty outputs (`empty_fraction` is None without outputs;
    all three None in files of before they were counted). `extra`: what a task adds of its own
    (toxicity: scorer, scorer_version, fluency_info), kept as written.

    In the file the groups sit beside the other keys: {"n": .., "concept": {..}, "control": {..},
    "examples": [..], "n_empty": .., "n_outputs": .., "empty_fraction": .., <extra>}."""

    groups: Groups = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    n_empty: int | None = None
    n_outputs: int | None = None
    empty_fraction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: {group: {metric: one value per evaluation item}} for the metrics that are the mean of their
    #: items (what the intervals resample); {} in files of before they were recorded
    items: ItemGroups = field(default_factory=dict)

    #: an evaluation's keys that are not metric groups
    KEYS = ("n", "examples", "n_empty", "n_outputs", "empty_fraction", "items")

    def metric(self, group: str, name: str) -> float:
        """One metric; NaN when this evaluation does not have it."""
        return self.groups.get(group, {}).get(name, float("nan"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": dict(self.n), **_groups_json(self.groups), "examples": list(self.examples)}
        if self.n_outputs is not None:  # counted (files of before the count have none of the three)
            out.update(n_empty=self.n_empty, n_outputs=self.n_outputs, empty_fraction=self.empty_fraction)
        if self.items:
            out["items"] = {g: {m: list(v) for m, v in ms.items()} for g, ms in self.items.items()}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], reserved: Sequence[str] = ()) -> Evaluation:
        """From an evaluation's dict (a task's result, or its JSON); the keys in `reserved` belong
        to the part that holds it (a random set's seed, heads, relaxed) and are left out."""
        own = (*cls.KEYS, *reserved)
        return cls(
            groups=_groups({g: v for g, v in obj.items() if is_metric_group(g, v, own)}),
            n={str(g): int(v) for g, v in _dict(obj.get("n")).items()},
            examples=list(obj.get("examples") or []),
            n_empty=_optional(int, obj.get("n_empty")),
            n_outputs=_optional(int, obj.get("n_outputs")),
            empty_fraction=_optional(float, obj.get("empty_fraction")),
            extra={k: v for k, v in obj.items() if k not in own and not is_metric_group(k, v, own)},
            items={
                str(g): {str(m): [_metric_value(x) for x in v] for m, v in _dict(ms).items()}
                for g, ms in _dict(obj.get("items")).items()
            },
        )


@dataclass(frozen=True)
class Borrowed:
    """What a `layer_counts` random set borrowed for a layer that could not supply its count: the
    heads it was `short`, and how many came from each nearest layer (`sources`; `"from"` in the
    file). In the run's `random.relaxed_layers` also `n_sets`, the sets that borrowed for it."""

    short: int
    sources: dict[int, int] = field(default_factory=dict)
    n_sets: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"short": self.short}
        if self.n_sets is not None:
            out["n_sets"] = self.n_sets
        out["from"] = {str(layer): n for layer, n in self.sources.items()}
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Borrowed:
        return cls(
            short=int(obj["short"]),
            sources={int(layer): int(n) for layer, n in _dict(obj.get("from")).items()},
            n_sets=_optional(int, obj.get("n_sets")),
        )


def _borrowed_json(borrowed: Mapping[int, Borrowed]) -> dict[str, Any]:
    return {str(layer): b.to_json() for layer, b in borrowed.items()}


def _borrowed(obj: Any) -> dict[int, Borrowed]:
    return {int(layer): Borrowed.from_json(b) for layer, b in _dict(obj).items()}


@dataclass(frozen=True)
class RandomControl:
    """One random-head set (`random.per_seed[i]`): its seed, its heads, its evaluation and what it
    borrowed (`relaxed`, by layer; {} when nothing, None in files of before it was recorded). In the
    file the evaluation's keys sit beside seed, heads and relaxed."""

    seed: int
    heads: list[tuple[int, int]]
    result: Evaluation
    relaxed: dict[int, Borrowed] | None = None
    #: 0: the seed's first draw; n: its n-th redraw (the earlier ones repeated another set); None in
    #: files of before sets were kept distinct
    redraw: int | None = None

    KEYS = ("seed", "heads", "relaxed", "redraw")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "heads": [list(h) for h in self.heads]}
        if self.redraw is not None:
            out["redraw"] = self.redraw
        out.update(self.result.to_json())
        if self.relaxed is not None:
            out["relaxed"] = _borrowed_json(self.relaxed)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RandomControl:
        return cls(
            seed=int(obj["seed"]),
            heads=[(int(a), int(b)) for a, b in obj.get("heads") or []],
            result=Evaluation.from_json(obj, reserved=cls.KEYS),
            relaxed=None if obj.get("relaxed") is None else _borrowed(obj["relaxed"]),
            redraw=_optional(int, obj.get("redraw")),
        )


@dataclass(frozen=True)
class SeedStats:
    """Statistics over the random sets, each {group: {metric: value}}: mean, sample std (NaN with
    one set: `std_note` says why), median and quartiles (linear interpolation).

    Two layouts in the file: `random` holds the mean's groups at its top level (beside std, median,
    ...), `normalized.random` holds them under `mean`."""

    mean: Groups = field(default_factory=dict)
    std: Groups = field(default_factory=dict)
    median: Groups = field(default_factory=dict)
    q25: Groups = field(default_factory=dict)
    q75: Groups = field(default_factory=dict)
    n_seeds: int | None = None
    std_note: str | None = None

    STATS = ("mean", "std", "median", "q25", "q75")

    def stat(self, name: str) -> Groups:
        """One statistic by name (one of STATS)."""
        if name not in self.STATS:
            raise KeyError(f"{name!r} is no statistic over the random sets; one of {self.STATS}")
        return getattr(self, name)

    def to_json(self, *, means_at_top: bool) -> dict[str, Any]:
        head: dict[str, Any] = {} if means_at_top else {"mean": _groups_json(self.mean)}
        head.update(std=_groups_json(self.std), median=_groups_json(self.median))
        if means_at_top:
            head["n_seeds"] = self.n_seeds
            if self.std_note is not None:
                head["std_note"] = self.std_note
            head.update(_groups_json(self.mean))
        head.update(q25=_groups_json(self.q25), q75=_groups_json(self.q75))
        if not means_at_top:
            head["n_seeds"] = self.n_seeds
            if self.std_note is not None:
                head["std_note"] = self.std_note
        return head

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], *, means_at_top: bool, reserved: Sequence[str] = ()) -> SeedStats:
        """`reserved`: the holder's own keys beside the statistics (random: seeds, pool, ...)."""
        own = (*cls.STATS, "n_seeds", "std_note", *reserved)
        mean = {g: v for g, v in obj.items() if is_metric_group(g, v, own)} if means_at_top else obj.get("mean")
        return cls(
            mean=_groups(mean),
            **{s: _groups(obj.get(s)) for s in cls.STATS[1:]},
            n_seeds=_optional(int, obj.get("n_seeds")),
            std_note=obj.get("std_note"),
        )


@dataclass(frozen=True)
class RandomControls:
    """`random`: the random-head controls. `stats` over the sets, the `seeds` configured, the `pool`
    drawn from, `relaxed_layers` (what layer_counts sets borrowed, by layer; None in files of before
    it was recorded) and each set (`per_seed`)."""

    stats: SeedStats
    seeds: list[int] = field(default_factory=list)
    pool: str | None = None
    relaxed_layers: dict[int, Borrowed] | None = None
    per_seed: list[RandomControl] = field(default_factory=list)
    #: how many distinct sets the pool holds (`heads.possible_control_sets`; None: not counted, a
    #: borrowing layer_counts pool, or a file of before it was recorded). Fewer than `seeds`: every
    #: one of them was evaluated (`n_seeds` says how many)
    n_possible: int | None = None

    KEYS = ("seeds", "pool", "relaxed_layers", "per_seed", "n_possible")

    def to_json(self) -> dict[str, Any]:
        out = {**self.stats.to_json(means_at_top=True), "seeds": list(self.seeds), "pool": self.pool}
        if self.n_possible is not None:
            out["n_possible"] = self.n_possible
        if self.relaxed_layers is not None:
            out["relaxed_layers"] = _borrowed_json(self.relaxed_layers)
        out["per_seed"] = [r.to_json() for r in self.per_seed]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RandomControls:
        relaxed = obj.get("relaxed_layers")
        return cls(
            stats=SeedStats.from_json(obj, means_at_top=True, reserved=cls.KEYS),
            seeds=[int(s) for s in obj.get("seeds") or []],
            pool=obj.get("pool"),
            relaxed_layers=None if relaxed is None else _borrowed(relaxed),
            per_seed=[RandomControl.from_json(r) for r in obj.get("per_seed") or []],
            n_possible=_optional(int, obj.get("n_possible")),
        )


@dataclass(frozen=True)
class Normalized:
    """`normalized`: every metric over the unedited model's (the paper reports only such ratios):
    the edited heads', and the random sets' statistics (each set normalised first; None without
    random sets)."""

    edited: Groups = field(default_factory=dict)
    random: SeedStats | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "edited": _groups_json(self.edited),
            "random": None if self.random is None else self.random.to_json(means_at_top=False),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Normalized:
        random = obj.get("random")
        return cls(
            edited=_groups(obj.get("edited")),
            random=None if random is None else SeedStats.from_json(random, means_at_top=False),
        )


@dataclass(frozen=True)
class Intervals:
    """`intervals`: paired percentile-bootstrap intervals over the evaluation items
    (`headpursuit.stats`): their `level`, `n_resamples`, `seed`, the items per group (`n_items`), the
    unedited model's value intervals (`baseline`), the edited heads' (`edited`) and each random
    set's (`random`, in `random.per_seed` order)."""

    level: float
    n_resamples: int
    seed: int
    n_items: dict[str, int] = field(default_factory=dict)
    baseline: GroupIntervals = field(default_factory=dict)
    edited: EffectIntervals = field(default_factory=EffectIntervals)
    random: list[EffectIntervals] = field(default_factory=list)

    METHOD = "paired percentile bootstrap over evaluation items (headpursuit.stats)"

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.METHOD,
            "level": self.level,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "n_items": dict(self.n_items),
            "baseline": group_intervals_json(self.baseline),
            "edited": self.edited.to_json(),
            "random": [r.to_json() for r in self.random],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Intervals:
        return cls(
            level=float(obj["level"]),
            n_resamples=int(obj["n_resamples"]),
            seed=int(obj.get("seed") or 0),
            n_items={str(g): int(n) for g, n in _dict(obj.get("n_items")).items()},
            baseline=group_intervals_from_json(obj.get("baseline")),
            edited=EffectIntervals.from_json(_dict(obj.get("edited"))),
            random=[EffectIntervals.from_json(r) for r in obj.get("random") or []],
        )


@dataclass(frozen=True)
class Specificity:
    """`specificity`: retained(control) - retained(concept) per metric, retained = edited / unedited
    (`headpursuit.stats.specificity`): the edited heads' (`edited`), the random sets' median and
    quartiles and how many sets had a value (`random_median`, `random_q25`, `random_q75`,
    `random_n`); `metric`: the task's headline metric (the console's one number)."""

    metric: str | None = None
    edited: dict[str, float] = field(default_factory=dict)
    random_median: dict[str, float] = field(default_factory=dict)
    random_q25: dict[str, float] = field(default_factory=dict)
    random_q75: dict[str, float] = field(default_factory=dict)
    random_n: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "edited": dict(self.edited),
            "random": {
                "median": dict(self.random_median),
                "q25": dict(self.random_q25),
                "q75": dict(self.random_q75),
                "n_sets": dict(self.random_n),
            },
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Specificity:
        random = _dict(obj.get("random"))

        def metrics(node: Any) -> dict[str, float]:
            return {str(m): _metric_value(v) for m, v in _dict(node).items()}

        return cls(
            metric=obj.get("metric"),
            edited=metrics(obj.get("edited")),
            random_median=metrics(random.get("median")),
            random_q25=metrics(random.get("q25")),
            random_q75=metrics(random.get("q75")),
            random_n={str(m): int(n) for m, n in _dict(random.get("n_sets")).items()},
        )


@dataclass(frozen=True)
class Significance:
    """`significance`: the edited heads against the random sets (`headpursuit.stats.empirical_p`):
    per group and metric the edited set's `rank` (1 + the sets doing at least as much in
    `direction`) and the empirical `p` = rank / (1 + N), over the `n_sets` sets with a value; the
    same for the specificity (`specificity_rank`, `specificity_p`; more specific = more)."""

    direction: str
    rank: dict[str, dict[str, int | None]] = field(default_factory=dict)
    p: Groups = field(default_factory=dict)
    n_sets: dict[str, dict[str, int]] = field(default_factory=dict)
    specificity_rank: dict[str, int | None] = field(default_factory=dict)
    specificity_p: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "rank": {g: dict(ms) for g, ms in self.rank.items()},
            "p": _groups_json(self.p),
            "n_sets": {g: dict(ms) for g, ms in self.n_sets.items()},
            "specificity": {"rank": dict(self.specificity_rank), "p": dict(self.specificity_p)},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Significance:
        spec = _dict(obj.get("specificity"))
        return cls(
            direction=str(obj.get("direction")),
            rank={
                str(g): {str(m): _optional(int, r) for m, r in _dict(ms).items()}
                for g, ms in _dict(obj.get("rank")).items()
            },
            p=_groups(obj.get("p")),
            n_sets={
                str(g): {str(m): int(n) for m, n in _dict(ms).items()} for g, ms in _dict(obj.get("n_sets")).items()
            },
            specificity_rank={str(m): _optional(int, r) for m, r in _dict(spec.get("rank")).items()},
            specificity_p={str(m): _metric_value(v) for m, v in _dict(spec.get("p")).items()},
        )


@dataclass(frozen=True)
class ModelProvenance:
    """`provenance.model`: the loaded model's own provenance (`details`: name, source, quantisation,
    random_init, notes, ...; as the model room gives it), its attention `layout` (n_layers, n_heads,
    head_dim, d_model, n_kv_heads) and whether this process had it loaded before the job. Written
    flat: {**details, "layout": .., "loaded_in_process": ..}."""

    details: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, int] | None = None
    loaded_in_process: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.details, "layout": self.layout, "loaded_in_process": self.loaded_in_process}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelProvenance:
        layout = obj.get("layout")
        return cls(
            details={k: v for k, v in obj.items() if k not in ("layout", "loaded_in_process")},
            layout=None if layout is None else {str(k): int(v) for k, v in layout.items()},
            loaded_in_process=obj.get("loaded_in_process"),
        )


@dataclass(frozen=True)
class CacheProvenance:
    """`provenance.cache`: where the run cache lives (None: off) and, per stage, whether its result
    was read from it (None: the stage made no lookup); `random_from_cache` per random set."""

    dir: str | None = None
    ranking_samples_from_cache: bool | None = None
    activations_from_cache: bool | None = None
    scores_from_cache: bool | None = None
    baseline_from_cache: bool | None = None
    edited_from_cache: bool | None = None
    random_from_cache: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CacheProvenance:
        return cls(**{**_fields(cls, obj), "random_from_cache": list(obj.get("random_from_cache") or [])})


@dataclass(frozen=True)
class Provenance:
    """`provenance`: what a reader needs to reproduce or question the numbers. `task` and
    `rank_task` (a transfer run's ranking task) are the tasks' own provenance dicts; `environment`
    versions, host and git; `seeds` {seed, random_heads}; `timings` seconds per stage;
    `batch_sizes` the configured and chosen batch sizes."""

    model: ModelProvenance = field(default_factory=ModelProvenance)
    task: dict[str, Any] = field(default_factory=dict)
    rank_task: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    code_fingerprint: str | None = None
    n_ranking_samples: int | None = None
    n_activation_rows: int | None = None
    cache: CacheProvenance = field(default_factory=CacheProvenance)
    timings: dict[str, float] = field(default_factory=dict)
    batch_sizes: dict[str, Any] = field(default_factory=dict)
    batched_edits: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "task": self.task,
            "rank_task": self.rank_task,
            "environment": self.environment,
            "seeds": self.seeds,
            "code_fingerprint": self.code_fingerprint,
            "n_ranking_samples": self.n_ranking_samples,
            "n_activation_rows": self.n_activation_rows,
            "cache": self.cache.to_json(),
            "timings": dict(self.timings),
            "batch_sizes": self.batch_sizes,
            "batched_edits": self.batched_edits,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Provenance:
        rank_task = obj.get("rank_task")
        return cls(
            model=ModelProvenance.from_json(_dict(obj.get("model"))),
            task=_dict(obj.get("task")),
            rank_task=None if rank_task is None else dict(rank_task),
            environment=_dict(obj.get("environment")),
            seeds=_dict(obj.get("seeds")),
            code_fingerprint=obj.get("code_fingerprint"),
            n_ranking_samples=_optional(int, obj.get("n_ranking_samples")),
            n_activation_rows=_optional(int, obj.get("n_activation_rows")),
            cache=CacheProvenance.from_json(_dict(obj.get("cache"))),
            timings={str(k): float(v) for k, v in _dict(obj.get("timings")).items()},
            batch_sizes=_dict(obj.get("batch_sizes")),
            batched_edits=obj.get("batched_edits"),
        )


@dataclass(frozen=True)
class Outcome:
    """What a run measured (`app.record.record` builds it from the stages' outputs): the model and
    task names, the classification `dataset` (None for other tasks), the ranking method, the
    `edit`, the three evaluations, the normalised metrics, the `warnings` (what makes a number
    suspect; None in files of before they were recorded) and the provenance. Written flat, at the
    top level."""

    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    transfer: Transfer | None = None
    ranking: str | None = None
    edit: Edit = field(default_factory=Edit)
    baseline: Evaluation = field(default_factory=Evaluation)
    edited: Evaluation = field(default_factory=Evaluation)
    random: RandomControls | None = None
    normalized: Normalized | None = None  # None in files of before it was recorded
    # None in files of before they were recorded, or without items / random sets
    intervals: Intervals | None = None
    specificity: Specificity | None = None
    significance: Significance | None = None
    warnings: list[str] | None = None
    provenance: Provenance = field(default_factory=Provenance)

    #: the top-level keys that say a file holds an outcome
    MARKS = ("baseline", "edited", "heads")

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "dataset": self.dataset,
            "transfer": None if self.transfer is None else self.transfer.to_json(),
            "ranking": self.ranking,
            **self.edit.to_json(),
            "baseline": self.baseline.to_json(),
            "edited": self.edited.to_json(),
            "random": None if self.random is None else self.random.to_json(),
            "normalized": None if self.normalized is None else self.normalized.to_json(),
            **({} if self.intervals is None else {"intervals": self.intervals.to_json()}),
            **({} if self.specificity is None else {"specificity": self.specificity.to_json()}),
            **({} if self.significance is None else {"significance": self.significance.to_json()}),
            **({} if self.warnings is None else {"warnings": list(self.warnings)}),
            "provenance": self.provenance.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Outcome:
        transfer, random, normalized = obj.get("transfer"), obj.get("random"), obj.get("normalized")
        return cls(
            model=obj.get("model"),
            task=obj.get("task"),
            dataset=obj.get("dataset"),
            transfer=None if transfer is None else Transfer.from_json(transfer),
            ranking=obj.get("ranking"),
            edit=Edit.from_json(obj),
            baseline=Evaluation.from_json(_dict(obj.get("baseline"))),
            edited=Evaluation.from_json(_dict(obj.get("edited"))),
            random=None if random is None else RandomControls.from_json(random),
            normalized=None if normalized is None else Normalized.from_json(normalized),
            intervals=None if obj.get("intervals") is None else Intervals.from_json(obj["intervals"]),
            specificity=None if obj.get("specificity") is None else Specificity.from_json(obj["specificity"]),
            significance=None if obj.get("significance") is None else Significance.from_json(obj["significance"]),
            warnings=None if obj.get("warnings") is None else [str(w) for w in obj["warnings"]],
            provenance=Provenance.from_json(_dict(obj.get("provenance"))),
        )


@dataclass
class RunRecord:
    """results.json: one run's record. The job fills it in as it goes (so it is not frozen; its
    parts are): `status`, the `config` and its hash, Hydra's `run` info, the `heartbeat`, the
    `outcome` once measured, the W&B `tracking` status, the `error` of a failed or interrupted run.
    A key whose part is None is not written (a running job's record has no `outcome` keys)."""

    status: str
    config_hash: str | None = None
    config: dict[str, Any] | None = None
    run: RunInfo | None = None
    heartbeat: HeartbeatInfo | None = None
    outcome: Outcome | None = None
    tracking: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    results_version: int = RESULTS_VERSION

    def config_at(self, *path: str) -> Any:
        """The resolved config's value at `path` (e.g. "intervention", "k"), None where absent: what
        a table shows for a run whose record holds no outcome (failed before it measured)."""
        node: Any = self.config
        for key in path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(key)
        return node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results_version": self.results_version, "status": self.status}
        parts = {
            "config_hash": self.config_hash,
            "config": self.config,
            "run": None if self.run is None else self.run.to_json(),
            "heartbeat": None if self.heartbeat is None else self.heartbeat.to_json(),
        }
        out.update({k: v for k, v in parts.items() if v is not None})
        if self.outcome is not None:
            out.update(self.outcome.to_json())
        if self.tracking is not None:
            out["tracking"] = self.tracking
        if self.error is not None:
            out["error"] = self.error.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunRecord:
        """The record in a results.json object; version 1 (no `results_version`) reads into the same
        type, with what it lacks None (or empty). ResultsError for a newer version, or a part whose
        shape is not the record's (the message names the key)."""
        version = obj.get("results_version", 1)
        if not isinstance(version, int) or version > RESULTS_VERSION:
            raise ResultsError(
                f"results_version {version!r}: written by a newer headpursuit (this one reads up to "
                f"{RESULTS_VERSION}); upgrade headpursuit to read it"
            )
        try:
            run, heartbeat, error, config = obj.get("run"), obj.get("heartbeat"), obj.get("error"), obj.get("config")
            return cls(
                status=str(obj.get("status")),
                config_hash=obj.get("config_hash"),
                config=None if config is None else dict(config),
                run=None if run is None else RunInfo.from_json(run),
                heartbeat=None if heartbeat is None else HeartbeatInfo.from_json(heartbeat),
                outcome=Outcome.from_json(obj) if any(k in obj for k in Outcome.MARKS) else None,
                tracking=_optional(dict, obj.get("tracking")),
                error=None if error is None else ErrorInfo.from_json(error),
                results_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResultsError(f"not a results record this version reads ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord | None:
        """The record in `path`; None when the file is missing or holds no JSON object (e.g. cut
        short); ResultsError (naming the file) when it is JSON but not a record this version reads."""
        obj = read_json(path)
        if obj is None:
            return None
        try:
            return cls.from_json(obj)
        except ResultsError as exc:
            raise ResultsError(f"{path}: {exc}") from exc


def write_record(run_dir: str | os.PathLike, rec: RunRecord) -> Path:
    """The one writer of results.json: `run_dir/results.json`, atomically (a reader sees the old
    file or the complete new one). NaN becomes null."""
    return write_json_atomic(Path(run_dir) / RESULTS_FILE, rec.to_json())


# ------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------


def config_hash(config: Mapping[str, Any], ignore: tuple[str, ...] = VOLATILE_KEYS) -> str:
    """A stable hash of a resolved config, without the keys that do not change results."""
    body = {k: v for k, v in config.items() if k not in ignore and k != "hydra"}
    text = json.dumps(to_jsonable(body), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def completed_results(run_dir: str | os.PathLike, cfg_hash: str) -> RunRecord | None:
    """The record of `run_dir` if it says status=complete for the same config hash, else None (a
    record this version cannot read is not complete for it: the job runs again)."""
    try:
        rec = RunRecord.read(Path(run_dir) / RESULTS_FILE)
    except ResultsError as exc:
        log.warning("%s; running the job again", exc)
        return None
    if rec is not None and rec.status == "complete" and rec.config_hash == cfg_hash:
        return rec
    return None


# ------------------------------------------------------------------------------------------
# Failed and interrupted runs
# ------------------------------------------------------------------------------------------


def write_error(
    run_dir: str | os.PathLike,
    exc: BaseException,
    record: RunRecord | None = None,
    *,
    status: str = "failed",
    stage: str | None = None,
) -> RunRecord:
    """error.txt (traceback) + results.json: `record` (what the run knew) with `status` (failed,
    interrupted) and the error; `stage` is the stage the run was in. Returns that record.

    A results.json that says status=complete is never replaced: a failure or a skip of a later
    launch into the same directory (e.g. a rerun with another config) writes error.txt only, which
    says that the complete results were kept.
    """
    run_dir = Path(run_dir)
    # The status as the file says it, whatever its version: complete results of a newer
    # headpursuit are kept as well.
    kept = read_json(run_dir / RESULTS_FILE) or {}
    keep = kept.get("status") == "complete"
    rec = record if record is not None else RunRecord(status=status)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"status: {status}" + (f" (stage: {stage})" if stage else "") + "\n"
    if keep:
        head += (
            f"results.json was kept: it says status=complete (config_hash {kept.get('config_hash')}); "
            f"a failure never overwrites complete results. This {status} run had config_hash "
            f"{rec.config_hash}.\n"
        )
    write_text_atomic(run_dir / ERROR_FILE, head + "\n" + tb)
    failed = dataclasses.replace(
        rec, status=status, error=ErrorInfo(type=type(exc).__name__, message=str(exc), file=ERROR_FILE, stage=stage)
    )
    if keep:
        log.warning(
            "%s: results.json (status=complete) kept; the %s run is described in %s", run_dir, status, ERROR_FILE
        )
    else:
        write_record(run_dir, failed)
    return failed


def clear_error(run_dir: str | os.PathLike) -> None:
    """Remove the error.txt of an earlier attempt once the run is complete."""
    (Path(run_dir) / ERROR_FILE).unlink(missing_ok=True)
