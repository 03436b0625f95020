"""Where a task's data comes from: the ``source``, ``data_path``, ``hub_*`` and ``max_rows`` keys.

Every task reads its items from a shipped fixture, a local file or a hub dataset; `DataSpec` holds
those keys together so that a task passes one value to its loaders, and says the same things about
them (the path a file source needs, the provenance of a file or a hub split, the row cap) in one
place.

The provenance holds what was read under ``content``: the config key that named the data ->
the data's content (a file's sha256, a hub split's `loaders.split_identity`); the run's cache keys
use it in place of the path (`Task.data_identity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from headpursuit.fingerprint import content_digest
from headpursuit.tasks.base import GROUPS
from headpursuit.tasks.loaders import HubRows, load_hub_rows

__all__ = ["DataSpec"]

T = TypeVar("T")


@dataclass(frozen=True)
class DataSpec:
    """A task's data source keys, as configured (no defaults: each task has its own)."""

    source: str
    data_path: str | None
    hub_id: str | None
    hub_config: str | None
    hub_split: str
    max_rows: int | None

    def checked(self, task: str, known: Sequence[str]) -> DataSpec:
        """This spec, after a ValueError naming `task` if `source` is not one of `known`."""
        if self.source not in known:
            raise ValueError(f"{task}: unknown source {self.source!r}; known: {', '.join(known)}")
        return self

    def require_path(self, task: str) -> str:
        """`data_path`, which this source needs; a ValueError naming `task` when it is unset."""
        if not self.data_path:
            raise ValueError(f"{task}: source {self.source!r} needs data_path")
        return self.data_path

    def file_info(self, path: Any) -> dict[str, Any]:
        """Provenance of items read from the file `path` (`data_path`, or the shipped file read in
        its place), with its content."""
        return {"source": self.source, "path": str(path), "content": {"data_path": content_digest(path)}}

    def hub_info(self, hub: HubRows) -> dict[str, Any]:
        """Provenance of items read from the hub dataset split `hub` (`hub_rows()`), with its identity."""
        return {
            "source": self.source,
            "hub_id": self.hub_id,
            "hub_config": self.hub_config,
            "hub_split": self.hub_split,
            "content": {"hub_split": hub.identity},
        }

    def hub_rows(self) -> HubRows:
        """The rows of the hub split (at most `max_rows`), as `loaders.load_hub_rows` reads them."""
        if not self.hub_id:
            raise ValueError(f"source {self.source!r} needs hub_id")
        return load_hub_rows(self.hub_id, hub_config=self.hub_config, hub_split=self.hub_split, max_rows=self.max_rows)

    def head(self, items: Sequence[T]) -> list[T]:
        """The first `max_rows` items (all without a cap)."""
        return list(items) if self.max_rows is None else list(items[: int(self.max_rows)])

    def head_per_group(self, items: Sequence[Any]) -> list[Any]:
        """The first `max_rows` items of each group, groups in `GROUPS` order (all without a cap)."""
        if self.max_rows is None:
            return list(items)
        return [it for g in GROUPS for it in [x for x in items if x.group == g][: int(self.max_rows)]]
