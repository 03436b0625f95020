"""Llama family (Llama 2/3, SmolLM2, TinyLlama): pre-norm RMSNorm, `model.layers[i].self_attn.o_proj`."""

from headpursuit.models.families.base import ModelFamily, register_family

LLAMA = register_family(
    ModelFamily(
        name="llama",
        model_types=("llama",),
        layers=("model.layers",),
        o_proj="self_attn.o_proj",
        final_norm=("model.norm",),
    )
)
