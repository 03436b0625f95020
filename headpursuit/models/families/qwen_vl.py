"""Qwen2-VL / Qwen2.5-VL: the vision blocks use `attn.proj`; the text decoder uses `self_attn.o_proj`."""

from headpursuit.models.families.base import ModelFamily, register_family

QWEN_VL = register_family(
    ModelFamily(
        name="qwen_vl",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        layers=("model.language_model.layers", "model.layers"),
        final_norm=("model.language_model.norm", "model.norm"),
        is_vlm=True,
        text_config="text_config",
    )
)
