"""Models: loading, the model handle, inputs and generation, and the per-family registry of where
attention projections live.

    handle.py      LoadedModel, AttentionLayout, wrap_model
    inputs.py      pad ids, padded batches, teacher-forced ids, image prompts, processor inputs
    generation.py  batched text / image generation
    embedded.py    the embedded GGUF models and their dequantised cache
    hub.py         hub ids and local checkpoint directories
    loading.py     load_model: builder, embedded or hub; dtype/device resolution
    families/      where each architecture keeps its layers, o_proj, final norm
"""

from headpursuit.models.embedded import EMBEDDED
from headpursuit.models.families import FAMILIES, ModelFamily, family_for, register_family
from headpursuit.models.handle import AttentionLayout, LoadedModel, wrap_model
from headpursuit.models.inputs import pad_batch
from headpursuit.models.loading import known_models, load_model, register_builder

__all__ = [
    "AttentionLayout",
    "LoadedModel",
    "load_model",
    "wrap_model",
    "pad_batch",
    "known_models",
    "register_builder",
    "EMBEDDED",
    "FAMILIES",
    "ModelFamily",
    "family_for",
    "register_family",
]
from headpursuit.models import tiny_vlm  # noqa: E402,F401  (registers the "tiny_vlm" builder)
