"""The Task contract and the helpers every task shares.

A task owns its data (split into a *ranking* set and an *evaluation* set, per group), knows how to
prompt a model, and turns generations into flat metric dicts::

    task = build_task({"name": "qa_countries", "n_rank": 30, "n_eval": 50}, lm)
    samples = task.ranking_samples(lm)          # list[CaptureSample]: prompt + model's own answer
    result = task.evaluate(lm, desc="baseline")
    # {"concept": {metric: float}, "control": {metric: float}, "n": {...},
    #  "examples": [{"prompt", "output", "group"}, ...]}

Evaluation is two phases, `generate` then `score`; `evaluate = score(generate(...))`. Callers that
edit the model can run only `generate` inside the edit context and `score` outside it (the
toxicity task scores fluency with a model, which must be the unedited one).

Many edits over the same split: ``task.generate_many(lm, [edit, ...])`` is
``[generate under scale_heads(lm, edit) for edit]``; tasks with `shares_edit_batches` (the greedy
ones, `AnswerTask`) run every edit in the same batches (one row per (item, edit)), the others one
edit at a time.

Groups are ``"concept"`` (items whose answer/continuation should involve the concept) and
``"control"`` (everything else); metrics are reported per group.

Which groups' ranking-split items feed the ranking is `rank_groups` (config ``task.rank_groups``):
null (the default) or ``[concept]`` ranks on the concept group only, as always; ``[concept,
control]`` adds ``n_rank`` control items, drawn from the control items the evaluation split does
not use, so the evaluation split is the same whichever is chosen. The paper ranks on TriviaQA
training questions without saying whether only country questions; both choices are offered.

A question (or prompt) is never in both splits. Tasks whose items are text say what makes two
items the same (`Task.item_key`); `Task._drop_repeats` keeps the first of repeated items (with a
logged warning; the count goes to the provenance, ``data.duplicates_dropped``), and `Task._split`
checks the finished splits (`check_disjoint`, `SplitOverlapError`).
"""

from __future__ import annotations

import abc
import logging
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from headpursuit.errors import ConfigError
from headpursuit.fingerprint import content_digest
from headpursuit.intervention import Head, scale_heads

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

#: a generation batch size: a number of rows, or "auto" (the largest that fits the device)
BatchSize = int | Literal["auto"]

__all__ = [
    "GROUPS",
    "ITEMS_KEY",
    "DEFAULT_RANK_GROUPS",
    "BatchSize",
    "TaskConfig",
    "parse_batch_size",
    "parse_rank_groups",
    "Task",
    "TaskOutputs",
    "GroupOutputs",
    "SplitError",
    "SplitOverlapError",
    "split_items",
    "without_repeats",
    "check_disjoint",
    "resolve_concept",
    "group_counts",
    "empty_outputs",
]

GROUPS = ("concept", "control")
#: the key of a scored result that holds its metrics per evaluation item, {group: {metric: [value per
#: item]}}: each such metric of the group is exactly the mean of its items (what `headpursuit.stats`
#: resamples); metrics that are no item mean (corpus BLEU, CIDEr, perplexity) have none
ITEMS_KEY = "items"
#: the groups whose ranking split feeds the ranking when `task.rank_groups` is null
DEFAULT_RANK_GROUPS = ("concept",)
_RANK_GROUP_CHOICES = (("concept",), ("concept", "control"))


log = logging.getLogger(__name__)


class SplitError(ValueError):
    """A ranking or evaluation split came out empty (or data is missing for a group)."""


class SplitOverlapError(RuntimeError):
    """An item is in both the ranking and the evaluation split: a broken invariant, never bad input
    (repeated items are dropped before the split)."""


# ------------------------------------------------------------------------------------------
# Concepts
# ------------------------------------------------------------------------------------------


def resolve_concept(concept: Any, tokenizer: Any = None) -> Any:
    """A Concept from a Concept, a registered concept name or a word list."""
    if hasattr(concept, "count_in_text") and hasattr(concept, "words"):
        return concept
    if tokenizer is None:
        raise ValueError(
            f"concept {concept!r} is a name/word list: building a Concept needs a tokenizer "
            "(pass tokenizer=..., or construct the task with build_task(cfg, lm))"
        )
    from headpursuit.concepts import load_concept

    return load_concept(list(concept) if isinstance(concept, (list, tuple)) else concept, tokenizer)


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def parse_rank_groups(value: Any) -> tuple[str, ...] | None:
    """`task.rank_groups` checked: None stays None (the default rule, `DEFAULT_RANK_GROUPS`), a
    list becomes a tuple in `GROUPS` order. Raises ConfigError naming the key for anything but
    null, [concept] or [concept, control]."""
    if value is None:
        return None
    names = list(value) if isinstance(value, (list, tuple)) else None
    ordered = tuple(g for g in GROUPS if names is not None and g in names)
    if names is None or len(names) != len(ordered) or ordered not in _RANK_GROUP_CHOICES:
        raise ConfigError(
            f"task.rank_groups must be null, [concept] or [concept, control] (the groups whose "
            f"ranking-split items feed the ranking), got {value!r}"
        )
    return ordered


def parse_batch_size(value: Any, key: str = "task.batch_size") -> BatchSize:
    """A batch size checked: an integer >= 1, or ``"auto"`` (the largest batch that fits the device,
    `headpursuit.models.batching`). Raises ConfigError naming `key` otherwise."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1 or 'auto', got {value!r}")
    return int(value)


def _per_group(value: Any, group: str, default: int | None = None) -> int | None:
    if isinstance(value, Mapping):
        value = value.get(group, default)
    return None if value is None else int(value)


def split_items(
    items: Sequence[Any],
    n_rank: int | Mapping[str, int | None] | None,
    n_eval: int | Mapping[str, int | None] | None,
    *,
    seed: int = 0,
    group_of=lambda item: item.group,
    groups: Iterable[str] = GROUPS,
    rank_groups: Iterable[str] = ("concept",),
    require_rank: Iterable[str] = ("concept",),
    rank_after_eval: Iterable[str] = (),
    spare: Mapping[str, Sequence[Any]] | None = None,
    rank_items: Sequence[Any] | None = None,
    source: str = "data",
) -> dict[str, dict[str, list]]:
    """Seeded, disjoint ranking/evaluation split per group.

    Each group's items are shuffled with ``random.Random(f"{seed}:{group}")`` (stable across
    platforms and Python versions); the first `n_rank` go to ``"rank"``, the next `n_eval` to
    ``"eval"``. `n_eval` is an int (every group), a ``{group: int}`` mapping, or None (all items
    left). `n_rank` as an int applies to the groups in `rank_groups` only (ranking uses concept
    items; control items are not spent on it); as a ``{group: int}`` mapping it is explicit per
    group (e.g. ``{"concept": 30, "control": 30}`` for a contrastive ranking); None means 0.
    When a group has fewer items than requested, ranking keeps its share and evaluation gets
    what is left (with a warning).

    Groups in `rank_after_eval` split the other way round, so that their evaluation split is the
    one they have without ranking items: evaluation takes the first `n_eval` items (all with
    None), ranking the next `n_rank` (an int `n_rank` applies to them too), followed by the
    group's `spare` items (items loaded only for ranking, e.g. extra decoded image rows); a
    shortfall there shrinks the ranking split (with a warning), never the evaluation split.

    `rank_items` (e.g. TriviaQA train questions when `items` are validation questions): ranking
    items from a separate source. Then every group ranks on its own `rank_items` (shuffled with
    ``random.Random(f"{seed}:{group}:rank")``, the first `n_rank`, the same int/mapping rule) and
    evaluates on the first `n_eval` of its shuffled `items`; the caller keeps the two disjoint.

    Raises `SplitError` when an evaluation split, or the ranking split of a group in
    `require_rank` with ``n_rank > 0`` requested, comes out empty.
    Returns ``{"rank": {group: [...]}, "eval": {group: [...]}}``.
    """
    by_group: dict[str, list] = {g: [] for g in groups}
    for it in items:
        g = group_of(it)
        if g in by_group:
            by_group[g].append(it)
    rank_pool: dict[str, list] = {g: [] for g in by_group}
    for it in rank_items or ():
        if group_of(it) in rank_pool:
            rank_pool[group_of(it)].append(it)
    out: dict[str, dict[str, list]] = {"rank": {}, "eval": {}}
    require_rank = set(require_rank)
    after_eval = set(rank_after_eval)
    rank_groups = set(rank_groups) | after_eval
    for g, members in by_group.items():
        rng = random.Random(f"{seed}:{g}")
        order = list(range(len(members)))
        rng.shuffle(order)
        shuffled = [members[i] for i in order]
        if isinstance(n_rank, Mapping):
            nr = _per_group(n_rank, g, 0) or 0
        else:
            nr = (int(n_rank) if n_rank is not None else 0) if g in rank_groups else 0
        ne = _per_group(n_eval, g)
        if nr < 0 or (ne is not None and ne < 0):
            raise ValueError(f"n_rank/n_eval must be >= 0, got {nr}/{ne} for group {g!r}")
        if rank_items is not None:  # ranking from its own source: each split from its own pool
            pool = list(rank_pool[g])
            random.Random(f"{seed}:{g}:rank").shuffle(pool)
            rank, eval_ = pool[:nr], (shuffled if ne is None else shuffled[:ne])
            if len(rank) < nr and rank:
                warnings.warn(
                    f"{source}: group {g!r} has {len(pool)} ranking items; ranking gets {len(rank)} of n_rank={nr}",
                    stacklevel=2,
                )
        elif g in after_eval:
            eval_ = shuffled if ne is None else shuffled[:ne]
            rank = (shuffled[len(eval_) :] + list((spare or {}).get(g, ())))[:nr]
            if len(rank) < nr and (rank or g not in require_rank):  # (an empty required split raises below)
                warnings.warn(
                    f"{source}: group {g!r} ranks on the items its evaluation split leaves "
                    f"({len(members)} items, n_eval={ne}); ranking gets {len(rank)} of n_rank={nr}",
                    stacklevel=2,
                )
        else:
            rank = shuffled[:nr]
            rest = shuffled[len(rank) :]
            eval_ = rest if ne is None else rest[:ne]
        if ne is not None and len(eval_) < ne and len(members) > 0:
            warnings.warn(
                f"{source}: group {g!r} has {len(members)} items; n_rank={nr} + n_eval={ne} "
                f"requested, evaluation gets {len(eval_)}",
                stacklevel=2,
            )
        if g in require_rank and nr > 0 and not rank:
            hint = (
                f"; it ranks on the items its evaluation split (n_eval={ne}) leaves: lower n_eval (an int) "
                "or provide more items"
                if g in after_eval
                else ""
            )
            if rank_items is not None:
                hint = f"; its ranking items come from a separate source, which has {len(rank_pool[g])} {g!r} items"
            raise SplitError(f"{source}: the ranking split of group {g!r} is empty ({len(members)} items){hint}")
        if not eval_:
            raise SplitError(
                f"{source}: the evaluation split of group {g!r} is empty ({len(members)} items "
                f"in the group, n_rank={nr}, n_eval={ne}); provide more {g!r} items or lower n_rank"
            )
        out["rank"][g] = rank
        out["eval"][g] = eval_
    return out


def without_repeats(items: Iterable[Any], key: Callable[[Any], Any]) -> tuple[list, int]:
    """`items` with only the first of those that share a `key` (order kept), and how many were
    dropped."""
    items = list(items)
    seen: set = set()
    kept = []
    for it in items:
        k = key(it)
        if k not in seen:
            seen.add(k)
            kept.append(it)
    return kept, len(items) - len(kept)


def check_disjoint(splits: Mapping[str, Mapping[str, Sequence[Any]]], key: Callable[[Any], Any], source: str) -> None:
    """Raise `SplitOverlapError` when an item of the ranking split (any group) has the `key` of one
    in the evaluation split (any group): the ranking would have seen what is evaluated."""
    ranked = {key(it) for items in splits.get("rank", {}).values() for it in items}
    both = sorted({key(it) for items in splits.get("eval", {}).values() for it in items} & ranked)
    if both:
        raise SplitOverlapError(
            f"{source}: {len(both)} item(s) are in both the ranking and the evaluation split (e.g. {both[0]!r}); "
            "the two must never share an item"
        )


# ------------------------------------------------------------------------------------------
# Outputs and the Task base class
# ------------------------------------------------------------------------------------------


@dataclass
class GroupOutputs:
    """What a model produced for one group: per item, the raw input, the model input, outputs."""

    inputs: list[str]  # question / prompt text as in the data
    prompts: list[str]  # what the model was fed (chat template applied if any)
    outputs: list[list[str]]  # per item, one or more generations
    references: list[list[str]] | None = None  # accepted answers (QA)

    def __len__(self) -> int:
        return len(self.inputs)

    def first_output(self, i: int) -> str:
        """Item `i`'s first generation ("" when it has none)."""
        return self.outputs[i][0] if self.outputs[i] else ""

    def reference_lists(self) -> list[list[str]]:
        """The accepted answers / reference captions per item; a ValueError if there are none."""
        if self.references is None:
            raise ValueError("these outputs carry no references to score against")
        return self.references


@dataclass
class TaskOutputs:
    task: str
    split: str
    desc: str
    groups: dict[str, GroupOutputs] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def empty_outputs(outputs: TaskOutputs) -> dict[str, Any]:
    """How many of the generations (every group, item and continuation) are empty after stripping
    whitespace: ``{"n_empty", "n_outputs", "empty_fraction"}`` (the fraction None without outputs).
    An edit that silences the model shows here, whatever the task's metrics make of it."""
    texts = [o for go in outputs.groups.values() for outs in go.outputs for o in outs]
    n_empty = sum(1 for o in texts if not o.strip())
    return {"n_empty": n_empty, "n_outputs": len(texts), "empty_fraction": n_empty / len(texts) if texts else None}


def group_counts(items: Iterable[Any]) -> dict[str, int]:
    """How many of `items` each group has (for a task's data provenance)."""
    items = list(items)
    return {g: sum(it.group == g for it in items) for g in GROUPS}


@dataclass(kw_only=True)
class TaskConfig:
    """The keys every task shares: a run config's ``task`` node, with the keys of its task kind
    (each kind subclasses this: `QAConfig`, `ToxicityConfig`, `ClassificationConfig`,
    `CaptioningConfig`). The defaults here are the only ones: the Hydra configs in ``conf/task/``
    hold only what differs. ``build_task({...})`` builds the kind's config from a dict and refuses
    a key it does not have."""

    #: the registered task (`known_tasks()`): which Task class reads this config
    name: str = "task"
    #: a shipped concept name (headpursuit/data/concepts), a word-list file, a list of words, or a
    #: `Concept`; the ranking's dictionary and the concept metrics
    concept: Any = None
    #: ranking items: an int for the concept group (and for each other group of `rank_groups`), or
    #: ``{concept: n, control: n}``
    n_rank: Any = 30
    #: evaluation items per group: an int, None (every item the ranking split leaves), or
    #: ``{concept: n, control: n}``
    n_eval: Any = 50
    #: which groups' ranking-split items feed the ranking: None or ``[concept]`` (the concept group);
    #: ``[concept, control]`` also ranks on n_rank control items, taken from those the evaluation
    #: split does not use (the evaluation split is the same either way)
    rank_groups: list[str] | None = None
    #: seeds the ranking/evaluation split (and a task's sampling)
    seed: int = 0
    #: rows per generate batch: an int >= 1, or "auto" (the largest that fits the device; text tasks)
    batch_size: Any = 8
    #: generations per group copied into the results as examples
    n_examples: int = 3
    #: where a pipeline captures the ranking activations (`capture_heads` positions: last_prompt |
    #: answer | answer_concept | all | prompt_mean | image_mean); ours: answer_concept, the positions
    #: predicting a concept token in the model's own answer; the paper: prompt_mean / image_mean. The
    #: task itself does not read it.
    positions: str = "answer_concept"


class Task(abc.ABC):
    """A task: data split into ranking/evaluation sets, prompts, generation and metrics.

    Subclasses set `name`, load their items in `__init__` (each item has ``.group``), call
    `self._split(items)`, and implement `ranking_samples`, `generate` and `score`.
    """

    name: str = "task"
    #: whether `generate_many` runs several edits in the same batches (True) or one at a time
    shares_edit_batches: bool = False
    #: the metric whose specificity a run reports as its one headline number (results.json keeps
    #: every metric's); None: none
    headline_metric: str | None = None

    #: the config dataclass of this task kind (`build_task` builds it from a dict)
    config_class: type[TaskConfig] = TaskConfig

    def __init__(self, config: TaskConfig, tokenizer: Any = None, *, concept: Any = None):
        """`config`: this task's settings (its `config_class`); `tokenizer` turns a concept name or
        word list into token ids (``build_task(config, lm)`` passes the model's); `concept`: the
        concept a subclass derived itself (e.g. from class names), in place of `config.concept`."""
        self.config = config
        self._concept = resolve_concept(config.concept if concept is None else concept, tokenizer)
        #: the word-list file the concept was read from (None: words given as a list); subclasses
        #: may rebuild the concept from part of its words, this stays the file read
        self.concept_file: str | None = getattr(self._concept, "word_file", None)
        self.n_rank = config.n_rank
        self.n_eval = config.n_eval
        self.rank_groups = parse_rank_groups(config.rank_groups)
        self.seed = int(config.seed)
        self.batch_size: BatchSize = parse_batch_size(config.batch_size)
        self.n_examples = int(config.n_examples)
        self.splits: dict[str, dict[str, list]] = {}
        self.data_source: dict = {}

    @property
    def concept(self) -> Any:
        return self._concept

    @property
    def ranking_groups(self) -> tuple[str, ...]:
        """The groups whose ranking split feeds `ranking_samples` (`rank_groups` or the default)."""
        return self.rank_groups or DEFAULT_RANK_GROUPS

    def extra_rank_groups(self) -> tuple[str, ...]:
        """Groups ranked beyond the default rule from items the evaluation split leaves: with an
        int `n_rank` and ``rank_groups=[concept, control]``, the control group. (A ``{group: n}``
        `n_rank` is explicit per group and splits as it always has.)"""
        if isinstance(self.n_rank, Mapping):
            return ()
        return tuple(g for g in self.ranking_groups if g not in DEFAULT_RANK_GROUPS)

    def item_key(self, item: Any) -> str | None:
        """What makes two items the same question or prompt (text tasks: its normalised text);
        None for items that are not compared (e.g. images)."""
        return None

    def _drop_repeats(self, items: Sequence[Any], source: str, *, count_as: str = "duplicates_dropped") -> list:
        """`items` without repeats (the same `item_key` as an earlier item, whatever its group): a
        question must not be ranked on and evaluated on at once, nor count twice. Logs a warning
        naming the count and `source`, and records the count in `data_source[count_as]`."""
        if not items or self.item_key(items[0]) is None:
            return list(items)
        kept, dropped = without_repeats(items, self.item_key)
        self.data_source[count_as] = dropped
        if dropped:
            log.warning(
                "%s: %s: dropped %d repeated item(s) (the same text as an earlier row, compared after "
                "normalisation); %d left",
                self.name,
                source,
                dropped,
                len(kept),
            )
        return kept

    def _split(
        self,
        items: Sequence[Any],
        source: str,
        spare: Mapping[str, Sequence[Any]] | None = None,
        *,
        rank_items: Sequence[Any] | None = None,
    ) -> None:
        """`self.splits` from `items` (`rank_items`: ranking items from a separate source, see
        `split_items`); then no item may be in both splits (`check_disjoint`)."""
        self.splits = split_items(
            items,
            self.n_rank,
            self.n_eval,
            seed=self.seed,
            require_rank=self.ranking_groups,
            rank_after_eval=self.extra_rank_groups(),
            spare=spare,
            rank_items=rank_items,
            source=source,
        )
        if items and self.item_key(items[0]) is not None:
            check_disjoint(self.splits, self.item_key, source)

    def ranking_items(self) -> list:
        """The ranking-split items of `ranking_groups`, concept group first; raises ValueError
        when one of them is empty."""
        out = []
        for g in self.ranking_groups:
            items = self.items("rank", g)
            if not items:
                raise ValueError(
                    f"{self.name}: the {g} ranking split is empty (n_rank={self.n_rank}, "
                    f"rank_groups={list(self.ranking_groups)})"
                )
            out += items
        return out

    def items(self, split: str = "eval", group: str | None = None) -> list:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; known: {sorted(self.splits)}")
        if group is None:
            return [it for g in GROUPS for it in self.splits[split].get(g, [])]
        return list(self.splits[split].get(group, []))

    # --- the contract ---------------------------------------------------------------------
    @abc.abstractmethod
    def ranking_samples(self, lm: LoadedModel) -> list:
        """CaptureSamples (formatted prompt + the model's own answer) from the ranking split."""

    @abc.abstractmethod
    def generate(self, lm: LoadedModel, *, split: str = "eval", desc: str = "") -> TaskOutputs:
        """Run the model on a split; everything `score` needs, nothing scored yet."""

    @abc.abstractmethod
    def score(self, outputs: TaskOutputs, **kwargs: Any) -> dict:
        """Metrics dict from generations (see module docstring for the layout)."""

    def generate_many(
        self,
        lm: LoadedModel,
        edits: Sequence[Mapping[Head, float]],
        *,
        split: str = "eval",
        desc: str = "",
        where: str = "all",
    ) -> list[TaskOutputs]:
        """`generate` under each of `edits` (``{}``: the unedited model): ``[generate under
        scale_heads(lm, edit, where) for edit in edits]`` (`where`: the positions every edit acts
        on). Here one edit at a time (what sampling tasks need: their draws depend on the batch);
        `AnswerTask` runs all edits in the same batches."""
        outputs = []
        for edit in edits:
            with scale_heads(lm, dict(edit), where=where):
                outputs.append(self.generate(lm, split=split, desc=desc))
        return outputs

    def evaluate(self, lm: LoadedModel, *, desc: str = "", split: str = "eval", **score_kwargs: Any) -> dict:
        """`score(generate(lm))`: per-group metrics, counts and a few examples."""
        return self.score(self.generate(lm, split=split, desc=desc), **score_kwargs)

    def provenance(self) -> dict:
        concept = self.concept
        return {
            "task": self.name,
            "concept": getattr(concept, "name", None),
            "concept_n_words": len(getattr(concept, "words", []) or []),
            "seed": self.seed,
            "n_rank": {g: len(v) for g, v in self.splits.get("rank", {}).items()},
            "rank_groups": list(self.ranking_groups),
            "n_eval": {g: len(v) for g, v in self.splits.get("eval", {}).items()},
            "data": {**self.data_source, "content": self.data_identity()},
        }

    def data_identity(self) -> dict[str, str]:
        """The content of the input data the task read, keyed by the config key that named it:
        ``data_path`` / ``rank_data_path`` / ``fixture_file`` (a file's or folder's sha256; the
        shipped file read when data_path is null), ``hub_split`` / ``hub_rank_split``
        (`loaders.split_identity`), ``concept`` (its word-list file's sha256), and ``images`` (an
        image task's decoded images). A run's cache keys hold these in place of the keys' values
        (`app.cache.task_identity`): no paths, so an edited file is a miss and the same file
        elsewhere a hit."""
        content = dict(self.data_source.get("content") or {})
        if self.concept_file is not None:
            content["concept"] = content_digest(self.concept_file)
        return content

    # --- helpers for subclasses -------------------------------------------------------------
    def _group_desc(self, desc: str, group: str) -> str:
        """The progress label of one group's generations: the task, the caller's `desc`, the group."""
        return " ".join(x for x in (self.name, desc, group) if x)

    def _answer_scores(self, outputs: TaskOutputs) -> dict:
        """Per-group answer metrics (accuracy, concept rate, ...), their per-item values (`items`)
        and counts, for word-answer tasks."""
        from headpursuit.metrics.text import answer_items, mean_of_items

        result: dict[str, Any] = {"n": {}, ITEMS_KEY: {}}
        for g in GROUPS:
            go = outputs.groups[g]
            preds = [o[0] for o in go.outputs]
            result[ITEMS_KEY][g] = answer_items(preds, go.reference_lists(), self.concept)
            result[g] = mean_of_items(result[ITEMS_KEY][g])
            result["n"][g] = len(preds)
        return result

    def _example_indices(self, outputs: TaskOutputs) -> Iterator[tuple[str, GroupOutputs, int]]:
        """(group, its outputs, item index) for the first `n_examples` items of every group."""
        for g in GROUPS:
            go = outputs.groups.get(g)
            if go is None:
                continue
            for i in range(min(self.n_examples, len(go))):
                yield g, go, i

    def _examples(self, outputs: TaskOutputs) -> list[dict]:
        return [
            {"prompt": go.inputs[i], "output": go.first_output(i), "group": g}
            for g, go, i in self._example_indices(outputs)
        ]

    def __repr__(self) -> str:
        sizes = {s: {g: len(v) for g, v in d.items()} for s, d in self.splits.items()}
        return f"{type(self).__name__}(concept={getattr(self.concept, 'name', None)!r}, splits={sizes})"
