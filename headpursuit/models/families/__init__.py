"""One small file per model family: where the language decoder's layers, the attention output
projection, the final norm and the unembedding live.

To add a family, copy `llama.py`, change the `model_types` and the paths, and import it below.
Paths are tried in order, so one family can cover several transformers versions.
"""

from headpursuit.models.families import (  # noqa: F401  (registration side effects)
    gemma,
    gemma3_vl,
    idefics,
    llama,
    llava,
    mistral,
    qwen,
    qwen_vl,
)
from headpursuit.models.families.base import FAMILIES, ModelFamily, family_for, register_family

__all__ = ["ModelFamily", "FAMILIES", "family_for", "register_family"]
