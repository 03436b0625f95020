"""Checks on a resolved run config that need no model: fail fast, naming the key.

validate_config(config)                 # raises ConfigError("intervention.alpha must be ...")
k = resolve_k(config["intervention"], n_total_heads, model_name)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from headpursuit.capture import POSITIONS
from headpursuit.errors import ConfigError
from headpursuit.heads import HEAD_MODES, RANDOM_POOLS, check_heads, check_layer_counts_k, parse_heads
from headpursuit.ranking import METHODS
from headpursuit.tasks import known_tasks, task_factory
from headpursuit.tasks.base import DEFAULT_RANK_GROUPS, GROUPS, parse_batch_size, parse_rank_groups
from headpursuit.tasks.image_task import ImageTask

__all__ = [
    "ConfigError",
    "LOGGER_MODES",
    "validate_config",
    "resolve_k",
    "check_explicit_heads",
    "check_rank_task",
    "check_task_sizes",
    "check_random_controls",
]

LOGGER_MODES = ("online", "offline", "disabled")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _on_gpu(device: Any) -> bool:
    """Whether `device` (a config value: auto, cpu, cuda, cuda:N) is a GPU here."""
    if str(device) == "auto":
        return torch.cuda.is_available()
    return str(device) != "cpu"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Checks that need no model; raises ConfigError naming the key. `cfg` is a resolved dict."""
    for group in ("model", "task", "ranking", "intervention"):
        if not isinstance(cfg.get(group), Mapping):
            raise ConfigError(f"config group {group!r} is missing; choose one with {group}=<option>")
    model = cfg["model"]
    if not isinstance(model.get("name_or_path"), str) or not model["name_or_path"]:
        raise ConfigError("model.name_or_path must be a registry name, hub id or directory")

    task = cfg["task"]
    if task.get("name") not in known_tasks():
        raise ConfigError(f"task.name={task.get('name')!r} is not a known task; known: {', '.join(known_tasks())}")
    if task.get("positions", "answer_concept") not in POSITIONS:
        raise ConfigError(f"task.positions={task.get('positions')!r} is not one of {', '.join(POSITIONS)}")
    if "batch_size" in task:
        parse_batch_size(task["batch_size"], "task.batch_size")
    check_task_sizes(task)
    check_rank_task(cfg.get("rank_task"))
    cbs = cfg.get("capture_batch_size", 8)
    if not (cbs == "auto" or (_is_int(cbs) and cbs >= 1)):
        raise ConfigError(f"capture_batch_size must be an integer >= 1 or auto, got {cbs!r}")
    factory = task_factory(task["name"])
    image_task = isinstance(factory, type) and issubclass(factory, ImageTask)
    if cbs == "auto" and image_task and _on_gpu(cfg.get("device", "auto")):
        raise ConfigError(
            f"capture_batch_size=auto does not model image tokens (task {task['name']}) on a GPU; "
            "set capture_batch_size=8 (or device=cpu)"
        )

    ranking = cfg["ranking"]
    if not isinstance(ranking.get("method"), str):
        raise ConfigError("ranking.method must be a ranking method name")
    methods = sorted(METHODS)
    if ranking["method"] not in methods:
        raise ConfigError(f"ranking.method={ranking['method']!r} is unknown; known: {', '.join(methods)}")
    if "k" in ranking and not (_is_int(ranking["k"]) and ranking["k"] >= 1):
        raise ConfigError(f"ranking.k (SOMP steps) must be an integer >= 1, got {ranking['k']!r}")

    iv = cfg["intervention"]
    if not _is_number(iv.get("alpha")):
        raise ConfigError(f"intervention.alpha must be a number (e.g. -1, 0, 2), got {iv.get('alpha')!r}")
    mode = iv.get("heads", "ranked")
    if mode not in HEAD_MODES:
        raise ConfigError(f"intervention.heads={mode!r} is not one of {', '.join(HEAD_MODES)}")
    kf = iv.get("k_frac")
    if kf is not None and not (_is_number(kf) and 0 < float(kf) <= 1):
        raise ConfigError(f"intervention.k_frac must be a number in (0, 1], got {kf!r}")
    if kf is None and mode != "explicit":
        k = iv.get("k")
        if not (_is_int(k) and k >= 1):
            raise ConfigError(f"intervention.k must be an integer >= 1, got {k!r}")
    if mode == "explicit":
        if not iv.get("explicit"):
            raise ConfigError("intervention.heads=explicit needs intervention.explicit=[[layer,head],...]")
        parse_heads(iv["explicit"])  # format errors name the key
    if not isinstance(iv.get("batched_edits", True), bool):
        raise ConfigError(
            f"intervention.batched_edits must be true (all edits in one batched pass) or false (one at a "
            f"time), got {iv.get('batched_edits')!r}"
        )
    batch_alphas = iv.get("batch_alphas") or []
    if not isinstance(batch_alphas, (list, tuple)) or not all(_is_number(a) for a in batch_alphas):
        raise ConfigError(
            f"intervention.batch_alphas must be a list of numbers (e.g. the sweep's alphas: "
            f"intervention.batch_alphas=[-1,5]), got {batch_alphas!r}"
        )
    if iv.get("random_pool", "all") not in RANDOM_POOLS:
        raise ConfigError(f"intervention.random_pool={iv.get('random_pool')!r} is not one of {', '.join(RANDOM_POOLS)}")
    check_random_controls(iv)
    if not isinstance(iv.get("random_strict", False), bool):
        raise ConfigError(
            f"intervention.random_strict must be true (a layer short of heads for random_pool=layer_counts "
            f"fails the run) or false (it borrows from the nearest layers), got {iv.get('random_strict')!r}"
        )
    logger = cfg.get("logger") or {}
    if logger.get("mode", "disabled") not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={logger.get('mode')!r} is not one of {', '.join(LOGGER_MODES)}")
    if not _is_int(cfg.get("seed", 0)):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    # The layout declared in the model config lets k be checked before a (slow) model load.
    n_layers, n_heads = model.get("n_layers"), model.get("n_heads")
    if _is_int(n_layers) and _is_int(n_heads):
        k = resolve_k(iv, n_layers * n_heads, model_name=model["name_or_path"])
        if iv.get("random_controls", True) and iv.get("random_pool", "all") == "layer_counts":
            check_layer_counts_k(k, n_layers * n_heads)
        if mode == "explicit":
            check_explicit_heads(iv["explicit"], n_layers, n_heads)
    hb = cfg.get("heartbeat_s", 30)
    if not (_is_number(hb) and float(hb) >= 0):
        raise ConfigError(f"heartbeat_s must be a number of seconds >= 0 (0: no heartbeat thread), got {hb!r}")
    if not isinstance(cfg.get("deterministic", False), bool):
        raise ConfigError(f"deterministic must be true or false, got {cfg.get('deterministic')!r}")


def check_rank_task(rank_task: Any) -> None:
    """`rank_task` (the task the heads are ranked on in a transfer run): null, or a task config
    with a known name and capture positions."""
    if rank_task is None:
        return
    fix = "compose one from conf/task/ with +task@rank_task=<name> (e.g. +task@rank_task=cls_svhn), or rank_task=null"
    if not isinstance(rank_task, Mapping):
        raise ConfigError(f"rank_task must be null or a task config, got {rank_task!r}; {fix}")
    if rank_task.get("name") not in known_tasks():
        raise ConfigError(
            f"rank_task.name={rank_task.get('name')!r} is not a known task (known: {', '.join(known_tasks())}); {fix}"
        )
    if rank_task.get("positions", "answer_concept") not in POSITIONS:
        raise ConfigError(f"rank_task.positions={rank_task.get('positions')!r} is not one of {', '.join(POSITIONS)}")
    check_task_sizes(rank_task, node="rank_task")


#: what the fixes of `check_task_sizes` suggest: sizes every task's shipped data can supply
SIZE_FIXES = {"n_rank": 8, "n_eval": 8, "max_new_tokens": 16, "n_continuations": 3}


def check_task_sizes(task: Mapping[str, Any], node: str = "task") -> None:
    """The sizes of a task node (`task` or `rank_task`) that would otherwise fail, or do nothing,
    only after the model loads: `n_rank` (an int for the concept group, or ``{concept: ..,
    control: ..}``; every group that ranks, `rank_groups`, needs at least one item), `n_eval` (an
    int >= 1, null for all, or per group), `max_new_tokens` and `n_continuations` (>= 1)."""
    fix = {key: f"{node}.{key}={n}" for key, n in SIZE_FIXES.items()}
    if "n_rank" in task:
        n_rank = task["n_rank"]
        if isinstance(n_rank, Mapping):
            ranked = parse_rank_groups(task.get("rank_groups")) or DEFAULT_RANK_GROUPS
            _check_per_group(n_rank, f"{node}.n_rank", fix["n_rank"])
            short = [g for g in ranked if not n_rank.get(g)]
            if short:
                raise ConfigError(
                    f"{node}.n_rank={dict(n_rank)!r} gives no item to the group(s) {short}, which rank "
                    f"({node}.rank_groups): the ranking would have nothing to read. "
                    f"Fix: {fix['n_rank']} (the concept group), or {node}.n_rank={{concept:8,control:8}}"
                )
        elif not (_is_int(n_rank) and n_rank >= 1):
            raise ConfigError(
                f"{node}.n_rank={n_rank!r}: the ranking needs at least one item (an integer >= 1 for the "
                f"concept group, or {{concept: .., control: ..}}). Fix: {fix['n_rank']}"
            )
    n_eval = task.get("n_eval")
    if isinstance(n_eval, Mapping):
        _check_per_group(n_eval, f"{node}.n_eval", fix["n_eval"], allow_null=True)
    elif n_eval is not None and not (_is_int(n_eval) and n_eval >= 1):
        raise ConfigError(
            f"{node}.n_eval={n_eval!r}: evaluation needs at least one item per group (an integer >= 1, "
            f"null for every item, or {{concept: .., control: ..}}). Fix: {fix['n_eval']}"
        )
    for key, what in (
        ("max_new_tokens", "tokens generated per answer"),
        ("n_continuations", "continuations per prompt"),
    ):
        if key in task and not (_is_int(task[key]) and task[key] >= 1):
            raise ConfigError(
                f"{node}.{key}={task[key]!r}: the number of {what} must be an integer >= 1 (with 0 "
                f"nothing is generated). Fix: {fix[key]}"
            )


def _check_per_group(sizes: Mapping[str, Any], key: str, fix: str, *, allow_null: bool = False) -> None:
    """A ``{group: size}`` mapping: known groups, sizes integers >= 0 (or null with `allow_null`)."""
    unknown = sorted(set(sizes) - set(GROUPS))
    bad = {g: v for g, v in sizes.items() if not ((_is_int(v) and v >= 0) or (allow_null and v is None))}
    if unknown or bad:
        raise ConfigError(
            f"{key}={dict(sizes)!r}: per group it takes {' and '.join(GROUPS)} with integers >= 0"
            f"{' (or null: every item)' if allow_null else ''}"
            f"{f'; unknown group(s) {unknown}' if unknown else ''}. Fix: {fix}"
        )


def check_random_controls(iv: Mapping[str, Any]) -> None:
    """`intervention.random_controls` (a bool) and `intervention.random_seeds` (integers; at least
    one when the controls are on: an empty list would record a run without any control)."""
    on = iv.get("random_controls", True)
    if not isinstance(on, bool):
        raise ConfigError(f"intervention.random_controls must be true or false, got {on!r}")
    seeds = iv.get("random_seeds")
    if not isinstance(seeds, (list, tuple)) or not all(_is_int(s) for s in seeds):
        raise ConfigError(
            f"intervention.random_seeds must be a list of integers ([] with intervention.random_controls=false), "
            f"got {seeds!r}. Fix: intervention.random_seeds=[0,1,2]"
        )
    if on and not seeds:
        raise ConfigError(
            "intervention.random_seeds is empty while intervention.random_controls=true: the run would "
            "have no random-head control to compare the edit with. Fix: intervention.random_seeds=[0,1,2], "
            "or intervention.random_controls=false (no controls)"
        )


def check_explicit_heads(explicit: Any, n_layers: int, n_heads: int) -> None:
    """`intervention.explicit` against the layout the model config declares (before any load)."""
    heads = parse_heads(explicit)
    try:
        check_heads(heads, n_layers, n_heads)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} in the layout of model.n_layers={n_layers}, model.n_heads={n_heads}. Fix: heads "
            f"within it, e.g. intervention.explicit=[[0,0],[{n_layers - 1},{n_heads - 1}]]"
        ) from exc


def resolve_k(iv: Mapping[str, Any], n_total: int, model_name: str = "the model") -> int:
    """Number of heads to edit: `k`, or `round(k_frac * n_total)` (at least 1) when k_frac is set."""
    if iv.get("heads") == "explicit":
        k = len(parse_heads(iv.get("explicit") or []))
    elif iv.get("k_frac") is not None:
        k = max(1, int(round(float(iv["k_frac"]) * n_total)))
    else:
        k = iv.get("k")  # type: ignore[assignment]  # checked on the next line
    if not _is_int(k) or k < 1:
        raise ConfigError(f"intervention.k must be an integer >= 1, got {k!r}")
    if k > n_total:
        raise ConfigError(
            f"intervention.k={k} is larger than the number of heads of {model_name} "
            f"({n_total}); use intervention.k <= {n_total} or intervention.k_frac"
        )
    return k
