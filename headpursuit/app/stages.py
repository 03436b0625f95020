"""The stages of a run, each behind the sweep's disk cache (see `headpursuit.app.cache`).

    lm, loaded_before = load_model_memo(conf.model, device, dtype)    # once per process
    task = build_task_memo(conf.task, lm)
    samples = ranking_samples_cached(cache, task, lm, ident)           # the model's greedy answers
    acts, acts_key = capture_cached(cache, lm, samples, positions, concept_token_ids(task.concept))
    scores = rank_cached(cache, acts, acts_key, lm, task.concept, ranking_config(conf), seed)
    result = evaluate_cached(cache, lm, task, ident, {head: alpha}, label="edited", seed=seed)
    sets = random_control_sets(heads, lm.layout, k=k, seeds=[0, 1], pool="layer_counts")  # before any eval
    per_seed = random_controls(cache, lm, task, ident, sets, alpha=alpha, seed=seed)

Batched edits (`intervention.batched_edits`, for tasks with `Task.shares_edit_batches`): first
``generated = generate_uncached(cache, lm, task, ident, [{}, edited, *random edits], seed=seed)``
runs every edit whose evaluation is not cached in one `Task.generate_many` pass; then the calls
above, given ``generated=generated``, score those outputs (outside the hooks) instead of
generating. Each evaluation keeps its own cache key and hit flag, so the cache, resume and
results.json are those of the one-edit-at-a-time path.

Every cached stage records whether it was served from the cache in `cache.hits` under its label
(samples, acts, scores, baseline, edited, random); the run's record reports those flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from headpursuit.app.cache import RunCache, stable_hash
from headpursuit.capture import CaptureSample, activation_key, capture_heads
from headpursuit.heads import ControlDraw, Head, distinct_control_draws
from headpursuit.intervention import scale_heads
from headpursuit.models import load_model
from headpursuit.ranking import RankingConfig, rank_heads
from headpursuit.store import entry_key
from headpursuit.tasks import TaskConfig, build_task, task_config
from headpursuit.tasks.base import empty_outputs

if TYPE_CHECKING:
    from headpursuit.app.schema import AppConfig, ModelConfig
    from headpursuit.capture import HeadActivations
    from headpursuit.concepts import Concept
    from headpursuit.models import AttentionLayout, LoadedModel
    from headpursuit.ranking import HeadScores
    from headpursuit.tasks import Task, TaskOutputs

__all__ = [
    "load_model_memo",
    "build_task_memo",
    "concept_token_ids",
    "rank_task_config",
    "transfer_info",
    "ranking_samples_cached",
    "capture_cached",
    "rank_cached",
    "evaluate_with_edits",
    "score_outputs",
    "eval_key",
    "evaluate_cached",
    "generate_uncached",
    "random_control_sets",
    "random_control_edits",
    "random_controls",
]

_MODEL_MEMO: dict[str, LoadedModel] = {}
_TASK_MEMO: dict[str, Task] = {}


def load_model_memo(model_cfg: ModelConfig, device: str, dtype: str) -> tuple[LoadedModel, bool]:
    """(model, loaded earlier in this process): the jobs of a basic-launcher sweep share one load.

    Only the last model is kept (a sweep over models does not pile them up in memory).
    """
    key = stable_hash(asdict(model_cfg), device, dtype)
    if key in _MODEL_MEMO:
        return _MODEL_MEMO[key], True
    _MODEL_MEMO.clear()
    _TASK_MEMO.clear()
    lm = load_model(
        model_cfg.name_or_path,
        dtype=dtype,
        device=device,
        trust_remote_code=model_cfg.trust_remote_code,
        revision=model_cfg.revision,
        **model_cfg.kwargs,
    )
    _MODEL_MEMO[key] = lm
    return lm, False


#: tasks kept by `build_task_memo`: a transfer run builds two (`rank_task` and `task`)
TASK_MEMO_SIZE = 2


def build_task_memo(task_cfg: TaskConfig, lm: LoadedModel) -> Task:
    """The task for `task_cfg` on `lm`, built once per process (its data loads are not free); the
    last `TASK_MEMO_SIZE` are kept."""
    key = stable_hash(asdict(task_cfg), id(lm))
    if key not in _TASK_MEMO:
        while len(_TASK_MEMO) >= TASK_MEMO_SIZE:
            _TASK_MEMO.pop(next(iter(_TASK_MEMO)))  # the oldest (dicts keep insertion order)
        _TASK_MEMO[key] = build_task(task_cfg, lm)
    return _TASK_MEMO[key]


def rank_task_config(conf: AppConfig) -> TaskConfig:
    """The task config whose ranking samples and concept rank the heads: `rank_task` when set (a
    transfer run: heads from one task, evaluated on `task`), else `task`. Its ranking-sample,
    activation and score cache keys are that task's (`task_identity(rank_task, "ranking", its
    data_identity())`)."""
    return conf.rank_task if conf.rank_task is not None else conf.task


def transfer_info(config: Mapping[str, Any]) -> dict | None:
    """results.json `transfer`: {source, target} (each the task's `dataset`, else its `name`) of a
    run with `rank_task`; None without one. `config`: the resolved run config (a dict)."""
    if config["rank_task"] is None:
        return None

    def label(node: Mapping[str, Any]) -> str:
        task = task_config(node)
        return str(getattr(task, "dataset", None) or task.name)  # only image classification has a dataset

    return {"source": label(config["rank_task"]), "target": label(config["task"])}


def concept_token_ids(concept: Concept) -> list[int]:
    """The concept's token ids as a sorted list of ints (what capture and the cache keys take)."""
    return sorted(int(i) for i in concept.token_ids.tolist())


def ranking_samples_cached(cache: RunCache, task: Task, lm: LoadedModel, ident: dict) -> list[CaptureSample]:
    """The task's ranking samples (prompts + the model's own greedy answers), cached."""
    key = entry_key("samples", ident)

    def compute() -> list[dict]:
        # Plain dicts: the pickle does not depend on the CaptureSample class staying the same.
        return [
            {"prompt": s.prompt, "answer": s.answer, "image": s.image, "meta": s.meta} for s in task.ranking_samples(lm)
        ]

    rows, _ = cache.get_or_compute("samples", key, compute, fmt="pickle")
    return [
        CaptureSample(prompt=r["prompt"], answer=r["answer"], image=r.get("image"), meta=r.get("meta") or {})
        for r in rows
    ]


def capture_cached(
    cache: RunCache,
    lm: LoadedModel,
    samples: Sequence[CaptureSample],
    positions: str,
    concept_ids: Sequence[int],
    batch_size: int | str = 8,
) -> tuple[HeadActivations, str]:
    """(activations, their key): capture_heads with the run's cache as its store (one lock per
    entry, so parallel jobs extract once; the hit recorded under "acts")."""
    layers = list(range(lm.layout.n_layers))
    acts = capture_heads(
        lm,
        samples,
        positions=positions,
        batch_size=batch_size,
        concept_token_ids=concept_ids,
        cache_dir=cache,
        progress=False,
    )
    return acts, activation_key(lm, samples, positions, layers, concept_ids)


def rank_cached(
    cache: RunCache,
    acts: HeadActivations,
    acts_key: str,
    lm: LoadedModel,
    concept: Concept,
    ranking_cfg: RankingConfig,
    seed: int,
) -> HeadScores:
    """rank_heads, cached on (activations, concept, ranking config, seed, code)."""
    kwargs = asdict(ranking_cfg)
    method = kwargs.pop("method")
    key = entry_key("scores", acts_key, concept.name, concept_token_ids(concept), method, kwargs, seed)
    scores, _ = cache.get_or_compute(
        "scores", key, lambda: rank_heads(acts, lm, concept, method=method, seed=seed, **kwargs), fmt="pickle"
    )
    return scores


def evaluate_with_edits(
    lm: LoadedModel, task: Task, scales: Mapping[Head, float], *, desc: str = "", seed: int = 0, where: str = "all"
) -> dict:
    """Generate with the heads rescaled at `where` (hooks active), then score with the hooks
    removed: fluency scorers must see the unedited model."""
    torch.manual_seed(seed)
    with scale_heads(lm, dict(scales), where=where):
        outputs = task.generate(lm, desc=desc)
    return score_outputs(task, outputs, lm)


def score_outputs(task: Task, outputs: TaskOutputs, lm: LoadedModel) -> dict:
    """`task.score` (fluency under `lm`, unedited here) and the count of empty outputs
    (`empty_outputs`); both are cached with the evaluation, so a cached result has them too."""
    return {**task.score(outputs, fluency_model=lm), **empty_outputs(outputs)}


def eval_key(ident: dict, scales: Mapping[Head, float], seed: int, where: str = "all") -> str:
    """The cache key of one evaluation: (model, task config, the exact edit and where it acts,
    seed, code). `where` joins the key only when it matters (an edit, not at every position), so
    the baseline and every `where=all` evaluation keep the keys they had before `where` existed."""
    edit = sorted([int(a), int(b), float(s)] for (a, b), s in scales.items())
    if edit and where != "all":
        return entry_key("evals", ident, edit, seed, {"where": where})
    return entry_key("evals", ident, edit, seed)


def generate_uncached(
    cache: RunCache,
    lm: LoadedModel,
    task: Task,
    ident: dict,
    edits: Sequence[Mapping[Head, float]],
    *,
    seed: int,
    desc: str = "edits",
    where: str = "all",
) -> dict[str, TaskOutputs]:
    """{eval_key: outputs} for the `edits` whose evaluation is not cached, generated in one
    `task.generate_many` pass (the edits share batches; ``{}`` is the unedited model). Only for
    tasks with `shares_edit_batches` (greedy: the outputs do not depend on the batch); hand the
    result to `evaluate_cached(..., generated=...)`, which scores it. Every edit acts on `where`."""
    todo: dict[str, dict[Head, float]] = {}
    for edit in edits:
        key = eval_key(ident, edit, seed, where)
        # an unreadable entry counts as cached here: `evaluate_cached` recomputes it on its own
        if key not in todo and not cache.has("evals", key):
            todo[key] = dict(edit)
    if not todo:
        return {}
    torch.manual_seed(seed)
    outputs = task.generate_many(lm, list(todo.values()), desc=f"{desc} x{len(todo)}", where=where)
    return dict(zip(todo, outputs))


def evaluate_cached(
    cache: RunCache,
    lm: LoadedModel,
    task: Task,
    ident: dict,
    scales: Mapping[Head, float],
    *,
    label: str,
    seed: int,
    desc: str | None = None,
    generated: Mapping[str, TaskOutputs] | None = None,
    where: str = "all",
) -> dict:
    """evaluate_with_edits, cached on (model, task config, the exact edit and its `where`, seed,
    code) (`eval_key`); the hit is recorded under `label` (baseline, edited, random). With this
    edit's outputs in `generated` (`generate_uncached`) they are scored instead of generated anew."""
    key = eval_key(ident, scales, seed, where)
    outputs = (generated or {}).get(key)

    def compute() -> dict:
        if outputs is None:
            return evaluate_with_edits(lm, task, scales, desc=desc or label, seed=seed, where=where)
        torch.manual_seed(seed)  # the RNG state the one-at-a-time path scores under
        return score_outputs(task, outputs, lm)

    result, _ = cache.get_or_compute("evals", key, compute, label=label)
    return result


def random_control_sets(
    edited: Sequence[Head], layout: AttentionLayout, *, k: int, seeds: Sequence[int], pool: str, strict: bool = False
) -> list[ControlDraw]:
    """The random-head set of each seed, no two alike (drawn from `pool`, see
    `distinct_control_draws`: a repeat is redrawn; a pool with fewer distinct sets than seeds gives
    all of them; `strict`: `intervention.random_strict`). Cheap: drawn before any evaluation so a
    pool that cannot supply the heads fails the run at once."""
    draws, _ = distinct_control_draws(edited, layout.n_layers, layout.n_heads, k, seeds, pool, strict=strict)
    return draws


def random_control_edits(sets: Sequence[ControlDraw], alpha: float) -> list[dict[Head, float]]:
    """The edit of each random-head set: its heads rescaled by alpha."""
    return [{h: alpha for h in draw.heads} for draw in sets]


def random_controls(
    cache: RunCache,
    lm: LoadedModel,
    task: Task,
    ident: dict,
    sets: Sequence[ControlDraw],
    *,
    alpha: float,
    seed: int,
    generated: Mapping[str, TaskOutputs] | None = None,
    where: str = "all",
) -> list[dict]:
    """The random-head controls: per set of `sets`, its heads rescaled by alpha at the edit's
    positions (`where`) and evaluated like the edited heads (scored from `generated` where it has
    them). [{seed, heads, <evaluation>}, ...] (`record` adds each set's borrowed heads)."""
    per_seed = []
    for draw, edit in zip(sets, random_control_edits(sets, alpha)):
        result = evaluate_cached(
            cache,
            lm,
            task,
            ident,
            edit,
            label="random",
            desc=f"random{draw.seed}",
            seed=seed,
            generated=generated,
            where=where,
        )
        per_seed.append({"seed": draw.seed, "heads": [list(h) for h in draw.heads], **result})
    return per_seed


def cache_other_alphas(
    cache: RunCache,
    lm: LoadedModel,
    task: Task,
    ident: dict,
    heads: Sequence[Head],
    sets: Sequence[ControlDraw],
    alphas: Sequence[float],
    seed: int,
    generated: Mapping[str, TaskOutputs],
    where: str = "all",
) -> None:
    """Score and cache, for each of `alphas`, the edited heads and every random set rescaled by it
    (at `where`), from outputs `generate_uncached` made in this job's batched pass
    (`intervention.batch_alphas`): the sweep's job for that alpha then finds every evaluation in the cache."""
    for a in alphas:
        evaluate_cached(
            cache,
            lm,
            task,
            ident,
            {h: a for h in heads},
            label="other_alphas",
            seed=seed,
            generated=generated,
            where=where,
        )
        for s, edit in zip([draw.seed for draw in sets], random_control_edits(sets, a)):
            evaluate_cached(
                cache,
                lm,
                task,
                ident,
                edit,
                label="other_alphas",
                desc=f"random{s}",
                seed=seed,
                generated=generated,
                where=where,
            )
