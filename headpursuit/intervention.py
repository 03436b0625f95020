"""Rescale chosen attention heads: multiply their `z` (hence their contribution) by alpha.

The edit is a forward pre-hook on `o_proj`, after the attention kernel: it works with SDPA /
FlashAttention, with the KV cache inside `generate()` (every new position passes through it), and
it never touches the weights, so restoring the model is just removing the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from headpursuit.models import LoadedModel

Head = tuple[int, int]


def _scales_by_layer(lm: LoadedModel, scales: Mapping[Head, float]) -> dict[int, dict[int, float]]:
    """{layer: {head: alpha}}, every key checked to be a head of ``lm`` and every scale a number."""
    by_layer: dict[int, dict[int, float]] = {}
    L, H = lm.layout.n_layers, lm.layout.n_heads
    for key, alpha in scales.items():
        try:
            layer, head = (int(key[0]), int(key[1]))
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"Head keys must be (layer, head) pairs, got {key!r}") from None
        if not (0 <= layer < L and 0 <= head < H):
            raise ValueError(f"Head ({layer}, {head}) does not exist in {lm.name}: layers 0..{L - 1}, heads 0..{H - 1}")
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ValueError(f"Scale for head ({layer}, {head}) must be a number, got {alpha!r}") from None
        by_layer.setdefault(layer, {})[head] = alpha
    return by_layer


@contextmanager
def scale_heads(lm: LoadedModel, scales: Mapping[Head, float]) -> Iterator[LoadedModel]:
    """Within the block, head (layer, h)'s output is multiplied by `scales[(layer, h)]`.

    alpha = -1 flips (suppresses) a head, 0 ablates it, > 1 enhances it. Applies to every position
    and every generation step. The hooks are removed on exit, also when the body raises.

        with scale_heads(lm, {(12, 3): -1.0, (14, 0): -1.0}):
            out = lm.model.generate(**inputs)
    """
    by_layer = _scales_by_layer(lm, scales)
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    handles = []
    try:
        for layer, heads in by_layer.items():
            factor = torch.ones(H)
            for h, a in heads.items():
                factor[h] = a
            if torch.all(factor == 1):
                continue
            # One factor per feature of the concatenated heads: head h owns [h*dh, (h+1)*dh).
            per_feature = factor.repeat_interleave(dh)
            module = lm.o_proj(layer)

            def hook(mod, args, _f=per_feature):
                x = args[0]
                return (x * _f.to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

            handles.append(module.register_forward_pre_hook(hook))
        yield lm
    finally:
        for handle in handles:
            handle.remove()


def uniform_scales(heads: Iterable[Head], alpha: float) -> dict[Head, float]:
    """{head: alpha for each head}: the usual edit, the same factor on every chosen head."""
    return {(int(layer), int(head)): float(alpha) for layer, head in heads}
