"""The family record and its registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ModelFamily:
    """Where the parts Head Pursuit needs live in one architecture.

    Attributes:
        name: short family name.
        model_types: `config.model_type` values this family covers.
        layers: dotted paths (tried in order) to the language decoder's `nn.ModuleList` of layers.
        o_proj: dotted path, inside one decoder layer, to the attention output projection.
        final_norm: dotted paths (tried in order) to the final norm of the language decoder.
        norm_gain_offset: the final norm multiplies by `offset + weight` (Gemma: 1, others: 0).
        is_vlm: the model takes images; only its language decoder is captured and edited.
        text_config: attribute of the config holding the language model's config (VLMs).
    """

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...] = ("model.layers",)
    o_proj: str = "self_attn.o_proj"
    final_norm: tuple[str, ...] = ("model.norm",)
    norm_gain_offset: float = 0.0
    is_vlm: bool = False
    text_config: str | None = None
    notes: str = ""

    def text_cfg(self, config):
        if self.text_config and hasattr(config, self.text_config):
            return getattr(config, self.text_config)
        if hasattr(config, "get_text_config"):
            return config.get_text_config()
        return config

    def find_layers(self, model: nn.Module) -> nn.ModuleList:
        return _first_path(model, self.layers, "decoder layers", self)

    def find_final_norm(self, model: nn.Module) -> nn.Module:
        return _first_path(model, self.final_norm, "final norm", self)


FAMILIES: dict[str, ModelFamily] = {}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    FAMILIES[family.name] = family
    for mt in family.model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def family_for(config) -> ModelFamily:
    """The family of a transformers config, or a clear error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    supported = ", ".join(sorted(_BY_MODEL_TYPE))
    raise ValueError(
        f"Unsupported architecture model_type={model_type!r}. Supported model types: {supported}. "
        "To add one, create headpursuit/models/families/<family>.py with a ModelFamily naming the "
        "decoder layers, the attention output projection and the final norm (copy llama.py), and "
        "import it in headpursuit/models/families/__init__.py."
    )


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            return None
        mod = getattr(mod, part)
    return mod


def _first_path(model: nn.Module, paths: tuple[str, ...], what: str, family: ModelFamily):
    for p in paths:
        mod = get_module(model, p)
        if mod is not None:
            return mod
    raise ValueError(
        f"Family {family.name!r}: could not find the {what} of {type(model).__name__} at any of "
        f"{list(paths)}. The module layout may have moved in this transformers version; add the "
        f"new path to headpursuit/models/families/{family.name}.py."
    )
