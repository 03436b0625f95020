"""head_effects: per-head edit effects on answer log-probabilities, against a weight-edit reference."""

import pytest
import torch

from headpursuit.capture import CaptureSample
from headpursuit.effects import answer_logprob, head_effects

SAMPLES = {
    "concept": [CaptureSample("The capital of France is", " Paris, a city"), CaptureSample("One, two,", " three")],
    "control": [CaptureSample("The colour of the sky is", " blue"), CaptureSample("Water is", " wet and cold, mostly")],
}


def _reference_logprob(lm, samples, scales, w_o_columns_scaled):
    """Independent path: one unpadded sequence at a time, full logits, W_O columns scaled in place."""
    out = []
    with w_o_columns_scaled(lm, scales):
        for s in samples:
            p, a = lm.token_ids(s.prompt), lm.token_ids(s.answer, special=False)
            ids = torch.tensor([p + a])
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
            out.append(torch.stack([logp[len(p) - 1 + i, t] for i, t in enumerate(a)]).mean())
    return torch.stack(out)


def _hooks(lm):
    return sum(len(lm.o_proj(i)._forward_pre_hooks) for i in range(lm.layout.n_layers))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma3"])
def test_answer_logprob_matches_unbatched_reference(request, fixture, w_o_columns_scaled):
    lm = request.getfixturevalue(fixture)
    samples = SAMPLES["concept"] + SAMPLES["control"]
    torch.testing.assert_close(
        answer_logprob(lm, samples, batch_size=3),
        _reference_logprob(lm, samples, {}, w_o_columns_scaled),
        rtol=1e-4,
        atol=1e-4,
    )
    scales = {(1, 2): -1.0}
    torch.testing.assert_close(
        answer_logprob(lm, samples, scales=scales),
        _reference_logprob(lm, samples, scales, w_o_columns_scaled),
        rtol=1e-4,
        atol=1e-4,
    )


def test_head_effects_equal_weight_edit_deltas(tiny_llama, w_o_columns_scaled):
    lm = tiny_llama
    heads = [(0, 1), (1, 3), (2, 0)]
    eff = head_effects(lm, SAMPLES, alpha=-1.0, heads=heads, batch_size=2, progress=False)
    assert list(eff.table.columns) == ["layer", "head", "delta_concept", "delta_control"]
    assert _hooks(lm) == 0
    for g, samples in SAMPLES.items():
        base = _reference_logprob(lm, samples, {}, w_o_columns_scaled)
        assert eff.baseline[g] == pytest.approx(float(base.mean()), abs=1e-4)
        for row in eff.table.itertuples():
            ref = float(
                (_reference_logprob(lm, samples, {(row.layer, row.head): -1.0}, w_o_columns_scaled) - base).mean()
            )
            assert getattr(row, f"delta_{g}") == pytest.approx(ref, abs=1e-4)
    assert eff.table[["delta_concept", "delta_control"]].abs().max().max() > 1e-4  # the edits did something
    same = head_effects(lm, SAMPLES, alpha=1.0, heads=heads, progress=False)
    assert same.table[["delta_concept", "delta_control"]].abs().max().max() < 1e-5


def test_head_effects_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="no samples for control"):
        head_effects(tiny_llama, {"concept": SAMPLES["concept"], "control": []}, progress=False)
    with pytest.raises(ValueError, match="answer"):
        head_effects(tiny_llama, {"concept": [CaptureSample("no answer here")]}, progress=False)
    with pytest.raises(ValueError, match="out of range|layer|head"):
        head_effects(tiny_llama, SAMPLES, heads=[(99, 0)], progress=False)
    assert _hooks(tiny_llama) == 0
