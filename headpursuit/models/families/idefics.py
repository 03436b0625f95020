"""Idefics3 and SmolVLM: SigLIP-style tower + connector + a Llama text model at `model.text_model`."""

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
