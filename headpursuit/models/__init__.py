"""Model loading and the per-family registry of where attention projections live."""

from headpursuit.models.loading import (
    EMBEDDED,
    AttentionLayout,
    LoadedModel,
    known_models,
    load_model,
    pad_batch,
    register_builder,
    wrap_model,
)
from headpursuit.models.families import FAMILIES, ModelFamily, family_for, register_family

__all__ = [
    "AttentionLayout", "LoadedModel", "load_model", "wrap_model", "pad_batch", "known_models",
    "register_builder", "EMBEDDED", "FAMILIES", "ModelFamily", "family_for", "register_family",
]
from headpursuit.models import tiny_vlm  # noqa: E402,F401  (registers the "tiny_vlm" builder)
