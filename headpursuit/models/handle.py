"""The model handle: a loaded model with its family, attention layout, tokenizer and processor.

`LoadedModel` says where the parts Head Pursuit reads and edits live (decoder layers, `o_proj`,
final norm, unembedding) and how text becomes token ids. Turning ids into batches and batches into
generations lives in `headpursuit.models.inputs` and `headpursuit.models.generation`; the
methods here that touch tensors delegate to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

from headpursuit.models.families import ModelFamily, family_for
from headpursuit.models.families.base import get_module
from headpursuit.models.inputs import encode, pad_id_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["AttentionLayout", "LoadedModel", "layout_of", "wrap_model"]


@dataclass(frozen=True)
class AttentionLayout:
    """The shape of the language decoder's attention: what one captured `z` row looks like."""

    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    n_kv_heads: int

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


@dataclass
class LoadedModel:
    """A model with everything Head Pursuit needs to find, read and edit its heads."""

    name: str
    model: PreTrainedModel
    tokenizer: Any
    family: ModelFamily
    layout: AttentionLayout
    processor: Any | None = None
    provenance: dict = field(default_factory=dict)

    # --- where things live -------------------------------------------------------------
    def decoder_layers(self) -> nn.ModuleList:
        return self.family.find_layers(self.model)

    def o_proj(self, layer: int) -> nn.Linear:
        mod = get_module(self.decoder_layers()[layer], self.family.o_proj)
        if mod is None:
            raise ValueError(
                f"{self.name}: layer {layer} has no {self.family.o_proj!r}; fix the family file "
                f"headpursuit/models/families/{self.family.name}.py"
            )
        return cast(nn.Linear, mod)

    def output_weight(self, layer: int) -> torch.Tensor:
        """W_O of one layer, (d_model, n_heads * head_dim): column block h belongs to head h."""
        return self.o_proj(layer).weight

    def output_weights(self) -> torch.Tensor:
        """All layers' W_O stacked, (n_layers, d_model, n_heads * head_dim), detached."""
        return torch.stack([self.output_weight(i).detach() for i in range(self.layout.n_layers)])

    def output_bias(self, layer: int) -> torch.Tensor | None:
        return self.o_proj(layer).bias

    def unembedding(self) -> torch.Tensor:
        """The unembedding matrix (vocab, d_model)."""
        return self.model.get_output_embeddings().weight.detach()

    def final_norm(self) -> nn.Module:
        return self.family.find_final_norm(self.model)

    def final_norm_gain(self) -> torch.Tensor | None:
        """The final norm's effective elementwise gain (`offset + weight`), or None if it has none."""
        w = getattr(self.final_norm(), "weight", None)
        if w is None:
            return None
        return w.detach().float() + self.family.norm_gain_offset

    # --- text ---------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_prompt(self, user_text: str, system: str | None = None) -> str:
        """The model's chat template when it has one, else a plain `Q: ... A:` template."""
        if self.has_chat_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user_text}
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix = f"{system}\n\n" if system else ""
        return f"{prefix}Q: {user_text}\nA:"

    @property
    def add_special_tokens(self) -> bool:
        # A chat template writes its own BOS/special tokens into the text; adding them again
        # would double the BOS. Plain prompts get the tokenizer's usual special tokens.
        return not self.has_chat_template

    def token_ids(self, text: str, *, special: bool | None = None) -> list[int]:
        """Token ids of `text`; `special` defaults to the model's convention (`add_special_tokens`)."""
        special = self.add_special_tokens if special is None else special
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    @property
    def pad_token_id(self) -> int:
        return pad_id_for(self.tokenizer)

    def encode(self, texts: list[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Tokenise already-formatted prompts into a padded batch with correct position ids."""
        return encode(self, texts, padding_side)

    def generation_kwargs(self) -> dict:
        return {"pad_token_id": self.pad_token_id}

    # --- placement ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> str:
        lay = self.layout
        warn = "; ".join(self.provenance.get("notes", []))
        return (
            f"{self.name} [{self.family.name}] {lay.n_layers} layers x {lay.n_heads} heads "
            f"(head_dim {lay.head_dim}, d_model {lay.d_model}, {lay.n_kv_heads} KV heads)"
            + (f" -- {warn}" if warn else "")
        )


def layout_of(model: nn.Module, family: ModelFamily) -> AttentionLayout:
    """The attention layout of `model`, checked against its first `o_proj`."""
    cfg = family.text_cfg(model.config)
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    # Never assume hidden_size // num_heads: Gemma 3 has 4 heads x 256 != 640.
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    layers = family.find_layers(model)
    o_proj = get_module(layers[0], family.o_proj)
    if o_proj is None:
        raise ValueError(f"{type(model).__name__}: no {family.o_proj} in decoder layer 0")
    if o_proj.in_features != n_heads * head_dim:
        raise ValueError(
            f"{type(model).__name__}: o_proj takes {o_proj.in_features} inputs but the config says "
            f"{n_heads} heads x head_dim {head_dim}; fix the family file for {family.name!r}."
        )
    return AttentionLayout(
        n_layers=len(layers),
        n_heads=n_heads,
        head_dim=head_dim,
        d_model=o_proj.out_features,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
    )


def wrap_model(
    name: str, model: nn.Module, tokenizer, *, processor=None, provenance: dict | None = None
) -> LoadedModel:
    """Describe an already-built transformers model (e.g. one built from a config in a test)."""
    family = family_for(model.config)
    provenance = dict(provenance or {})
    provenance.setdefault("name", name)
    provenance.setdefault("random_init", False)
    provenance.setdefault("vision_random_init", False)
    provenance.setdefault("notes", [])
    if provenance["random_init"] and not any("random" in n for n in provenance["notes"]):
        provenance["notes"].insert(0, "RANDOM-INITIALISED model: results are not real")
    model.eval()
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        family=family,
        layout=layout_of(model, family),
        processor=processor,
        provenance=provenance,
    )
