"""Gemma 3 multimodal (4B and larger): SigLIP tower (`model.vision_tower`, never touched) + Gemma 3
text decoder at `model.language_model` (transformers >= 4.52, checked against 5.23; older:
`language_model.model`). Final norm gain is 1 + w; heads * head_dim != hidden_size."""

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
