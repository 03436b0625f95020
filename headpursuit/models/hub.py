"""Loading a Hugging Face checkpoint, from the hub or a local directory, with its tokenizer (LMs)
or processor (VLMs: the family registry says which)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from headpursuit.models.families import family_for

__all__ = ["load_hub"]


def load_hub(
    name_or_path: str, dtype: torch.dtype | str, device: str, trust_remote_code: bool, revision: str | None
) -> tuple[nn.Module, Any, Any | None]:
    """(model on `device`, tokenizer, processor or None) of a hub id or local checkpoint dir."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise OSError(
            f"Could not load the config of {name_or_path!r}: {exc}\nIf this is a hub id, this "
            "machine needs hub access (or a pre-filled HF cache with HF_HUB_OFFLINE=1); if it is a "
            "directory, check the path."
        ) from exc
    family = family_for(config)
    common = dict(trust_remote_code=trust_remote_code, revision=revision, dtype=dtype)
    processor = None
    if family.is_vlm:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **common)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
        tok = processor.tokenizer
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(name_or_path, **common)
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    return model.to(device), tok, processor
