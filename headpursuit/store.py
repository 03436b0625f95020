"""The disk cache: one owner for every cached entry, whoever computes it.

    store = Store("cache/")                                    # Store(None): no cache, always compute
    key = entry_key("evals", ident, edit, seed)                # CACHE_VERSION, kind, code fingerprint, parts
    value, hit = store.get_or_compute("evals", key, compute)   # fmt "json" (default), "pickle" or a Codec

An entry is the file ``root/<kind>/<key>.<ext>``, its format a `Codec` (`JSON`, `PICKLE`; the
capture room provides the activations' safetensors codec, `headpursuit.capture.ACTIVATIONS`).
Parallel processes take a file lock per entry (`fcntl.flock` on ``<key>.lock``): one computes,
the others wait and read. Writes are atomic (`write_atomic`: a hidden temp file, then
`os.replace`). An entry that cannot be read back (truncated, empty, foreign) is moved aside
(``<name>.corrupt-<time>``, kept for a look) and recomputed, with a warning. A full disk
(`disk_full`) stops the caller, naming the entry; any other failed write leaves the value
uncached, with a warning.

Every key holds what its entry is computed from: `entry_key` adds the code fingerprint
(`headpursuit.fingerprint`) and `CACHE_VERSION` to the caller's parts, which hold the inputs'
content (never a path).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headpursuit.fingerprint import code_fingerprint

__all__ = [
    "CACHE_VERSION",
    "CacheError",
    "Codec",
    "DISK_FULL_ERRNOS",
    "DISK_FULL_TEXT",
    "FORMATS",
    "JSON",
    "PICKLE",
    "Store",
    "disk_full",
    "entry_key",
    "set_aside",
    "stable_hash",
    "temp_path",
    "write_atomic",
]

log = logging.getLogger(__name__)

#: bump to invalidate every cache entry (e.g. after a change that alters results and no code file)
CACHE_VERSION = 1


class CacheError(RuntimeError):
    """A cached file could not be read back (truncated, empty, not the expected format). The store
    sets such an entry aside and recomputes it; a direct reader (`HeadActivations.load`) raises it."""


# ------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------


def stable_hash(*parts: Any, n: int = 20) -> str:
    """The first `n` hex digits of the sha256 of `parts` as sorted JSON (unknown objects by `str`)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def entry_key(kind: str, *parts: Any) -> str:
    """The key of a `kind` entry computed from `parts` (plain data: the inputs' content, options),
    with the cache version and the code fingerprint: changed code never reads an old entry."""
    return stable_hash(CACHE_VERSION, kind, code_fingerprint(), *parts)


# ------------------------------------------------------------------------------------------
# Files: atomic writes, a full disk, corrupt files set aside
# ------------------------------------------------------------------------------------------

#: what a write reports when the device is full or the user's quota is spent
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Libraries that write through their own I/O (safetensors, in Rust) say it in their message only.
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The exception in `exc`'s chain (itself, its cause, its context) that says the disk is full
    (ENOSPC) or the quota is spent (EDQUOT), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if any(text in str(exc) for text in DISK_FULL_TEXT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def temp_path(path: Path) -> Path:
    """Where `write_atomic` writes `path` first: a hidden file beside it, one per process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """`write(temp)` to a temp file in `path`'s directory, then `os.replace` it onto `path`
    (`durable`: fsync first, so the new content survives a crash of the machine).

    A reader sees either the old file or the complete new one, never a half-written file; a failed
    write leaves no temp file (a killed process leaves a hidden `.NAME.tmpPID` that no reader
    opens). An OSError that names no file (a failed write() on a full disk) is given `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def set_aside(path: Path) -> Path:
    """Rename a corrupt file to `<name>.corrupt-<timestamp>` next to it: never read again, kept for
    a look at what went wrong."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, aside)
    return aside


# ------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How one kind of value is written to and read from an entry's file. `read` raises (e.g.
    `CacheError`) on a file it cannot read back; `write` writes the whole value to the path given."""

    name: str
    ext: str
    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


def _write_json(value: Any, path: Path) -> None:
    # NaN stays NaN (json reads it back): a cached value equals the computed one
    path.write_text(json.dumps(value, default=str), encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path} is not JSON ({exc})") from exc


def _write_pickle(value: Any, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)


def _read_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except OSError:
        raise
    except Exception as exc:  # truncated, empty, or a class that no longer unpickles
        raise CacheError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from exc


#: plain data (results, metrics)
JSON = Codec("json", "json", _write_json, _read_json)
#: Python objects (samples, scores)
PICKLE = Codec("pickle", "pkl", _write_pickle, _read_pickle)
#: the formats a store knows by name; another format is passed as its `Codec`
FORMATS = {codec.name: codec for codec in (JSON, PICKLE)}


def _codec(fmt: str | Codec) -> Codec:
    if isinstance(fmt, Codec):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown cache format {fmt!r}: one of {', '.join(FORMATS)}, or a Codec") from None


# ------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------

_MISSING = object()


class Store:
    """Entries ``root/<kind>/<key>.<ext>``, one lock file per entry; ``root=None`` disables
    caching (everything is computed, nothing is written)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, kind: str, key: str, fmt: str | Codec = "json") -> Path | None:
        """Where the entry lives (None when the cache is off)."""
        if self.root is None:
            return None
        return self.root / kind / f"{key}.{_codec(fmt).ext}"

    def has(self, kind: str, key: str, fmt: str | Codec = "json") -> bool:
        """Whether the entry has a file (an unreadable one is recomputed when it is read)."""
        path = self.path(kind, key, fmt)
        return path is not None and path.is_file()

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Exclusive lock for one entry (fcntl.flock), so parallel jobs compute it once."""
        if self.root is None:
            yield
            return
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{key}.lock", "a+")
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
        self, kind: str, key: str, compute: Callable[[], Any], fmt: str | Codec = "json"
    ) -> tuple[Any, bool]:
        """(value, from_cache): the entry read back, else `compute()` written to it."""
        codec = _codec(fmt)
        path = self.path(kind, key, codec)
        if path is None:
            return compute(), False
        with self.lock(kind, key):
            value = self._read(path, codec)
            if value is not _MISSING:
                return value, True
            value = compute()
            self._write(path, value, codec)
        return value, False

    @staticmethod
    def _read(path: Path, codec: Codec) -> Any:
        """The entry's value; `_MISSING` when there is none or it is unreadable (then set aside)."""
        if not path.exists():
            return _MISSING
        try:
            return codec.read(path)
        except Exception as exc:  # a broken entry is recomputed, never trusted
            try:
                where = f"moved it to {set_aside(path)}"
            except OSError as move_error:  # e.g. a read-only cache: the write after it will say so
                where = f"could not move it aside: {move_error}"
            reason = exc.__cause__ if isinstance(exc, CacheError) and exc.__cause__ is not None else exc
            log.warning("Cache entry %s is corrupt or unreadable (%s); %s and recomputing it.", path, reason, where)
            return _MISSING

    @staticmethod
    def _write(path: Path, value: Any, codec: Codec) -> None:
        try:
            write_atomic(path, lambda tmp: codec.write(value, tmp))
        except Exception as exc:
            if disk_full(exc) is not None:  # every later write fails alike: the caller stops, naming the entry
                raise
            log.warning("could not write cache entry %s: %s", path, exc)
