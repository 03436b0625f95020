"""Qwen2 / Qwen2.5 / Qwen3 text models: Llama layout (Qwen2 has q/k/v biases, o_proj has none)."""

from headpursuit.models.families.base import ModelFamily, register_family

QWEN = register_family(ModelFamily(name="qwen", model_types=("qwen2", "qwen3")))
