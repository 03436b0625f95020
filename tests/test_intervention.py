"""scale_heads: exact edits, KV cache, restoration."""

import pytest
import torch

from headpursuit.intervention import edits_active, scale_heads, uniform_scales
from headpursuit.models.hooks import add_pre_hook, live_hooks
from headpursuit.tasks.toxicity import hooks_active

PROMPTS = ["The capital of France is", "One, two, three,"]


def _logits(lm, prompts=PROMPTS):
    with torch.no_grad():
        return lm.model(**lm.encode(prompts)).logits


def _hooks(lm):
    return sum(len(lm.o_proj(i)._forward_pre_hooks) for i in range(lm.layout.n_layers))


def _weight_edited_logits(lm, scales, w_o_columns_scaled, prompts=PROMPTS):
    """Independent reference: scale W_O's columns of each head instead of hooking its input."""
    with w_o_columns_scaled(lm, scales):
        return _logits(lm, prompts)


@pytest.fixture(params=["tiny_llama", "tiny_gemma3"])
def lm(request):
    return request.getfixturevalue(request.param)


def test_alpha_one_changes_nothing(lm):
    base = _logits(lm)
    with scale_heads(lm, {(0, 0): 1.0, (1, 2): 1.0}):
        torch.testing.assert_close(_logits(lm), base)


@pytest.mark.parametrize("alpha", [0.0, -1.0, 2.5])
def test_equals_weight_edit(lm, alpha, w_o_columns_scaled):
    scales = {(0, 1): alpha, (2, 3): alpha, (2, 0): alpha}
    with scale_heads(lm, scales):
        hooked = _logits(lm)
    ref = _weight_edited_logits(lm, scales, w_o_columns_scaled)
    torch.testing.assert_close(hooked, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(hooked, _logits(lm), atol=1e-3)  # the edit did something


def test_alpha_zero_removes_exactly_the_head_contribution(lm):
    """At the edited layer the o_proj output drops by exactly W_O,h z_h (computed by hand)."""
    layer, head = 1, 2
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    rec = {}
    mod = lm.o_proj(layer)
    h1 = mod.register_forward_pre_hook(lambda m, a: rec.setdefault("x", a[0].detach()))
    h2 = mod.register_forward_hook(lambda m, a, o: rec.__setitem__("y", o.detach()))
    try:
        _logits(lm)
        x, y = rec.pop("x"), rec.pop("y")
        with scale_heads(lm, {(layer, head): 0.0}):
            _logits(lm)
        y_edit = rec["y"]
    finally:
        h1.remove()
        h2.remove()
    z_h = x.view(*x.shape[:2], H, dh)[:, :, head]
    W_h = lm.output_weight(layer).detach()[:, head * dh : (head + 1) * dh]
    torch.testing.assert_close(y_edit, y - z_h @ W_h.T, rtol=1e-4, atol=1e-4)


def _greedy_with_scores(lm, enc, max_new_tokens):
    """Greedy generation from the encoded prompts, returning the sequences and per-step scores."""
    return lm.model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        **lm.generation_kwargs(),
    )


def test_generate_with_kv_cache_equals_full_recompute(lm):
    scales = uniform_scales([(0, 0), (1, 1), (2, 3)], -1.0)
    enc = lm.encode(PROMPTS)
    with scale_heads(lm, scales):
        out = _greedy_with_scores(lm, enc, max_new_tokens=6)
        seq = out.sequences
        mask = torch.cat([enc["attention_mask"], torch.ones(seq.shape[0], 6, dtype=torch.long)], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            full = lm.model(input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=False).logits
    T = enc["input_ids"].shape[1]
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, full[:, T - 1 + step], rtol=1e-3, atol=1e-3)
    # ... and the edit really reached generation: without it the scores differ.
    plain = _greedy_with_scores(lm, enc, max_new_tokens=1)
    assert not torch.allclose(plain.scores[0], out.scores[0], atol=1e-3)


def test_restored_after_exception(lm):
    base = _logits(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with scale_heads(lm, {(0, 0): -1.0, (2, 1): 0.0}):
            assert _hooks(lm) == 2
            raise RuntimeError("boom")
    assert _hooks(lm) == 0
    torch.testing.assert_close(_logits(lm), base)


def test_edits_active_while_an_edit_is_on_and_only_then(lm):
    """The public record of live edits agrees with torch's own hook dicts (read here only, as an
    independent check): on inside `scale_heads`, nested blocks included, off after it, after an
    error too; a hook that is not an edit is not one."""
    assert not edits_active(lm) and not hooks_active(lm) and live_hooks(lm.model) == []
    other = add_pre_hook(lm.o_proj(0), lambda module, args: None)  # e.g. a capture: not an edit
    try:
        assert not edits_active(lm) and len(live_hooks(lm.model)) == 1 and _hooks(lm) == 1
        with scale_heads(lm, {(0, 0): -1.0}):
            assert edits_active(lm) and hooks_active(lm) and _hooks(lm) == 2
            with pytest.raises(RuntimeError, match="boom"):
                with scale_heads(lm, {(1, 1): 0.0}):
                    assert len(live_hooks(lm.model)) == 3 == _hooks(lm)
                    raise RuntimeError("boom")
            assert edits_active(lm) and len(live_hooks(lm.model)) == 2 == _hooks(lm)
        assert not edits_active(lm) and _hooks(lm) == 1
        with scale_heads(lm, {(0, 0): 1.0}):  # every factor 1: no hook, so no edit
            assert not edits_active(lm)
    finally:
        other.remove()
    other.remove()  # a second remove is harmless
    assert live_hooks(lm.model) == [] and _hooks(lm) == 0
    assert not hooks_active(lambda prompts, texts: 0.0)  # a fluency function is no model


def test_bad_heads_are_clear_errors(lm):
    with pytest.raises(ValueError, match="does not exist"):
        with scale_heads(lm, {(lm.layout.n_layers, 0): 0.0}):
            pass
    with pytest.raises(ValueError, match="must be a number"):
        with scale_heads(lm, {(0, 0): "big"}):
            pass
    assert _hooks(lm) == 0


@pytest.mark.slow
def test_smollm2_answers_paris_and_edit_restores(smollm2):
    lm = smollm2
    assert lm.provenance["random_init"] is False
    assert "4-bit" in lm.describe()
    enc = lm.encode([lm.format_prompt("What is the capital of France?")])
    gen = lambda: lm.model.generate(
        **{k: enc[k] for k in ("input_ids", "attention_mask")},
        max_new_tokens=12,
        do_sample=False,
        **lm.generation_kwargs(),
    )
    text = lm.tokenizer.decode(gen()[0, enc["input_ids"].shape[1] :])
    assert "Paris" in text
    with scale_heads(lm, {(l, h): 0.0 for l in range(3) for h in range(9)}):
        edited = lm.tokenizer.decode(gen()[0, enc["input_ids"].shape[1] :])
    assert edited != text  # ablating all heads of three layers must change the answer
    assert lm.tokenizer.decode(gen()[0, enc["input_ids"].shape[1] :]) == text
