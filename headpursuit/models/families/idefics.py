"""Idefics3 and SmolVLM: SigLIP-style tower (`model.vision_model`) + connector + a Llama text model
at `model.text_model` (same path in transformers 4.4x and 5.23). Only the text model is touched."""

from headpursuit.models.families.base import ModelFamily, register_family

IDEFICS = register_family(
    ModelFamily(
        name="idefics",
        model_types=("idefics3", "smolvlm"),
        layers=("model.text_model.layers",),
        final_norm=("model.text_model.norm",),
        is_vlm=True,
        text_config="text_config",
    )
)
