"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL: vision blocks at `model.visual.blocks` (attention output
`attn.proj`, never touched); the text decoder at `model.language_model.layers` (transformers >= 4.52,
checked against 5.23) or `model.layers` (older releases, where `model` was the text model).
The text decoder uses multimodal RoPE: capture lets the model build its 3-D position ids."""

from headpursuit.models.families.base import ModelFamily, register_family

QWEN_VL = register_family(
    ModelFamily(
        name="qwen_vl",
        model_types=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"),
        layers=("model.language_model.layers", "model.layers"),
        final_norm=("model.language_model.norm", "model.norm"),
        is_vlm=True,
        text_config="text_config",
    )
)
