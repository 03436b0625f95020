"""Gemma 2 / Gemma 3 text models.

Gemma's RMSNorm multiplies by (1 + weight), hence `norm_gain_offset=1`. Gemma 3 has
`num_heads * head_dim != hidden_size` (270M: 4 x 256 vs 640): head_dim comes from the config.
"""

from headpursuit.models.families.base import ModelFamily, register_family

GEMMA = register_family(
    ModelFamily(
        name="gemma",
        model_types=("gemma", "gemma2", "gemma3_text"),
        final_norm=("model.norm",),
        norm_gain_offset=1.0,
    )
)
