"""LLaVA, LLaVA-NeXT (the paper's VLM), LLaVA-OneVision, VipLLaVA and Mistral 3 (Pixtral tower):
a vision tower + projector + a language model.

Only the text decoder is captured and edited: `model.language_model.layers` (transformers >= 4.52,
checked against 5.23) or `language_model.model.layers` (older releases). The vision tower has its
own attention (CLIP/SigLIP `out_proj`; Pixtral's is even named `attention.o_proj`, which is why
paths are explicit here and never matched by name) and is never touched.
"""

from headpursuit.models.families.base import ModelFamily, register_family

LLAVA = register_family(
    ModelFamily(
        name="llava",
        model_types=("llava", "llava_next", "llava_onevision", "vipllava", "mistral3"),
        layers=("model.language_model.layers", "language_model.model.layers"),
        final_norm=("model.language_model.norm", "language_model.model.norm"),
        is_vlm=True,
        text_config="text_config",
    )
)
