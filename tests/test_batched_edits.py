"""Per-row head scales and many edits per generate batch (issue 15): exact against one edit at a time."""

import math
import random

import pytest
import torch

from headpursuit.intervention import generate_with_edits, per_row_scales, scale_heads
from headpursuit.models.batching import (
    CPU_BATCH_SIZES,
    auto_batch_size,
    chosen_batch_sizes,
    largest_fitting,
    length_bucket,
    start_estimate,
)
from headpursuit.models.generation import generate_batch

# Mixed lengths: the batches are left-padded differently depending on which prompts share them.
PROMPTS = [
    "The capital of France is",
    "One, two, three,",
    "Hi",
    "A much longer prompt with quite a few more tokens in it than any of the others here",
    "Water boils at",
]


def _random_edit(lm, k, alpha, seed):
    rng = random.Random(seed)
    heads = rng.sample([(l, h) for l in range(lm.layout.n_layers) for h in range(lm.layout.n_heads)], k)
    return {head: alpha for head in heads}


def _edits(lm):
    return [
        {},
        {(0, 1): -1.0, (2, 3): -1.0},
        {(1, 0): 0.0},
        {(0, 0): 2.5, (1, 3): -1.0, (2, 3): 4.0},
        _random_edit(lm, 3, -1.0, seed=7),
    ]


def _one_at_a_time(lm, prompts, edits, *, max_new_tokens, batch_size):
    out = []
    for edit in edits:
        with scale_heads(lm, edit):
            out.append(
                generate_batch(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
            )
    return out


def _logits(lm, prompts):
    with torch.no_grad():
        return lm.model(**lm.encode(prompts)).logits


@pytest.fixture(params=["tiny_llama", "tiny_gemma3"])
def lm(request):
    return request.getfixturevalue(request.param)


# --- scale_heads with per-row scales ----------------------------------------------------


def test_per_row_scales_equal_each_edit_on_its_row(lm):
    edits = _edits(lm)
    prompts = [PROMPTS[0]] * len(edits)
    batched = None
    with scale_heads(lm, per_row_scales(edits)):
        batched = _logits(lm, prompts)
    for r, edit in enumerate(edits):
        with scale_heads(lm, edit):
            ref = _logits(lm, prompts)[r]
        torch.testing.assert_close(batched[r], ref, rtol=1e-5, atol=1e-5)


def test_same_factor_on_every_row_is_bit_identical_to_a_float(lm):
    with scale_heads(lm, {(0, 1): -1.0, (2, 0): 2.5}):
        ref = _logits(lm, PROMPTS)
    n = len(PROMPTS)
    with scale_heads(lm, {(0, 1): [-1.0] * n, (2, 0): torch.full((n,), 2.5)}):
        rows = _logits(lm, PROMPTS)
    assert torch.equal(rows, ref)


def test_rows_at_one_are_the_unedited_model(lm):
    base = _logits(lm, PROMPTS[:2])
    with scale_heads(lm, {(1, 2): [1.0, 0.0], (0, 0): [1.0, -1.0]}):
        mixed = _logits(lm, PROMPTS[:2])
    assert torch.equal(mixed[0], base[0])
    assert not torch.allclose(mixed[1], base[1], atol=1e-3)


def test_per_row_scales_inside_generate_with_kv_cache(lm):
    """Per-row scales reach every generation step: each row's greedy tokens are its own edit's."""
    edits = _edits(lm)[1:4]
    enc = lm.encode([PROMPTS[1]] * len(edits))
    kwargs = dict(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=6,
        do_sample=False,
        **lm.generation_kwargs(),
    )
    with scale_heads(lm, per_row_scales(edits)):
        batched = lm.model.generate(**kwargs)
    for r, edit in enumerate(edits):
        with scale_heads(lm, edit):
            assert torch.equal(lm.model.generate(**kwargs)[r], batched[r])


def test_per_row_errors_are_clear(lm):
    with pytest.raises(ValueError, match="same batch"):
        with scale_heads(lm, {(0, 0): [1.0, 2.0], (1, 1): [1.0, 2.0, 3.0]}):
            pass
    with pytest.raises(ValueError, match="1-D"):
        with scale_heads(lm, {(0, 0): [[1.0, 2.0]]}):
            pass
    with pytest.raises(ValueError, match="received a batch of 2 rows"):
        with scale_heads(lm, {(0, 0): [0.0, 1.0, 2.0]}):
            _logits(lm, PROMPTS[:2])
    assert sum(len(lm.o_proj(i)._forward_pre_hooks) for i in range(lm.layout.n_layers)) == 0


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, [1.0, math.nan], torch.tensor([math.inf])])
def test_non_finite_scales_are_refused(lm, alpha):
    with pytest.raises(ValueError, match="finite"):
        with scale_heads(lm, {(0, 0): alpha}):
            pass


@pytest.mark.parametrize("key", [(0.0, 1), (0, 1.0), (True, 0), (0, False), (0,), "ab"])
def test_non_integer_heads_are_refused(lm, key):
    with pytest.raises(ValueError, match="pairs"):
        with scale_heads(lm, {key: -1.0}):
            pass


def test_integer_like_heads_are_accepted(lm):
    import numpy as np

    with scale_heads(lm, {(np.int64(0), torch.tensor(1)): -1.0}):
        edited = _logits(lm, PROMPTS[:1])
    with scale_heads(lm, {(0, 1): -1.0}):
        assert torch.equal(_logits(lm, PROMPTS[:1]), edited)


# --- generate_with_edits ----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 5, 10, 64])
def test_generate_with_edits_equals_one_edit_at_a_time(lm, batch_size):
    edits = _edits(lm)
    ref = _one_at_a_time(lm, PROMPTS, edits, max_new_tokens=8, batch_size=2)
    assert generate_with_edits(lm, PROMPTS, edits, max_new_tokens=8, batch_size=batch_size, progress=False) == ref


def test_empty_edit_is_the_baseline_and_hooks_are_removed(lm):
    base = generate_batch(lm, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    out = generate_with_edits(lm, PROMPTS, [{(0, 0): 0.0}, {}], max_new_tokens=6, batch_size=4, progress=False)
    assert out[1] == base
    assert sum(len(lm.o_proj(i)._forward_pre_hooks) for i in range(lm.layout.n_layers)) == 0


def test_generate_with_edits_edge_cases(lm):
    assert generate_with_edits(lm, [], [{}, {(0, 0): 0.0}], progress=False) == [[], []]
    assert generate_with_edits(lm, PROMPTS, [], progress=False) == []
    with pytest.raises(ValueError, match="does not exist"):
        generate_with_edits(lm, PROMPTS, [{}, {(99, 0): 0.0}], progress=False)


# --- batch_size="auto" -------------------------------------------------------------------


def test_auto_batch_size_on_cpu_is_the_measured_default(tiny_llama):
    assert auto_batch_size(tiny_llama, "generate", prompt_len=40, new_tokens=16) == CPU_BATCH_SIZES["generate"]
    assert auto_batch_size(tiny_llama, "generate", prompt_len=40, rows=5) == 5
    with pytest.raises(ValueError, match="kind"):
        auto_batch_size(tiny_llama, "nonsense", prompt_len=4)


def test_auto_batch_size_in_generate(tiny_llama):
    ref = generate_batch(tiny_llama, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    assert generate_batch(tiny_llama, PROMPTS, max_new_tokens=5, batch_size="auto", progress=False) == ref
    with pytest.raises(ValueError, match="batch_size"):
        generate_batch(tiny_llama, PROMPTS, max_new_tokens=5, batch_size=0, progress=False)


def _oom_above(limit, calls):
    def probe(n):
        calls.append(n)
        if n > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")

    return probe


@pytest.mark.parametrize(
    ("fits", "start", "cap", "expected"), [(37, 8, 1024, 32), (37, 256, 1024, 32), (5, 1, 4, 4), (1024, 64, 100, 100)]
)
def test_largest_fitting_doubles_and_halves(fits, start, cap, expected):
    calls = []
    assert largest_fitting(_oom_above(fits, calls), start=start, limit=cap) == expected
    assert len(calls) == len(set(calls))  # never the same size twice


def test_largest_fitting_raises_when_one_row_does_not_fit_and_passes_other_errors():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        largest_fitting(_oom_above(0, []), start=4, limit=8)

    def broken(n):
        raise RuntimeError("not an OOM")

    with pytest.raises(RuntimeError, match="not an OOM"):
        largest_fitting(broken, start=4, limit=8)


def test_start_estimate_and_buckets(tiny_llama):
    assert [length_bucket(n) for n in (1, 16, 17, 100, 128, 129)] == [16, 16, 32, 128, 128, 256]
    small = start_estimate(tiny_llama, seq_len=64, free_bytes=2**30, with_cache=True)
    big = start_estimate(tiny_llama, seq_len=64, free_bytes=2**34, with_cache=True)
    longer = start_estimate(tiny_llama, seq_len=1024, free_bytes=2**30, with_cache=True)
    assert big > small > longer >= 1
    assert small & (small - 1) == 0  # a power of two


# --- on a GPU ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_on_device(device):
    from headpursuit.models.tiny import tiny_text_model

    return tiny_text_model("llama", device=str(device))


@pytest.mark.gpu
def test_per_row_scales_on_cuda(tiny_on_device):
    lm = tiny_on_device
    assert lm.device.type == "cuda"
    edits = _edits(lm)
    prompts = [PROMPTS[3]] * len(edits)
    with scale_heads(lm, per_row_scales(edits)):
        batched = _logits(lm, prompts)
    for r, edit in enumerate(edits):
        with scale_heads(lm, edit):
            torch.testing.assert_close(batched[r], _logits(lm, prompts)[r], rtol=1e-4, atol=1e-4)
    ref = _one_at_a_time(lm, PROMPTS, edits, max_new_tokens=6, batch_size=len(PROMPTS))
    assert generate_with_edits(lm, PROMPTS, edits, max_new_tokens=6, batch_size=len(edits) * len(PROMPTS)) == ref


@pytest.mark.gpu
def test_auto_batch_size_probes_once_on_cuda(tiny_on_device):
    lm = tiny_on_device
    size = auto_batch_size(lm, "forward", prompt_len=100, rows=256)
    assert 1 <= size <= 256
    assert auto_batch_size(lm, "forward", prompt_len=120, rows=256) == size  # same bucket: remembered
    assert any(c.kind == "forward" and c.prompt_len == 128 for c in chosen_batch_sizes(lm))
    out = generate_batch(lm, PROMPTS, max_new_tokens=4, batch_size="auto", progress=False)
    assert out == generate_batch(lm, PROMPTS, max_new_tokens=4, batch_size=len(PROMPTS), progress=False)


# --- the real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_batched_edits_equal_one_at_a_time(smollm2):
    lm = smollm2
    prompts = [lm.format_prompt(q) for q in ("What is the capital of France?", "Name a country in Africa.", "Hi")]
    prompts.append("The largest ocean on Earth is")  # a plain prompt: a very different length
    edits = [
        {},
        {(l, h): -1.0 for l, h in [(20, 3), (22, 1), (23, 5)]},
        _random_edit(lm, 6, -1.0, seed=1),
        _random_edit(lm, 6, 4.0, seed=2),
    ]
    ref = _one_at_a_time(lm, prompts, edits, max_new_tokens=10, batch_size=4)
    assert len({tuple(r) for r in ref}) > 1  # the edits change some answers
    for batch_size in (len(edits) * len(prompts), 6):
        assert generate_with_edits(lm, prompts, edits, max_new_tokens=10, batch_size=batch_size, progress=False) == ref
