"""What a ranking reads, checked once: the captured ``z``, the model's weights, the concept, the steps.

The weights come from a :class:`~headpursuit.models.LoadedModel`, a :class:`HeadWeights`, or a
mapping with exactly the keys of HeadWeights (``W_O``, ``unembedding``, optional ``norm_gain``,
``tokenizer`` and ``name``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from headpursuit.concepts import Concept, load_concept
from headpursuit.models import LoadedModel

if TYPE_CHECKING:
    from headpursuit.capture import HeadActivations

__all__ = [
    "HeadWeights",
    "WeightsSource",
    "ConceptSpec",
    "head_weights",
    "captured_z",
    "concept_token_ids",
    "validated_steps",
    "decode_tokens",
    "format_tokens",
]

# A concept as rank_heads accepts it: a Concept, token ids, or a shipped name / word-list path /
# word list (these three need a tokenizer).
ConceptSpec = Concept | torch.Tensor | Sequence[int] | str | Path | Iterable[str]


@dataclass
class HeadWeights:
    """The weights a ranking needs, without the model.

    W_O: (layers, d_model, heads*head_dim) -- the attention output projections of all model layers
        or of exactly the captured ones (in capture order); column block h belongs to head h.
    unembedding: (vocab, d_model). norm_gain: the final norm's gain (d_model,) or None.
    tokenizer: decodes the top tokens (None shows them as ``#id``). name: recorded in the meta.
    """

    W_O: torch.Tensor
    unembedding: torch.Tensor
    norm_gain: torch.Tensor | None = None
    tokenizer: Any = None
    name: str = "weights"

    @classmethod
    def from_mapping(cls, weights: Mapping[str, Any]) -> HeadWeights:
        keys = [f.name for f in fields(cls)]
        unknown = sorted(set(weights) - set(keys))
        if unknown or "W_O" not in weights or "unembedding" not in weights:
            raise ValueError(
                "weights must provide W_O (layers, d_model, heads*head_dim) and unembedding (vocab, d_model), "
                f"optionally norm_gain, tokenizer and name (got keys {sorted(weights)}; or pass a LoadedModel)"
            )
        return cls(**weights)

    @classmethod
    def from_model(cls, lm: LoadedModel, layers: Sequence[int]) -> HeadWeights:
        """The weights of ``lm`` for the captured ``layers`` only, float32 on the model's device
        (ranking runs where the model is, and in float32 whatever the model's dtype)."""
        dev = lm.unembedding().device
        return cls(
            W_O=torch.stack([lm.output_weight(layer).detach().to(device=dev, dtype=torch.float32) for layer in layers]),
            unembedding=lm.unembedding().detach().float(),
            norm_gain=_float32(lm.final_norm_gain(), dev),
            tokenizer=lm.tokenizer,
            name=lm.name,
        )

    @property
    def device(self) -> torch.device:
        """Where the ranking computes: the unembedding's device."""
        return torch.as_tensor(self.unembedding).device

    def for_layers(self, layers: Sequence[int]) -> HeadWeights:
        """These weights as float32 tensors on the unembedding's device, W_O cut down to the
        captured ``layers``."""
        U = torch.as_tensor(self.unembedding).detach().float()
        W = torch.as_tensor(self.W_O).detach()
        if W.dim() == 2:
            W = W.unsqueeze(0)
        if W.dim() != 3:
            raise ValueError(f"W_O must be (layers, d_model, heads*head_dim); got shape {tuple(W.shape)}")
        if W.shape[0] > max(layers):
            W = W[list(layers)]
        elif W.shape[0] != len(layers):
            raise ValueError(
                f"W_O has {W.shape[0]} layers but the activations cover layers {list(layers)[:8]}...: give W_O for "
                "all model layers or exactly the captured ones"
            )
        W = W.to(device=U.device, dtype=torch.float32)
        return HeadWeights(W, U, _float32(self.norm_gain, U.device), self.tokenizer, self.name)


# What rank_heads / explain_head accept as the model.
WeightsSource = LoadedModel | HeadWeights | Mapping[str, Any]


def _float32(t: Any, device: torch.device) -> torch.Tensor | None:
    return None if t is None else torch.as_tensor(t).detach().to(device=device, dtype=torch.float32)


def head_weights(source: WeightsSource | None, layers: Sequence[int]) -> HeadWeights:
    """The weights of the captured ``layers`` from a LoadedModel, a HeadWeights or a mapping."""
    if source is None:
        raise ValueError("rank_heads needs the model (a LoadedModel) or its weights (dict with W_O, unembedding)")
    if isinstance(source, LoadedModel):
        return HeadWeights.from_model(source, layers)
    if isinstance(source, Mapping):
        source = HeadWeights.from_mapping(source)
    if not isinstance(source, HeadWeights):
        raise ValueError(
            f"weights must be a LoadedModel, a HeadWeights or a dict with W_O and unembedding; "
            f"got {type(source).__name__}"
        )
    return source.for_layers(layers)


def captured_z(activations: HeadActivations | torch.Tensor | None) -> tuple[torch.Tensor, list[int], dict]:
    """(z as float32 (rows, layers, heads, head_dim) on the device it was captured on, the captured
    layer numbers, the capture meta). z is not moved: the SOMP methods move it to the weights'
    device batch of heads by batch of heads, so it need not fit there at once."""
    if activations is None:
        raise ValueError("activations is None: capture them first (capture_heads(lm, samples))")
    z = activations if isinstance(activations, torch.Tensor) else getattr(activations, "z", None)
    if not isinstance(z, torch.Tensor):
        raise ValueError(
            f"activations must be a HeadActivations or a z tensor (rows, layers, heads, head_dim); got {type(activations).__name__}"
        )
    if z.dim() != 4:
        raise ValueError(f"activations.z must be (rows, layers, heads, head_dim); got shape {tuple(z.shape)}")
    if z.shape[0] == 0 or z.shape[1] == 0 or z.shape[2] == 0:
        raise ValueError(
            f"activations are empty (z shape {tuple(z.shape)}): capture at least one row for at least one "
            "layer (check the samples and the positions mode)"
        )
    if isinstance(activations, torch.Tensor):
        layers, meta = list(range(z.shape[1])), {}
    else:
        layers, meta = list(activations.layers or range(z.shape[1])), dict(activations.meta or {})
    if len(layers) != z.shape[1]:
        raise ValueError(f"activations.layers has {len(layers)} entries but z has {z.shape[1]} layers")
    return z.detach().float(), [int(layer) for layer in layers], meta


def concept_token_ids(concept: ConceptSpec, tokenizer: Any, vocab: int) -> tuple[torch.Tensor, str]:
    """(sorted unique vocabulary ids of ``concept``, its name); ids must lie in [0, vocab)."""
    if isinstance(concept, Concept):
        ids, name = concept.token_ids, concept.name
    elif isinstance(concept, torch.Tensor) or (
        isinstance(concept, (list, tuple)) and concept and all(isinstance(x, int) for x in concept)
    ):
        ids, name = torch.as_tensor(concept, dtype=torch.long).flatten(), "token_ids"
    else:
        if tokenizer is None:
            raise ValueError("concept given by name/words but no tokenizer is available: pass a Concept or token ids")
        # what is left is a name, a word-list path or a word list
        c = load_concept(cast("str | Path | Iterable[str]", concept), tokenizer)
        ids, name = c.token_ids, c.name
    ids = torch.unique(ids.long())
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise ValueError(
            f"concept {name!r} has token ids outside the vocabulary [0, {vocab}): {bad[:5].tolist()}; "
            "build the concept with this model's tokenizer"
        )
    if ids.numel() == 0:
        raise ValueError(f"concept {name!r} has no token ids; load it with load_concept(name, lm.tokenizer)")
    return ids, name


def validated_steps(k: Any, vocab: int, name: str = "somp_steps") -> int:
    """`k` (SOMP steps, or logit_lens' top tokens) as an int in [1, vocab]; errors name it `name`."""
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            if float(k) != int(k):
                raise ValueError
            k = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a positive integer (SOMP steps / top tokens); got {k!r}") from None
    if k <= 0:
        raise ValueError(f"{name} must be >= 1 (SOMP steps / top tokens); got {k}")
    if k > vocab:
        raise ValueError(f"{name}={k} exceeds the vocabulary size {vocab}; use a smaller {name}")
    return k


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (``#id`` without a tokenizer or when decoding fails); ids < 0 skipped."""
    out = []
    for i in ids:
        i = int(i)
        if i < 0:
            continue
        if tokenizer is None:
            out.append(f"#{i}")
        else:
            try:
                out.append(tokenizer.decode([i], clean_up_tokenization_spaces=False))
            except Exception:
                out.append(f"#{i}")
    return out


def format_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    """The ``top_tokens`` cell: decoded tokens as reprs joined by `` | ``."""
    return " | ".join(repr(p) for p in decode_tokens(tokenizer, ids))
