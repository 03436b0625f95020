"""LLaVA and LLaVA-NeXT (the paper's VLM): a vision tower + projector + a language model.

Only `model.language_model` (the text decoder) is captured and edited; the vision tower has its
own attention (`out_proj`) that is never touched.
"""

from headpursuit.models.families.base import ModelFamily, register_family

LLAVA = register_family(
    ModelFamily(
        name="llava",
        model_types=("llava", "llava_next", "llava_onevision", "vipllava"),
        layers=("model.language_model.layers", "language_model.model.layers"),
        final_norm=("model.language_model.norm", "language_model.model.norm"),
        is_vlm=True,
        text_config="text_config",
    )
)
