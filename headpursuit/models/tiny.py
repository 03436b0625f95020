"""Tiny random-initialised models built from configs, for tests and demos without any download.

Every model built here is marked `random_init=True`; every output produced with it says so.
"""

from __future__ import annotations

import functools

import torch

from headpursuit.models.embedded import EMBEDDED, cache_root, gguf_path
from headpursuit.models.handle import LoadedModel, wrap_model


@functools.lru_cache(maxsize=4)
def embedded_tokenizer(name: str = "smollm2"):
    """The tokenizer of an embedded model (cached on disk as a plain tokenizer after first use)."""
    from transformers import AutoTokenizer

    target = cache_root() / "tokenizers" / name
    if (target / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(target)
    entry = EMBEDDED[name]
    gguf = gguf_path(entry)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = target.with_name(target.name + ".tmp")
    tok.save_pretrained(tmp)
    tmp.rename(target) if not target.exists() else None
    return tok


# fmt: off
# Llama-style with grouped-query attention (like SmolLM2); Mistral and Qwen3 share the layout.
LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
# Gemma-3-style: heads * head_dim != hidden_size (4 x 24 = 96 vs 80), 1 KV head.
GEMMA3_LIKE = dict(hidden_size=80, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=24)
# fmt: on

TINY_TEXT_CONFIGS = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    # Qwen2 derives head_dim (64 / 4 = 16) from hidden_size.
    "qwen2": {k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"},
    "qwen3": LLAMA_LIKE,
    "gemma3_text": {
        **GEMMA3_LIKE,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    },
    "gemma2": {**GEMMA3_LIKE, "num_hidden_layers": 2, "num_key_value_heads": 2},
}


def tiny_text_model(
    model_type: str = "llama",
    *,
    seed: int = 0,
    o_proj_bias: bool = False,
    dtype=torch.float32,
    device: str = "cpu",
    **overrides,
) -> LoadedModel:
    """A small random causal LM of the given architecture, with the SmolLM2 tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in TINY_TEXT_CONFIGS:
        raise ValueError(f"No tiny config for {model_type!r}; known: {', '.join(TINY_TEXT_CONFIGS)}")
    tok = embedded_tokenizer("smollm2")
    cfg_kwargs = {**TINY_TEXT_CONFIGS[model_type], **overrides}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **cfg_kwargs,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if o_proj_bias:
        # Real models with an o_proj bias exist (e.g. some Qwen/Phi variants); test the bias term.
        for layer in model.model.layers:
            o = layer.self_attn.o_proj
            new = torch.nn.Linear(o.in_features, o.out_features, bias=True)
            new.weight.data.copy_(o.weight.data)
            new.bias.data.normal_(0, 0.1)
            layer.self_attn.o_proj = new
    with torch.no_grad():  # random-init norms are all ones; perturb them so gain folding is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(device=device, dtype=dtype)
    return wrap_model(
        f"tiny-{model_type}",
        model,
        tok,
        provenance={"source": f"random config {model_type}", "random_init": True, "seed": seed},
    )
