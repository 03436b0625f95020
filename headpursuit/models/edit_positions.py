"""Which positions of a forward pass hold prompt tokens and which hold generated ones, for head
edits that act on some positions only (`headpursuit.intervention.scale_heads(..., where=...)`).

A forward pass sees tokens, not where they came from: the loop that generates knows. It says so
through a context that the edit hooks read at each forward:

    with prompt_width(W):                 # left-padded prompts fill columns [0, W) of each row
        model.generate(...)               # a forward's positions at columns >= W are generated
    with generation_phase("prompt"):      # the greedy loop: this forward holds prompt tokens only
        model(input_ids=prompt_ids, ...)

A position's column is counted from the forward's 2-D attention mask (generate and the greedy
loop pass the whole sequence's mask: past + new), else from the KV cache's length, so the same
rule holds with the KV cache (the prompt pass, then one new token per step) and without it (the
whole sequence recomputed at every step). `prompt_width` also takes one width per row: teacher
forcing (an answer after each prompt, right padding) marks each row's answer as "generated".
Imports torch only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["WHERE", "generation_phase", "prompt_mask", "prompt_width"]

#: where a head edit acts: every position (the paper's edit), the prompt's positions, the generated
#: tokens', a VLM's image-patch tokens', or every other token's; the one list of allowed values
WHERE = ("all", "prompt", "generated", "image", "text")


@dataclass(frozen=True)
class _Generation:
    width: int | torch.Tensor | None = None  # the prompt's columns: [0, width) (per row when a tensor)
    phase: Literal["prompt", "generated"] | None = None  # set by a loop that knows what a forward holds


_CURRENT: ContextVar[_Generation | None] = ContextVar("headpursuit_generation", default=None)


@contextmanager
def prompt_width(width: int | torch.Tensor) -> Iterator[None]:
    """Within the block, columns [0, width) of each row are its prompt and later columns are
    generated (or, teacher-forced, the answer). `width`: one int for a left-padded batch (every
    prompt ends at the same column), or a (rows,) tensor of per-row prompt lengths."""
    if torch.is_tensor(width):
        width = width.detach().to(torch.long).reshape(-1)
    else:
        width = int(width)
    token = _CURRENT.set(_Generation(width=width))
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def generation_phase(phase: Literal["prompt", "generated"]) -> Iterator[None]:
    """Within the block, every position of every forward is a prompt token (`"prompt"`: the prompt
    pass, shared prefixes included) or a generated one (`"generated"`: a decode step); overrides
    `prompt_width`."""
    if phase not in ("prompt", "generated"):
        raise ValueError(f"generation_phase takes 'prompt' or 'generated', got {phase!r}")
    token = _CURRENT.set(_Generation(phase=phase))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _past_length(kwargs: Mapping[str, Any], seq: int) -> int:
    """How many columns precede this forward's tokens: the 2-D attention mask's width minus the new
    tokens, else the KV cache's length (0 without either: the forward holds the whole sequence)."""
    mask = kwargs.get("attention_mask")
    if torch.is_tensor(mask) and mask.dim() == 2:
        return int(mask.shape[1]) - seq
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


def prompt_mask(kwargs: Mapping[str, Any], rows: int, seq: int, device: torch.device) -> torch.Tensor | None:
    """(rows, seq) bool: which positions of this forward (its keyword arguments, `rows` x `seq` new
    tokens) are prompt tokens under the current context; None outside `prompt_width` /
    `generation_phase` (nobody said where the prompt ends)."""
    context = _CURRENT.get()
    if context is None:
        return None
    if context.phase is not None:
        return torch.full((rows, seq), context.phase == "prompt", dtype=torch.bool, device=device)
    assert context.width is not None
    columns = _past_length(kwargs, seq) + torch.arange(seq, device=device)
    width = context.width
    if torch.is_tensor(width):
        if width.numel() != rows:
            raise ValueError(f"prompt_width was given {width.numel()} per-row widths but the forward has {rows} rows")
        return columns[None, :] < width.to(device)[:, None]
    return (columns < width)[None, :].expand(rows, seq)
