"""Tasks: data + prompting + metrics for one experiment, behind the `Task` contract.

    task = build_task({"name": "qa_countries", "n_rank": 30, "n_eval": 50}, lm)

`build_task` looks `task_cfg["name"]` up in a registry; other modules add tasks with
`register_task(name, cls)` (a `Task` subclass, or any callable ``(cfg: dict, lm) -> Task``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from headpursuit.tasks.base import (
    GROUPS,
    GroupOutputs,
    SplitError,
    Task,
    TaskOutputs,
    parse_rank_groups,
    split_items,
)
from headpursuit.tasks.loaders import DataError, PromptItem, QAItem
from headpursuit.tasks.qa import QATask
from headpursuit.tasks.toxicity import ToxicityTask

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = [
    "GROUPS",
    "DataError",
    "GroupOutputs",
    "PromptItem",
    "QAItem",
    "QATask",
    "SplitError",
    "Task",
    "TaskOutputs",
    "ToxicityTask",
    "build_task",
    "known_tasks",
    "parse_rank_groups",
    "register_task",
    "split_items",
    "task_factory",
]

_TASKS: dict[str, Any] = {}


def register_task(name: str, cls: type[Task] | Callable[[dict, Any], Task]) -> None:
    """Register a Task subclass (built with `cls.from_config(cfg, lm)`) or a factory `(cfg, lm)`."""
    _TASKS[name] = cls


def known_tasks() -> list[str]:
    return sorted(_TASKS)


def task_factory(name: str) -> Any:
    """What `register_task` registered under `name` (a Task subclass or a factory)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")
    return _TASKS[name]


def _plain(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"task config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def build_task(task_cfg: Any, lm: LoadedModel | None = None) -> Task:
    """The task named `task_cfg["name"]`, configured by the other keys (a dict or DictConfig)."""
    cfg = _plain(task_cfg)
    name = cfg.get("name")
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")
    factory = _TASKS[name]
    if isinstance(factory, type) and issubclass(factory, Task):
        return factory.from_config(cfg, lm)
    return factory(cfg, lm)


register_task("qa_countries", QATask)
register_task("qa", QATask)
register_task("toxicity", ToxicityTask)
from headpursuit.tasks import captioning, classification  # noqa: E402,F401  (register_task side effects)
