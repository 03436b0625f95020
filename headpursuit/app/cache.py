"""A disk cache shared by the jobs of a sweep, and the keys that address it.

`RunCache` holds the model's greedy ranking answers, the activations (through `capture_heads`' own
cache), the head scores and every evaluation keyed on the exact head edit (the unedited baseline
is the empty edit). Nothing in it depends on k or alpha unless the key says so, so a k x alpha
sweep extracts and ranks once. Parallel jobs take a file lock per entry: one computes, the others
wait and read. The cache also records, per stage label, whether each lookup was a hit; the run's
record reports those flags.

Every key holds the code fingerprint (`headpursuit.fingerprint`) and, for the data a task read,
its content (`task_identity`): a data file edited in place, or changed code, is a cache miss;
the same file at another path is a hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headpursuit.app.tracking import disk_full
from headpursuit.fingerprint import code_fingerprint

if TYPE_CHECKING:
    from headpursuit.models import LoadedModel

__all__ = ["CACHE_VERSION", "RunCache", "stable_hash", "code_fingerprint", "model_identity", "task_identity"]

log = logging.getLogger(__name__)

#: bump to invalidate every cache entry (e.g. after a change in the shell that alters results)
CACHE_VERSION = 1


def stable_hash(*parts: Any, n: int = 20) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def model_identity(model_cfg: Mapping[str, Any], lm: LoadedModel) -> dict:
    """What determines a loaded model's outputs (for cache keys)."""
    return {
        "name_or_path": model_cfg.get("name_or_path"),
        "revision": model_cfg.get("revision"),
        "kwargs": model_cfg.get("kwargs") or {},
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


class RunCache:
    """Files under `root/<kind>/<key>.<ext>`, written atomically, one lock file per entry.

    `root=None` disables caching (everything is computed, nothing is written). `hits` maps a stage
    label (by default the entry kind) to whether each of its lookups was served from the cache,
    in call order.
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.hits: dict[str, list[bool]] = {}

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def note_hit(self, label: str, hit: bool) -> None:
        """Record one lookup of stage `label` (for work cached elsewhere, e.g. capture_heads')."""
        self.hits.setdefault(label, []).append(bool(hit))

    def hit(self, label: str) -> bool | None:
        """Whether the last lookup of `label` was a hit (None if there was none)."""
        found = self.hits.get(label)
        return found[-1] if found else None

    def dir(self, kind: str) -> Path | None:
        """`root/kind`, created; None when the cache is off."""
        if self.root is None:
            return None
        return self._entry_dir(kind)

    def _entry_dir(self, kind: str) -> Path:
        assert self.root is not None, "only called when the cache is on"
        d = self.root / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Exclusive lock for one entry (fcntl.flock), so parallel jobs compute it once."""
        if self.root is None:
            yield
            return
        path = self._entry_dir(kind) / f"{key}.lock"
        f = open(path, "a+")
        try:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except (ImportError, OSError) as exc:  # no flock (Windows, some network filesystems)
                log.debug("cache lock unavailable (%s); going on without it", exc)
            yield
        finally:
            f.close()  # closing releases the lock

    def get_or_compute(
        self, kind: str, key: str, compute: Callable[[], Any], fmt: str = "json", label: str | None = None
    ) -> tuple[Any, bool]:
        """(value, from_cache). `fmt` is json (plain data) or pickle (objects); the hit is
        recorded under `label` (default: `kind`)."""
        value, hit = self._get_or_compute(kind, key, compute, fmt)
        self.note_hit(label or kind, hit)
        return value, hit

    def _get_or_compute(self, kind: str, key: str, compute: Callable[[], Any], fmt: str) -> tuple[Any, bool]:
        if self.root is None:
            return compute(), False
        ext = {"json": "json", "pickle": "pkl"}[fmt]
        path = self._entry_dir(kind) / f"{key}.{ext}"
        with self.lock(kind, key):
            value = self._read(path, fmt)
            if value is not None:
                return value, True
            value = compute()
            self._write(path, value, fmt)
        return value, False

    @staticmethod
    def _read(path: Path, fmt: str) -> Any:
        if not path.exists():
            return None
        try:
            if fmt == "json":
                return json.loads(path.read_text(encoding="utf-8"))
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as exc:  # a broken entry is recomputed, never trusted
            log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
            return None

    @staticmethod
    def _write(path: Path, value: Any, fmt: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            if fmt == "json":
                # NaN stays NaN (json reads it back); a cached value equals the computed one
                tmp.write_text(json.dumps(value, default=str), encoding="utf-8")
            else:
                with open(tmp, "wb") as f:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if disk_full(exc) is not None:  # every later write fails alike: the run stops, naming the file
                if isinstance(exc, OSError) and exc.filename is None:
                    exc.filename = str(path)
                raise
            log.warning("could not write cache entry %s: %s", path, exc)
