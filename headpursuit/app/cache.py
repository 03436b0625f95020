"""The sweep's cache: the library's store plus the record of which stage was served from it,
and the identities its keys hold.

`RunCache` is a `headpursuit.store.Store` (entries ``root/<kind>/<key>.<ext>``, one lock per entry,
atomic writes, unreadable entries set aside and recomputed, a full disk raised) that also records,
per stage label, whether each lookup was a hit; the run's record reports those flags. It holds
the model's greedy ranking answers, the activations (`capture_heads` given the cache), the head
scores and every evaluation keyed on the exact head edit (the unedited baseline is the empty
edit). Nothing in it depends on k or alpha unless the key says so, so a k x alpha sweep extracts
and ranks once.

Every key is a `headpursuit.store.entry_key`: the code fingerprint and what the entry is computed
from; for the data a task read, its content (`task_identity`): a data file edited in place, or
changed code, is a cache miss; the same file at another path is a hit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from headpursuit.fingerprint import code_fingerprint
from headpursuit.store import CACHE_VERSION, Codec, Store, stable_hash

if TYPE_CHECKING:
    from headpursuit.models import LoadedModel

__all__ = ["CACHE_VERSION", "RunCache", "stable_hash", "code_fingerprint", "model_identity", "task_identity"]


def model_identity(model_cfg: Mapping[str, Any], lm: LoadedModel) -> dict:
    """What determines a loaded model's outputs (for cache keys)."""
    return {
        "name_or_path": model_cfg["name_or_path"],
        "revision": model_cfg["revision"],
        "kwargs": model_cfg["kwargs"] or {},
        "source": lm.provenance.get("source"),
        "seed": lm.provenance.get("seed"),
        "dtype": str(lm.dtype),
        "device": lm.device.type,
        "layout": dataclasses.asdict(lm.layout),
    }


# Task config keys that do not change what a split's generations are.
_NOT_RANKING_KEYS = {"n_eval", "n_examples", "positions"}
_NOT_EVAL_KEYS = {"n_examples", "positions", "rank_groups"}  # rank_groups never changes the eval split


def task_identity(task_cfg: Mapping[str, Any], purpose: str, data: Mapping[str, str]) -> dict:
    """What determines the `purpose` ("ranking" or "eval") split's outputs: the task config keys
    that do, with the value of each key that names input data replaced by that data's content
    (`data`: the built task's `Task.data_identity()`, e.g. {"data_path": <sha256 of the file>}),
    so the key holds no path."""
    drop = _NOT_RANKING_KEYS if purpose == "ranking" else _NOT_EVAL_KEYS
    ident = {k: v for k, v in task_cfg.items() if k not in drop}
    ident.update(data)
    return ident


class RunCache(Store):
    """The store of a run (``root=None``: no cache) and `hits`: per stage label (by default the
    entry kind), whether each of its lookups was served from the cache, in call order."""

    def __init__(self, root: str | os.PathLike | None):
        super().__init__(root)
        self.hits: dict[str, list[bool]] = {}

    def note_hit(self, label: str, hit: bool) -> None:
        """Record one lookup of stage `label`."""
        self.hits.setdefault(label, []).append(bool(hit))

    def hit(self, label: str) -> bool | None:
        """Whether the last lookup of `label` was a hit (None if there was none)."""
        found = self.hits.get(label)
        return found[-1] if found else None

    def get_or_compute(
        self, kind: str, key: str, compute: Callable[[], Any], fmt: str | Codec = "json", label: str | None = None
    ) -> tuple[Any, bool]:
        """(value, from_cache). `fmt` is json (plain data), pickle (objects) or a `Codec`; the hit
        is recorded under `label` (default: `kind`)."""
        value, hit = super().get_or_compute(kind, key, compute, fmt)
        self.note_hit(label or kind, hit)
        return value, hit
