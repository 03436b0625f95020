"""Head Pursuit: find the attention heads that write a concept, and steer a model by rescaling them."""

from headpursuit.models import AttentionLayout, LoadedModel, load_model, wrap_model

__all__ = ["AttentionLayout", "LoadedModel", "load_model", "wrap_model"]
