"""Content hashes for cache keys: the fingerprint of the package's code, and digests of data files.

A cache key holds what its entry was computed *from*: the code (`code_fingerprint`) and, for every
input read from disk, that input's content (`content_digest`), never its path. So a change to
either is a cache miss, and the same content at another path is a hit.

    code_fingerprint()                  # '3f2a...' (16 hex): this package's result-producing files
    content_digest("data/d.jsonl")      # sha256 of the file's bytes (hex, as `sha256sum` prints it)
    content_digest("images/")           # a folder: sha256 over its files' (relative path, size, digest)

A file is rehashed only when its (device, inode, size, mtime_ns, ctime_ns) changed since this
process last hashed it; no headpursuit imports (layer L0).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "code_fingerprint", "fingerprint_of", "produces_results", "content_digest"]

PACKAGE_ROOT = Path(__file__).resolve().parent
#: the files whose content the code fingerprint covers: code and shipped data (word lists, fixtures)
FINGERPRINT_SUFFIXES = (".py", ".txt", ".jsonl", ".json", ".csv", ".parquet")
# The parts of the application shell that record results but do not produce them: left out of the
# fingerprint. The stages (how an evaluation is run under an edit) and the cache keys do produce
# them, so app/stages.py and app/cache.py stay in.
SHELL_DIR = "app"
SHELL_FILES = {"__main__.py"}
SHELL_RESULT_CODE = {"stages.py", "cache.py"}
#: a file modified this recently may change again within the same mtime tick: hashed, not memoised
RACY_WINDOW_NS = 2_000_000_000
_CHUNK = 1 << 20


def produces_results(rel: Path) -> bool:
    """Whether the package file at `rel` (relative to the package root) can change results."""
    if rel.parts[0] == SHELL_DIR:
        return rel.name in SHELL_RESULT_CODE
    return not (len(rel.parts) == 1 and rel.name in SHELL_FILES)


def fingerprint_of(root: Path) -> str:
    """Hash (16 hex) of the result-producing files under the package directory `root`: their
    relative paths and bytes (`FINGERPRINT_SUFFIXES`, not the app/ shell but its stages and keys)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix in FINGERPRINT_SUFFIXES
        and produces_results(p.relative_to(root))
    )
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\1")
    return h.hexdigest()[:16]


@functools.cache
def code_fingerprint() -> str:
    """`fingerprint_of` this package, computed once per process.

    Part of every cache key: a changed task, metric, capture or ranking never reads stale entries.
    """
    return fingerprint_of(PACKAGE_ROOT)


#: (resolved path, device, inode, size, mtime_ns, ctime_ns) -> sha256 hex of the file's bytes
_FILE_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """sha256 (hex) of a file's bytes, from the memo while its stat says it is unchanged."""
    st = path.stat()
    memo_key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo_key in _FILE_DIGESTS:
        return _FILE_DIGESTS[memo_key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    # A write in the same timestamp tick as this read would leave the stat unchanged: only a file
    # older than the window is memoised (git's "racily clean" rule).
    if max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - RACY_WINDOW_NS:
        _FILE_DIGESTS[memo_key] = digest
    return digest


def content_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of what `path` holds, independent of where it is.

    A file: of its bytes. A folder: of the sorted (relative path, size, byte digest) of every file
    under it (symbolic links followed). A FileNotFoundError when `path` does not exist.
    """
    p = Path(path).expanduser().resolve()
    if p.is_file():
        return _file_digest(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no such file or folder: {p}")
    files = sorted(
        (f.relative_to(p).as_posix(), f)
        for dirpath, _, names in os.walk(p, followlinks=True)
        for f in (Path(dirpath) / name for name in names)
        if f.is_file()
    )
    h = hashlib.sha256()
    for rel, f in files:
        h.update(f"{rel}\0{f.stat().st_size}\0{_file_digest(f)}\1".encode())
    return h.hexdigest()
