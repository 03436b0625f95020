"""Checks on a run config that need no model: fail fast, naming the key.

    conf = validate_config(cfg)         # the typed config (AppConfig); ConfigError("intervention.alpha ...")
    k = resolve_k(conf.intervention, n_total_heads, model_name)

The schema (`headpursuit.app.schema`) already holds every key and its type: a config composed by
Hydra has been checked against it. `typed_config` checks a plain mapping the same way (tests, a
config built in code); what remains here is what a type does not say: choices, ranges, the keys
whose type is a union, and what needs two keys at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from headpursuit.app.schema import RENAMED_KEYS, AppConfig, InterventionConfig, JobConfig
from headpursuit.capture import POSITIONS
from headpursuit.errors import ConfigError
from headpursuit.heads import HEAD_MODES, RANDOM_POOLS, check_heads, check_layer_counts_k, parse_heads
from headpursuit.intervention import WHERE
from headpursuit.ranking import METHODS, RankingConfig
from headpursuit.stats import check_interval_config
from headpursuit.tasks import task_config, task_factory
from headpursuit.tasks.base import DEFAULT_RANK_GROUPS, GROUPS, TaskConfig, parse_batch_size, parse_rank_groups
from headpursuit.tasks.image_task import ImageTask

__all__ = [
    "ConfigError",
    "LOGGER_MODES",
    "schema_config",
    "typed_config",
    "check_job",
    "ranking_config",
    "validate_config",
    "resolve_k",
    "check_explicit_heads",
    "check_rank_task",
    "check_task_sizes",
    "check_random_controls",
]

LOGGER_MODES = ("online", "offline", "disabled")

Schema = TypeVar("Schema")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _on_gpu(device: Any) -> bool:
    """Whether `device` (a config value: auto, cpu, cuda, cuda:N) is a GPU here."""
    if str(device) == "auto":
        return torch.cuda.is_available()
    return str(device) != "cpu"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def schema_config(cfg: Any, schema: type[Schema]) -> Schema:
    """`cfg` (a composed DictConfig, or a mapping of some keys: the others take the schema's
    defaults) as an instance of the dataclass `schema` (`AppConfig`, `AtlasAppConfig`). A key the
    schema does not have, a value of the wrong type or a group left unchosen is a ConfigError
    naming the key."""
    if isinstance(cfg, schema):
        return cfg
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        for f in fields(schema):  # type: ignore[arg-type]  # a dataclass type
            if OmegaConf.is_missing(node, f.name):
                raise ConfigError(f"config group {f.name!r} is missing; choose one with {f.name}=<option>")
        conf = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).split("\n")[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    assert isinstance(conf, schema)
    return conf


def typed_config(cfg: Any) -> AppConfig:
    """`cfg` as the typed `AppConfig` (`schema_config`), its `task` and `rank_task` as their kinds'
    `TaskConfig`. A key the schema does not have, or a value of the wrong type, is a ConfigError
    naming the key."""
    if isinstance(cfg, AppConfig):
        return cfg
    conf = schema_config(cfg, AppConfig)
    conf.task = task_config(conf.task)
    if conf.rank_task is not None:
        if not isinstance(conf.rank_task, (Mapping, TaskConfig)):
            raise ConfigError(f"rank_task must be null or a task config, got {conf.rank_task!r}; {RANK_TASK_FIX}")
        try:
            conf.rank_task = task_config(conf.rank_task, node="rank_task")
        except ConfigError as exc:
            raise ConfigError(f"{exc}; {RANK_TASK_FIX}") from None
    return conf


def ranking_config(conf: AppConfig) -> RankingConfig:
    """The run's ranking options as the library's `RankingConfig` (without the renamed keys)."""
    return RankingConfig(**{f.name: getattr(conf.ranking, f.name) for f in fields(RankingConfig)})


def check_renamed(conf: AppConfig) -> None:
    """A ConfigError for a key that was renamed (`RENAMED_KEYS`), naming the new one."""
    for old, (new, what) in RENAMED_KEYS.items():
        group, key = old.split(".")
        value = getattr(getattr(conf, group), key)
        if value is not None:
            raise ConfigError(f"{old} was renamed {new} ({what}). Fix: {new}={value} in place of {old}={value}")


def validate_config(cfg: Any) -> AppConfig:
    """Checks that need no model; raises ConfigError naming the key. `cfg`: a composed config or a
    mapping (see `typed_config`); returns the typed config."""
    conf = typed_config(cfg)
    check_renamed(conf)
    check_job(conf)
    model = conf.model

    task = conf.task
    if task.positions not in POSITIONS:
        raise ConfigError(f"task.positions={task.positions!r} is not one of {', '.join(POSITIONS)}")
    parse_batch_size(task.batch_size, "task.batch_size")
    check_task_sizes(task)
    check_rank_task(conf.rank_task)
    if conf.capture_batch_size == "auto" and issubclass(task_factory(task.name), ImageTask) and _on_gpu(conf.device):
        raise ConfigError(
            f"capture_batch_size=auto does not model image tokens (task {task.name}) on a GPU; "
            "set capture_batch_size=8 (or device=cpu)"
        )

    ranking = conf.ranking
    methods = sorted(METHODS)
    if ranking.method not in methods:
        raise ConfigError(f"ranking.method={ranking.method!r} is unknown; known: {', '.join(methods)}")
    if ranking.somp_steps < 1:
        raise ConfigError(f"ranking.somp_steps (SOMP steps) must be an integer >= 1, got {ranking.somp_steps!r}")

    try:
        check_interval_config(conf.intervals)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    iv = conf.intervention
    if not _is_number(iv.alpha):
        raise ConfigError(f"intervention.alpha must be a finite number (e.g. -1, 0, 2), got {iv.alpha!r}")
    if iv.heads not in HEAD_MODES:
        raise ConfigError(f"intervention.heads={iv.heads!r} is not one of {', '.join(HEAD_MODES)}")
    if iv.k_frac is not None and not (_is_number(iv.k_frac) and 0 < iv.k_frac <= 1):
        raise ConfigError(f"intervention.k_frac must be a number in (0, 1], got {iv.k_frac!r}")
    if iv.k_frac is None and iv.heads != "explicit" and iv.k < 1:
        raise ConfigError(f"intervention.k must be an integer >= 1, got {iv.k!r}")
    if iv.heads == "explicit":
        if not iv.explicit:
            raise ConfigError("intervention.heads=explicit needs intervention.explicit=[[layer,head],...]")
        parse_heads(iv.explicit)  # format errors name the key
    if not all(_is_number(a) for a in iv.batch_alphas):
        raise ConfigError(
            f"intervention.batch_alphas must be a list of numbers (e.g. the sweep's alphas: "
            f"intervention.batch_alphas=[-1,5]), got {iv.batch_alphas!r}"
        )
    if iv.random_pool not in RANDOM_POOLS:
        raise ConfigError(f"intervention.random_pool={iv.random_pool!r} is not one of {', '.join(RANDOM_POOLS)}")
    check_where(iv.where, task.name)
    check_random_controls(iv)
    # The layout declared in the model config lets k be checked before a (slow) model load.
    if model.n_layers is not None and model.n_heads is not None:
        k = resolve_k(iv, model.n_layers * model.n_heads, model_name=model.name_or_path)
        if iv.random_controls and iv.random_pool == "layer_counts":
            check_layer_counts_k(k, model.n_layers * model.n_heads)
        if iv.heads == "explicit":
            check_explicit_heads(iv.explicit, model.n_layers, model.n_heads)
    return conf


def check_where(where: str, task_name: str) -> None:
    """`intervention.where` is one of `WHERE`; image / text (a VLM's image-patch tokens) need an
    image task (a text task's prompts have no image tokens)."""
    if where not in WHERE:
        raise ConfigError(
            f"intervention.where={where!r} is not one of {', '.join(WHERE)} (all: every position, the paper's edit)"
        )
    if where in ("image", "text") and not issubclass(task_factory(task_name), ImageTask):
        raise ConfigError(
            f"intervention.where={where} splits a VLM's image-patch tokens from the rest, but task {task_name} "
            "has no images; use intervention.where=all, prompt or generated"
        )


def check_job(conf: JobConfig) -> None:
    """The checks on the keys every job has (`JobConfig`: a run, an atlas) that a type does not say."""
    if not conf.model.name_or_path:
        raise ConfigError("model.name_or_path must be a registry name, hub id or directory")
    cbs = conf.capture_batch_size
    if not (cbs == "auto" or (_is_int(cbs) and cbs >= 1)):
        raise ConfigError(f"capture_batch_size must be an integer >= 1 or auto, got {cbs!r}")
    if conf.logger.mode not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={conf.logger.mode!r} is not one of {', '.join(LOGGER_MODES)}")
    if not (_is_number(conf.heartbeat_s) and conf.heartbeat_s >= 0):
        raise ConfigError(
            f"heartbeat_s must be a number of seconds >= 0 (0: no heartbeat thread), got {conf.heartbeat_s!r}"
        )


RANK_TASK_FIX = (
    "compose one from conf/task/ with +task@rank_task=<name> (e.g. +task@rank_task=cls_svhn), or rank_task=null"
)


def check_rank_task(rank_task: TaskConfig | None) -> None:
    """`rank_task` (the task the heads are ranked on in a transfer run): null, or a task config
    (`typed_config` checked its name) with known capture positions and sizes."""
    if rank_task is None:
        return
    if rank_task.positions not in POSITIONS:
        raise ConfigError(f"rank_task.positions={rank_task.positions!r} is not one of {', '.join(POSITIONS)}")
    check_task_sizes(rank_task, node="rank_task")


#: what the fixes of `check_task_sizes` suggest: sizes every task's shipped data can supply
SIZE_FIXES = {"n_rank": 8, "n_eval": 8, "max_new_tokens": 16, "n_continuations": 3}


def check_task_sizes(task: TaskConfig, node: str = "task") -> None:
    """The sizes of a task node (`task` or `rank_task`) that would otherwise fail, or do nothing,
    only after the model loads: `n_rank` (an int for the concept group, or ``{concept: ..,
    control: ..}``; every group that ranks, `rank_groups`, needs at least one item), `n_eval` (an
    int >= 1, null for all, or per group), `max_new_tokens` and `n_continuations` (>= 1)."""
    fix = {key: f"{node}.{key}={n}" for key, n in SIZE_FIXES.items()}
    n_rank = task.n_rank
    if isinstance(n_rank, Mapping):
        ranked = parse_rank_groups(task.rank_groups) or DEFAULT_RANK_GROUPS
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
    n_eval = task.n_eval
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
        value = getattr(task, key, None)  # only the task kinds that generate so have it
        if value is not None and value < 1:
            raise ConfigError(
                f"{node}.{key}={value!r}: the number of {what} must be an integer >= 1 (with 0 "
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


def check_random_controls(iv: InterventionConfig) -> None:
    """`intervention.random_seeds`: at least one seed while `intervention.random_controls` is on
    (an empty list would record a run without any control)."""
    if iv.random_controls and not iv.random_seeds:
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


def resolve_k(iv: InterventionConfig, n_total: int, model_name: str = "the model") -> int:
    """Number of heads to edit: `k`, or `round(k_frac * n_total)` (at least 1) when k_frac is set,
    or the number of `explicit` heads."""
    if iv.heads == "explicit":
        k = len(parse_heads(iv.explicit))
    elif iv.k_frac is not None:
        k = max(1, int(round(float(iv.k_frac) * n_total)))
    else:
        k = iv.k
    if k < 1:
        raise ConfigError(f"intervention.k must be an integer >= 1, got {k!r}")
    if k > n_total:
        raise ConfigError(
            f"intervention.k={k} is larger than the number of heads of {model_name} "
            f"({n_total}); use intervention.k <= {n_total} or intervention.k_frac"
        )
    return k
