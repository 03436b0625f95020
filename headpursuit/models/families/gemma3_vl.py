"""Gemma 3 multimodal (4B and larger): SigLIP tower + Gemma 3 text decoder (norm gain 1 + w)."""

from headpursuit.models.families.base import ModelFamily, register_family

GEMMA3_VL = register_family(
    ModelFamily(
        name="gemma3_vl",
        model_types=("gemma3",),
        layers=("model.language_model.layers", "language_model.model.layers"),
        final_norm=("model.language_model.norm", "language_model.model.norm"),
        norm_gain_offset=1.0,
        is_vlm=True,
        text_config="text_config",
    )
)
