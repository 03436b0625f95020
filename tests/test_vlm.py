"""VLMs: only the language decoder is captured and edited; image inputs; family registry paths."""

import pytest
import torch
from vlm_samples import shape_samples

from headpursuit.capture import CaptureSample, capture_heads, o_proj_inputs, prepare_vlm_batch
from headpursuit.intervention import scale_heads
from headpursuit.models.inputs import image_prompt, processor_inputs, to_model
from headpursuit.models.tiny_vlm import TINY_VLM_CONFIGS, VISION_NOTE, tiny_family_model
from headpursuit.synthetic import draw_shape

VISION_PREFIXES = (
    "model.vision_tower",
    "model.multi_modal_projector",
    "model.visual",
    "model.vision_model",
    "model.connector",
)


def _module_names(lm):
    return {id(m): n for n, m in lm.model.named_modules()}


def _hooks(lm):
    """{(module name, hook id)} of every forward (pre-)hook in the model."""
    names = _module_names(lm)
    return {(names[id(m)], k) for m in lm.model.modules() for k in list(m._forward_pre_hooks) + list(m._forward_hooks)}


def _new_hooked_modules(lm, before):
    """Names of the modules that carry hooks not in `before` (transformers registers its own
    output-recording hooks on some modules; those are not ours)."""
    return {name for name, _ in _hooks(lm) - before}


def _vision_modules(lm):
    return [(n, m) for n, m in lm.model.named_modules() if n.startswith(VISION_PREFIXES)]


# ------------------------------------------------------------------------------------------
# tiny_vlm
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_vlm_provenance_and_layout(tiny_vlm):
    lm = tiny_vlm
    assert lm.family.name == "llava" and lm.family.is_vlm
    assert lm.provenance["vision_random_init"] is True
    assert VISION_NOTE in lm.provenance["notes"]
    assert lm.processor is not None
    lay = lm.layout  # SmolLM2's decoder
    assert (lay.n_layers, lay.n_heads, lay.head_dim, lay.d_model) == (30, 9, 64, 576)
    # the image token was added to the vocabulary and the unembedding grew with it
    image_id = lm.model.config.image_token_id
    assert lm.tokenizer.convert_ids_to_tokens(image_id) == "<image>"
    assert lm.unembedding().shape == (len(lm.tokenizer), 576)
    # language weights are SmolLM2's (tied embedding), vision weights are not part of it
    assert lm.unembedding().data_ptr() == lm.model.get_input_embeddings().weight.data_ptr()


@pytest.mark.slow
def test_contributions_sum_with_image(tiny_vlm):
    lm = tiny_vlm
    samples = shape_samples(lm)[:2]
    inputs, prepared, _ = prepare_vlm_batch(lm, samples, "answer", None, "left")
    assert (inputs["input_ids"] == lm.model.config.image_token_id).sum() == 2 * 16
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    layers = (0, 17, lm.layout.n_layers - 1)
    rec, handles = {}, []
    for layer in layers:  # one forward pass records every layer's o_proj input and output
        mod = lm.o_proj(layer)
        handles.append(mod.register_forward_pre_hook(lambda m, a, _l=layer: rec.__setitem__(("x", _l), a[0].detach())))
        handles.append(mod.register_forward_hook(lambda m, a, o, _l=layer: rec.__setitem__(("y", _l), o.detach())))
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        for h in handles:
            h.remove()
    for layer in layers:
        x, y = rec[("x", layer)], rec[("y", layer)]
        z = x.view(*x.shape[:2], H, dh)
        W = lm.output_weight(layer).detach()
        contrib = torch.einsum("bthd,mhd->bthm", z, W.view(W.shape[0], H, dh))
        assert contrib.shape[-1] == lm.layout.d_model
        total = contrib.sum(2)
        if lm.output_bias(layer) is not None:
            total = total + lm.output_bias(layer)
        torch.testing.assert_close(total, y, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_capture_and_edit_hook_only_language_o_proj(tiny_vlm):
    lm = tiny_vlm
    o_proj_names = {_module_names(lm)[id(lm.o_proj(i))] for i in range(lm.layout.n_layers)}
    assert all(n.startswith("model.language_model.layers.") for n in o_proj_names)
    assert _vision_modules(lm), "the tiny VLM should have a vision tower to check"
    assert not any(n.startswith(VISION_PREFIXES) for n in o_proj_names)
    before = _hooks(lm)
    with o_proj_inputs(lm, range(lm.layout.n_layers)):
        assert _new_hooked_modules(lm, before) == o_proj_names
    with scale_heads(lm, {(0, 1): -1.0, (29, 8): 0.0}):
        hooked = _new_hooked_modules(lm, before)
        assert hooked == {_module_names(lm)[id(lm.o_proj(0))], _module_names(lm)[id(lm.o_proj(29))]}
        assert not any(n.startswith(VISION_PREFIXES) for n in hooked)
    # capture_heads with an image: no hook anywhere during the run except on language o_proj
    seen = set()
    orig = torch.nn.Module.register_forward_pre_hook

    def spy(module, *a, **k):
        seen.add(_module_names(lm).get(id(module), "?"))
        return orig(module, *a, **k)

    torch.nn.Module.register_forward_pre_hook = spy
    try:
        capture_heads(lm, shape_samples(lm)[:1], positions="answer", progress=False)
    finally:
        torch.nn.Module.register_forward_pre_hook = orig
    assert seen == o_proj_names
    assert _hooks(lm) == before


@pytest.mark.slow
def test_vision_outputs_identical_under_scale_heads(tiny_vlm):
    lm = tiny_vlm
    inputs, _, _ = prepare_vlm_batch(lm, shape_samples(lm)[:2], "answer", None, "left")
    rec = {}

    def record(name):
        def hook(m, a, o):
            rec.setdefault(name, []).append(
                (o.last_hidden_state if hasattr(o, "last_hidden_state") else o).detach().clone()
            )

        return hook

    handles = [
        lm.model.model.vision_tower.register_forward_hook(record("tower")),
        lm.model.model.multi_modal_projector.register_forward_hook(record("projector")),
    ]
    try:
        with torch.no_grad():
            base = lm.model(**inputs).logits
            with scale_heads(lm, {(layer, h): -1.0 for layer in (2, 10) for h in range(9)}):
                edited = lm.model(**inputs).logits
    finally:
        for h in handles:
            h.remove()
    assert len(rec["tower"]) == 2
    assert torch.equal(rec["tower"][0], rec["tower"][1])
    assert torch.equal(rec["projector"][0], rec["projector"][1])
    assert not torch.allclose(base, edited)


@pytest.mark.slow
def test_scale_heads_inside_generate_with_images(tiny_vlm):
    lm = tiny_vlm
    prompt = image_prompt(lm, "What shape is shown in this image? Answer with one word.")
    enc = to_model(lm, processor_inputs(lm, [prompt], [draw_shape("circle", "red")]))

    def gen():
        with torch.no_grad():
            out = lm.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=lm.pad_token_id)
        return out[:, enc["input_ids"].shape[1] :]

    base = gen()
    with scale_heads(lm, {(layer, h): 1.0 for layer in range(4) for h in range(9)}):
        same = gen()
    with scale_heads(lm, {(layer, h): -1.0 for layer in range(0, 30, 3) for h in range(3)}):
        flipped = gen()
    after = gen()
    assert torch.equal(base, same)
    assert not torch.equal(base, flipped)
    assert torch.equal(base, after)


@pytest.mark.slow
def test_batched_image_capture_equals_one_at_a_time(tiny_vlm):
    lm = tiny_vlm
    samples = shape_samples(lm)
    layers = [0, 14, 29]
    one = [capture_heads(lm, [s], positions="answer", layers=layers, progress=False) for s in samples]
    for side in ("left", "right"):
        batched = capture_heads(
            lm, samples, positions="answer", layers=layers, batch_size=3, padding_side=side, progress=False
        )
        torch.testing.assert_close(batched.z, torch.cat([o.z for o in one]), rtol=1e-4, atol=1e-4)
        assert batched.position.tolist() == torch.cat([o.position for o in one]).tolist()
        assert batched.target_token.tolist() == torch.cat([o.target_token for o in one]).tolist()
        assert batched.sample_index.tolist() == [i for i, o in enumerate(one) for _ in range(o.n_rows)]


@pytest.mark.slow
def test_answer_boundary_in_processed_token_space(tiny_vlm):
    lm = tiny_vlm
    samples = shape_samples(lm)
    inputs, prepared, offsets = prepare_vlm_batch(lm, samples, "answer", None, "left")
    image_id = lm.model.config.image_token_id
    for i, (s, p) in enumerate(zip(samples, prepared)):
        prompt_only = processor_inputs(lm, [s.prompt], [s.image])["input_ids"][0].tolist()
        answer_ids = lm.token_ids(s.answer, special=False)
        assert p.prompt_len == len(prompt_only)  # 16 image tokens expanded inside
        assert prompt_only.count(image_id) == 16
        assert p.ids == prompt_only + answer_ids
        # positions predicting the answer tokens, targets are exactly the answer tokens
        assert p.keep == list(range(p.prompt_len - 1, len(p.ids) - 1))
        assert p.targets == answer_ids
        row = inputs["input_ids"][i, offsets[i] : offsets[i] + len(p.ids)].tolist()
        assert row == p.ids
        # left padding: explicit position ids restart at 0 on each sample's first real token
        pos = inputs["position_ids"][i, offsets[i] : offsets[i] + len(p.ids)]
        assert pos.tolist() == list(range(len(p.ids)))
        assert inputs["attention_mask"][i].sum().item() == len(p.ids)


@pytest.mark.slow
def test_answer_concept_positions_with_images(tiny_vlm):
    lm = tiny_vlm
    from headpursuit.concepts import load_concept

    colors = load_concept("colors", lm.tokenizer)
    samples = shape_samples(lm)
    acts = capture_heads(
        lm, samples, positions="answer_concept", layers=[0], concept_token_ids=colors.token_ids.tolist(), progress=False
    )
    words = [lm.tokenizer.decode([t]).strip().lower() for t in acts.target_token.tolist()]
    # "A red circle." -> red; "It is a blue square on white" -> blue, white; "Stripes" -> fallback
    assert words[:3] == ["red", "blue", "white"]
    assert acts.sample_index.tolist() == [0, 1, 1, 2]
    last = prepare_vlm_batch(lm, samples[2:], "last_prompt", None, "left")[1][0]
    assert acts.position[-1].item() == last.prompt_len - 1


@pytest.mark.slow
def test_mixed_text_and_image_batch_is_refused(tiny_vlm):
    lm = tiny_vlm
    s = shape_samples(lm)
    with pytest.raises(ValueError, match="mixes samples with and without images"):
        capture_heads(lm, [s[0], CaptureSample(lm.format_prompt("Hi"), "Hello")], progress=False)
    with pytest.raises(ValueError, match="image placeholder"):
        capture_heads(lm, [CaptureSample(lm.format_prompt("Hi"), "x", draw_shape("circle", "red"))], progress=False)


# ------------------------------------------------------------------------------------------
# The family registry on tiny random models of every supported VLM family
# ------------------------------------------------------------------------------------------

FAMILY_OF = {
    "llava": "llava",
    "llava_next": "llava",
    "qwen2_vl": "qwen_vl",
    "qwen2_5_vl": "qwen_vl",
    "qwen3_vl": "qwen_vl",
    "gemma3": "gemma3_vl",
    "mistral3": "llava",
    "idefics3": "idefics",
    "smolvlm": "idefics",
}


@pytest.mark.parametrize("model_type", sorted(TINY_VLM_CONFIGS))
def test_family_registry_finds_language_decoder(model_type):
    lm = tiny_family_model(model_type)
    assert lm.family.name == FAMILY_OF[model_type] and lm.family.is_vlm
    names = _module_names(lm)
    text_cfg = lm.model.config.text_config
    lay = lm.layout
    assert lay.n_layers == text_cfg.num_hidden_layers
    assert lay.n_heads == text_cfg.num_attention_heads
    assert lay.head_dim == text_cfg.head_dim
    assert lay.d_model == text_cfg.hidden_size
    decoder = lm.model.model.get_decoder() if hasattr(lm.model.model, "get_decoder") else None
    vision = [m for n, m in lm.model.named_modules() if n.startswith(VISION_PREFIXES)]
    assert vision, f"{model_type}: no vision module found to compare against"
    vision_ids = {id(m) for m in vision}
    for layer in range(lay.n_layers):
        o = lm.o_proj(layer)
        assert isinstance(o, torch.nn.Linear)
        assert (o.in_features, o.out_features) == (lay.n_heads * lay.head_dim, lay.d_model)
        assert id(o) not in vision_ids
        assert not names[id(o)].startswith(VISION_PREFIXES)
        if decoder is not None:
            assert any(o is m for m in decoder.modules())
    # the final norm is the language model's, the unembedding is the LM head
    norm = lm.final_norm()
    assert id(norm) not in vision_ids and norm.weight.shape == (lay.d_model,)
    if decoder is not None:
        assert norm is decoder.norm
    assert lm.unembedding().shape == (text_cfg.vocab_size, lay.d_model)
    assert lm.unembedding().data_ptr() == lm.model.get_output_embeddings().weight.data_ptr()
    if model_type == "gemma3":
        assert lay.n_heads * lay.head_dim != lay.d_model
        assert lm.family.norm_gain_offset == 1.0
    if model_type == "mistral3":  # Pixtral's vision attention output is also named o_proj
        vision_o = [n for n, _ in lm.model.named_modules() if n.endswith("o_proj") and n.startswith(VISION_PREFIXES)]
        assert vision_o and not set(vision_o) & {names[id(lm.o_proj(i))] for i in range(lay.n_layers)}
    # capture and editing hook exactly the language o_proj modules
    before = _hooks(lm)
    with o_proj_inputs(lm, range(lay.n_layers)):
        assert _new_hooked_modules(lm, before) == {names[id(lm.o_proj(i))] for i in range(lay.n_layers)}
    with scale_heads(lm, {(i, 0): -1.0 for i in range(lay.n_layers)}):
        assert _new_hooked_modules(lm, before) == {names[id(lm.o_proj(i))] for i in range(lay.n_layers)}
    assert _hooks(lm) == before


# ------------------------------------------------------------------------------------------
# Image inputs through each family's own processor (tiny random models, local processors)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3"])
def test_family_image_capture_batching_and_editing(model_type):
    from headpursuit.models.generation import generate_with_images
    from headpursuit.models.tiny_vlm import tiny_family_model_with_processor

    lm = tiny_family_model_with_processor(model_type)
    short = image_prompt(lm, "What?")
    long = image_prompt(lm, "What shape is shown here, in a few words?")
    # different image sizes: LLaVA-NeXT (any-res) and Qwen (dynamic resolution) differ per image
    samples = [
        CaptureSample(short, "A red circle", draw_shape("circle", "red")),
        CaptureSample(long, "Blue square it is, really", draw_shape("square", "blue", size=48)),
        CaptureSample(short, "x", draw_shape("star", "green", size=80)),
    ]
    one = [capture_heads(lm, [s], positions="answer", progress=False) for s in samples]
    for side in ("left", "right"):
        batched = capture_heads(lm, samples, positions="answer", padding_side=side, batch_size=3, progress=False)
        torch.testing.assert_close(batched.z, torch.cat([o.z for o in one]), rtol=1e-4, atol=1e-4)
        assert batched.target_token.tolist() == [t for s in samples for t in lm.token_ids(s.answer, special=False)]
    # M-RoPE models compute their own 3-D positions; the others get explicit 1-D ones
    inputs, _, _ = prepare_vlm_batch(lm, samples, "answer", None, "left")
    assert ("position_ids" in inputs) == (model_type not in ("qwen2_vl", "qwen2_5_vl"))
    # editing inside generate with images; the vision side never carries our hooks
    before = _hooks(lm)
    images = [draw_shape("circle", "red"), draw_shape("square", "blue")]
    base = generate_with_images(lm, [short, long], images, max_new_tokens=3, progress=False)
    with scale_heads(lm, {(layer, h): -1.0 for layer in range(lm.layout.n_layers) for h in range(2)}):
        assert not any(n.startswith(VISION_PREFIXES) for n in _new_hooked_modules(lm, before))
        edited = generate_with_images(lm, [short, long], images, max_new_tokens=3, progress=False)
    assert edited != base
    assert generate_with_images(lm, [short, long], images, max_new_tokens=3, progress=False) == base
    assert _hooks(lm) == before
