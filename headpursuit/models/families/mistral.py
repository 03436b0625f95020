"""Mistral (the paper's language model, Mistral-7B): same layout as Llama."""

from headpursuit.models.families.base import ModelFamily, register_family

MISTRAL = register_family(ModelFamily(name="mistral", model_types=("mistral", "mixtral"), final_norm=("model.norm",)))
