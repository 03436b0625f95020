"""Tasks: data + prompting + metrics for one experiment, behind the `Task` contract.

    task = QATask(QAConfig(n_rank=30, n_eval=50), lm.tokenizer)     # a task kind and its config
    task = build_task(QAConfig(n_rank=30, n_eval=50), lm)            # the same, by its name
    task = build_task({"name": "qa_countries", "n_rank": 30, "n_eval": 50}, lm)   # from a dict

Every task kind has a config dataclass (`QAConfig`, `ToxicityConfig`, `ClassificationConfig`,
`CaptioningConfig`, all `TaskConfig`s) holding its keys and their only defaults. `build_task`
looks the config's ``name`` up in a registry; other modules add tasks with
`register_task(name, cls)` (a `Task` subclass whose `config_class` is its config dataclass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError
from headpursuit.tasks.base import (
    GROUPS,
    GroupOutputs,
    SplitError,
    Task,
    TaskConfig,
    TaskOutputs,
    parse_rank_groups,
    split_items,
)
from headpursuit.tasks.loaders import DataError, PromptItem, QAItem
from headpursuit.tasks.qa import QAConfig, QATask
from headpursuit.tasks.toxicity import ToxicityConfig, ToxicityTask

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = [
    "GROUPS",
    "DataError",
    "GroupOutputs",
    "CaptioningConfig",
    "CaptioningTask",
    "ClassificationConfig",
    "ImageClassificationTask",
    "PromptItem",
    "QAItem",
    "QAConfig",
    "QATask",
    "SplitError",
    "Task",
    "TaskConfig",
    "TaskOutputs",
    "ToxicityConfig",
    "ToxicityTask",
    "build_task",
    "known_tasks",
    "parse_rank_groups",
    "register_task",
    "split_items",
    "task_config",
    "task_factory",
]

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str, cls: type[Task]) -> None:
    """Register a Task subclass under `name`; `build_task` builds it from its `config_class`."""
    _TASKS[name] = cls


def known_tasks() -> list[str]:
    return sorted(_TASKS)


def task_factory(name: str) -> type[Task]:
    """The Task class `register_task` registered under `name`."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")
    return _TASKS[name]


def _plain(cfg: Any) -> dict:
    """A mapping (an OmegaConf DictConfig resolved, without importing omegaconf for a dict)."""
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"task config must be a TaskConfig or a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def task_config(cfg: TaskConfig | Mapping[str, Any], node: str = "task") -> TaskConfig:
    """The config dataclass of the task named ``cfg["name"]`` (its `config_class`), with the keys of
    `cfg` and the class's defaults for the others; a TaskConfig is returned as it is. A key the
    class does not have is a ConfigError naming ``<node>.<key>`` and the known keys."""
    if isinstance(cfg, TaskConfig):
        return cfg
    values = _plain(cfg)
    name = values.get("name")
    if name not in _TASKS:
        raise ConfigError(f"{node}.name={name!r} is not a known task; known: {', '.join(known_tasks())}")
    config_class = _TASKS[name].config_class
    known = [f.name for f in fields(config_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hint = " (pass the tokenizer as build_task(cfg, tokenizer=...))" if "tokenizer" in unknown else ""
        raise ConfigError(
            f"{node}.{unknown[0]} is not a key of task {name!r} ({config_class.__name__}){hint}; "
            f"its keys: {', '.join(known)}"
        )
    return config_class(**values)


def build_task(task_cfg: Any, lm: LoadedModel | None = None, *, tokenizer: Any = None) -> Task:
    """The task named by `task_cfg` (a TaskConfig, a dict or a DictConfig; see `task_config`),
    its concept built with `tokenizer` (default: `lm`'s)."""
    config = task_config(task_cfg)
    if config.name not in _TASKS:
        raise ValueError(f"unknown task {config.name!r}; known tasks: {', '.join(known_tasks())}")
    if tokenizer is None and lm is not None:
        tokenizer = lm.tokenizer
    return _TASKS[config.name](config, tokenizer)


register_task("qa_countries", QATask)
register_task("qa", QATask)
register_task("toxicity", ToxicityTask)
from headpursuit.tasks.captioning import CaptioningConfig, CaptioningTask  # noqa: E402  (registers itself)
from headpursuit.tasks.classification import ClassificationConfig, ImageClassificationTask  # noqa: E402
