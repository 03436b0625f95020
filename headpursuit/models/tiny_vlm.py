"""`tiny_vlm`: an offline LLaVA-style model whose language model is the embedded SmolLM2.

No vision-language weights can be installed on a machine without hub access, so the VLM code
paths (image tokens, processor, capture and editing of the language decoder only) are exercised
on a model assembled here:

* language model + unembedding: the real SmolLM2-135M-Instruct (`load_model("smollm2")`, the
  4-bit GGUF checkpoint dequantised to float), with one token, ``<image>``, added to the
  vocabulary (its embedding row is the mean of the existing rows; it is never a target);
* vision tower: a tiny CLIP vision encoder (2 layers, hidden 64, 32x32 images in 8x8 patches,
  so 16 image tokens per image), RANDOM-INITIALISED from a seed;
* projector: LLaVA's two-layer MLP, RANDOM-INITIALISED from the same seed and rescaled so that
  projected image tokens have the mean norm of SmolLM2's token embeddings (without this the
  language model sees out-of-range inputs and stops producing words);
* processor: `LlavaProcessor` from a locally built PIL `CLIPImageProcessorPil` and the SmolLM2
  tokenizer, with a chat template that renders ``{"type": "image"}`` content as ``<image>``.

The vision side carries no information a person would call "seeing": answers about images are the
language model's guesses conditioned on noise-like image tokens. Every model built here has
``provenance["vision_random_init"] = True`` and the note `VISION_NOTE`; tasks copy both into their
outputs.

`tiny_family_model(model_type)` builds tiny *fully random* models of each supported VLM family
(LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, Mistral 3, Idefics3, SmolVLM) from
their config classes,
for registry tests; nothing is downloaded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from headpursuit.models.handle import LoadedModel, wrap_model
from headpursuit.models.loading import load_model, register_builder
from headpursuit.models.tiny import GEMMA3_LIKE, LLAMA_LIKE, embedded_tokenizer

VISION_NOTE = "vision tower and projector are RANDOM-INITIALISED: image results are not real"
IMAGE_TOKEN = "<image>"

# SmolLM2's own template, extended so that a message's content may be a list of
# {"type": "image"} / {"type": "text", "text": ...} parts (the processor's chat format).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

DEFAULT_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, projection_dim=64)  # fmt: skip


def build_tiny_vlm(
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    vision: dict | None = None,
    calibrate_projector: bool = True,
    **unused: Any,
) -> LoadedModel:
    """SmolLM2 (real weights) + random tiny CLIP tower and projector, as a LLaVA model.

    Args:
        seed: seeds the vision tower and projector initialisation (the language model is fixed).
        vision: overrides of the CLIP vision config (`DEFAULT_VISION`).
        calibrate_projector: rescale the projector's output layer so projected image tokens have
            the mean norm of the token embeddings.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    if unused:
        raise TypeError(f"tiny_vlm: unexpected options {sorted(unused)}")
    base = load_model("smollm2", dtype=torch.float32, device="cpu")
    causal = base.model
    tok = base.tokenizer  # a fresh tokenizer instance per load: safe to extend
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)

    # One new row; set it to the mean embedding (deterministic, unlike transformers' sampled
    # mean-resizing). SmolLM2 ties lm_head to the embedding, so the unembedding grows with it.
    old = causal.get_input_embeddings().weight.detach().clone()
    causal.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        emb = causal.get_input_embeddings().weight
        emb[: old.shape[0]] = old
        emb[old.shape[0] :] = old.mean(0)
    if causal.get_output_embeddings().weight.shape[0] != len(tok):
        raise RuntimeError("tiny_vlm: the unembedding was not resized with the embedding")

    vcfg = CLIPVisionConfig(**{**DEFAULT_VISION, **(vision or {})})
    text_cfg = copy.deepcopy(causal.config)
    text_cfg.vocab_size = len(tok)
    n_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vcfg,
        text_config=text_cfg,
        image_token_index=image_token_id,
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )
    # Build the shell on the meta device (no 135M random init), then put real modules in it.
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(config)
    from transformers import CLIPVisionModel

    torch.manual_seed(seed)
    vlm.model.vision_tower = CLIPVisionModel(vcfg)
    vlm.model.multi_modal_projector = LlavaMultiModalProjector(config)
    vlm.model.language_model = causal.model
    vlm.lm_head = causal.lm_head
    vlm.generation_config = copy.deepcopy(causal.generation_config)
    vlm.generation_config.pad_token_id = tok.pad_token_id
    left = [n for n, p in list(vlm.named_parameters()) + list(vlm.named_buffers()) if p.is_meta]
    if left:
        raise RuntimeError(f"tiny_vlm: parameters left on the meta device: {left[:5]}")

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": vcfg.image_size}, crop_size={"height": vcfg.image_size, "width": vcfg.image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    vlm.eval()
    if calibrate_projector:
        _calibrate_projector(vlm, processor, target_norm=old.norm(dim=-1).mean().item(), seed=seed)

    provenance = {
        "name": "tiny_vlm",
        "source": "language model: "
        + base.provenance.get("source", "smollm2")
        + f"; vision tower + projector: random CLIP vision config (seed {seed})",
        "quantisation": base.provenance.get("quantisation"),
        "random_init": False,
        "vision_random_init": True,
        "seed": seed,
        "vision_config": {k: getattr(vcfg, k) for k in DEFAULT_VISION},
        "image_token": IMAGE_TOKEN,
        "notes": [VISION_NOTE, *base.provenance.get("notes", [])],
    }
    vlm = vlm.to(device=device, dtype=dtype)
    return wrap_model("tiny_vlm", vlm, tok, processor=processor, provenance=provenance)


@torch.no_grad()
def _calibrate_projector(vlm, processor, *, target_norm: float, seed: int) -> None:
    """Scale the projector's last layer so image tokens have the embeddings' mean norm."""
    from headpursuit.synthetic import draw_shape  # needs pillow (the `vision` extra): only when built

    images = [draw_shape(s, c) for s, c in (("circle", "red"), ("square", "blue"), ("triangle", "green"))]
    pix = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    feats = vlm.model.get_image_features(pixel_values=pix, return_dict=True).pooler_output
    norm = torch.cat(list(feats), 0).norm(dim=-1).mean().item()
    if norm > 0:
        proj = vlm.model.multi_modal_projector.linear_2
        proj.weight.mul_(target_norm / norm)
        if proj.bias is not None:
            proj.bias.mul_(target_norm / norm)


register_builder("tiny_vlm", build_tiny_vlm)


# ------------------------------------------------------------------------------------------
# Tiny fully random models of every supported VLM family (registry tests; no download)
# ------------------------------------------------------------------------------------------

# fmt: off
_TXT = {**LLAMA_LIKE, "vocab_size": 1000}
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=8)
_MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3]}
_QWEN_TOKENS = dict(image_token_id=998, video_token_id=997, vision_start_token_id=996)
# Qwen2.5-VL / Qwen3-VL vision blocks (Qwen2-VL's differ: embed_dim, mlp_ratio)
_QWEN_VISION = dict(depth=2, hidden_size=32, out_hidden_size=64, num_heads=2, intermediate_size=64, patch_size=4,
                    spatial_merge_size=2, temporal_patch_size=2)

TINY_VLM_CONFIGS: dict[str, dict] = {
    "llava": dict(text_config=dict(model_type="llama", **_TXT),
                  vision_config=dict(model_type="clip_vision_model", projection_dim=32, **_CLIP),
                  image_token_index=999),
    "llava_next": dict(text_config=dict(model_type="llama", **_TXT),
                       vision_config=dict(model_type="clip_vision_model", projection_dim=32, **_CLIP),
                       image_token_index=999, image_grid_pinpoints=[[32, 32], [32, 64]]),
    "qwen2_vl": dict(text_config=dict(**_TXT, rope_parameters=_MROPE),
                     vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                                        spatial_merge_size=2, temporal_patch_size=2),
                     **_QWEN_TOKENS),
    "qwen2_5_vl": dict(text_config=dict(**_TXT, rope_parameters=_MROPE),
                       vision_config=dict(**_QWEN_VISION, fullatt_block_indexes=[1], window_size=16),
                       **_QWEN_TOKENS),
    # Gemma 3: heads * head_dim (4 x 24 = 96) != hidden_size (80), one KV head.
    "gemma3": dict(text_config={**GEMMA3_LIKE, "vocab_size": 1000, "sliding_window": 16},
                   vision_config=dict(**_CLIP), mm_tokens_per_image=4, image_token_index=999, boi_token_index=998,
                   eoi_token_index=997),
    "qwen3_vl": dict(text_config=dict(**_TXT, rope_parameters={**_MROPE, "mrope_interleaved": True}),
                     vision_config=dict(**_QWEN_VISION, deepstack_visual_indexes=[0], num_position_embeddings=64)),
    # Mistral 3: Pixtral's vision attention output is also called `o_proj`.
    "mistral3": dict(text_config=dict(model_type="mistral", **_TXT),
                     vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8, head_dim=16)),
    "idefics3": dict(text_config=dict(model_type="llama", **_TXT), vision_config=dict(**_CLIP), image_token_id=999,
                     scale_factor=2),
    "smolvlm": dict(text_config=dict(model_type="llama", **_TXT), vision_config=dict(**_CLIP), image_token_id=999,
                    scale_factor=2),
}
# fmt: on


def tiny_family_model(model_type: str, *, seed: int = 0) -> LoadedModel:
    """A tiny random VLM of `model_type` built from its config class (no tokenizer/processor)."""
    from transformers import AutoConfig

    if model_type not in TINY_VLM_CONFIGS:
        raise ValueError(f"No tiny VLM config for {model_type!r}; known: {', '.join(TINY_VLM_CONFIGS)}")
    config = AutoConfig.for_model(model_type, **copy.deepcopy(TINY_VLM_CONFIGS[model_type]))
    return _random_vlm(model_type, config, None, None, f"random config {model_type}", seed)


def _random_vlm(model_type: str, config: Any, tok: Any, processor: Any, source: str, seed: int) -> LoadedModel:
    """Random weights for `config` (seeded), wrapped and labelled random everywhere."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    provenance = {"source": source, "random_init": True, "vision_random_init": True, "seed": seed}
    return wrap_model(f"tiny-{model_type}", model, tok, processor=processor, provenance=provenance)


# Placeholder tokens each family's processor expects, added to the SmolLM2 tokenizer.
_FAMILY_TOKENS = {
    "llava": ["<image>"],
    "llava_next": ["<image>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
}
_PLACEHOLDER = {
    "llava": "<image>\n",
    "llava_next": "<image>\n",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>",
}


def _chat_template(placeholder: str) -> str:
    return CHAT_TEMPLATE.replace("{{ '<image>\\n' }}", "{{ '" + placeholder.replace("\n", "\\n") + "' }}")


def tiny_family_model_with_processor(model_type: str, *, seed: int = 0) -> LoadedModel:
    """A tiny random VLM of `model_type` with a locally built processor (PIL image processor +
    the SmolLM2 tokenizer with the family's placeholder tokens), so image inputs run end to end.

    Supported: llava, llava_next, qwen2_vl, qwen2_5_vl, gemma3. Qwen's processor is built without
    its video processor (which needs torchvision).
    """
    from transformers import AutoConfig

    if model_type not in _FAMILY_TOKENS:
        raise ValueError(f"no processor recipe for {model_type!r}; known: {', '.join(_FAMILY_TOKENS)}")
    tok = copy.deepcopy(embedded_tokenizer("smollm2"))
    tok.add_tokens(_FAMILY_TOKENS[model_type], special_tokens=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _FAMILY_TOKENS[model_type]}
    kw = copy.deepcopy(TINY_VLM_CONFIGS[model_type])
    kw["text_config"]["vocab_size"] = len(tok)
    template = _chat_template(_PLACEHOLDER[model_type])
    if model_type in ("llava", "llava_next"):
        from transformers import LlavaNextProcessor, LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        kw["image_token_index"] = ids["<image>"]
        size = kw["vision_config"]["image_size"]
        common = dict(
            tokenizer=tok,
            patch_size=kw["vision_config"]["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
            image_token="<image>",
        )
        if model_type == "llava":
            ip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
            processor = LlavaProcessor(image_processor=ip, **common)
        else:
            ip = LlavaNextImageProcessorPil(
                size={"shortest_edge": size},
                crop_size={"height": size, "width": size},
                image_grid_pinpoints=kw["image_grid_pinpoints"],
            )
            processor = LlavaNextProcessor(image_processor=ip, **common)
    elif model_type in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.processing_utils import ProcessorMixin

        class _ImageOnlyQwenProcessor(Qwen2VLProcessor):
            def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **_):
                self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
                self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
                self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
                ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        kw.update(
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
        )
        ip = Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=32 * 32, patch_size=4, merge_size=2, temporal_patch_size=2
        )
        processor = _ImageOnlyQwenProcessor(image_processor=ip, tokenizer=tok, chat_template=template)
    else:  # gemma3
        from transformers import Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        tok.boi_token, tok.image_token, tok.eoi_token = ("<start_of_image>", "<image_soft_token>", "<end_of_image>")
        tok.boi_token_id = ids["<start_of_image>"]
        tok.image_token_id = ids["<image_soft_token>"]
        tok.eoi_token_id = ids["<end_of_image>"]
        kw.update(
            image_token_index=ids["<image_soft_token>"],
            boi_token_index=ids["<start_of_image>"],
            eoi_token_index=ids["<end_of_image>"],
        )
        size = kw["vision_config"]["image_size"]
        ip = Gemma3ImageProcessorPil(size={"height": size, "width": size})
        processor = Gemma3Processor(
            image_processor=ip, tokenizer=tok, chat_template=template, image_seq_length=kw["mm_tokens_per_image"]
        )
    config = AutoConfig.for_model(model_type, **kw)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for cfg in (config, config.text_config):
            if hasattr(cfg, attr):
                setattr(cfg, attr, getattr(tok, attr))
    return _random_vlm(model_type, config, tok, processor, f"random config {model_type} + local processor", seed)
