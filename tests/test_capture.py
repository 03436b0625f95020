"""Per-head capture: exact decomposition, padding, positions, cache."""

import pytest
import torch

from headpursuit.capture import (
    ACTIVATIONS,
    CAPTURE_STATS,
    CacheError,
    CaptureSample,
    HeadActivations,
    activation_key,
    capture_heads,
)
from headpursuit.models.inputs import pad_batch
from headpursuit.store import Store

PROMPTS = [
    "The Eiffel Tower is in",
    "Water boils at one hundred degrees and",
    "Hi",
    "In which country is the Colosseum? It is in Italy, a country in southern Europe",
]


def _o_proj_io(lm, layer, inputs):
    """The input and output of one layer's o_proj, recorded by plain hooks (the reference)."""
    rec = {}
    mod = lm.o_proj(layer)
    h1 = mod.register_forward_pre_hook(lambda m, a: rec.__setitem__("x", a[0].detach()))
    h2 = mod.register_forward_hook(lambda m, a, o: rec.__setitem__("y", o.detach()))
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        h1.remove()
        h2.remove()
    return rec["x"], rec["y"]


def _check_contributions_sum(lm):
    inputs = lm.encode(PROMPTS[:2])
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    for layer in (0, lm.layout.n_layers - 1):
        x, y = _o_proj_io(lm, layer, inputs)
        z = x.view(*x.shape[:2], H, dh)
        W = lm.output_weight(layer).detach()
        contrib = torch.einsum("bthd,mhd->bthm", z, W.view(W.shape[0], H, dh))
        total = contrib.sum(2)
        if lm.output_bias(layer) is not None:
            total = total + lm.output_bias(layer)
        torch.testing.assert_close(total, y, rtol=1e-4, atol=1e-4)
        # Splitting the o_proj OUTPUT into heads would be wrong: make sure the test could tell.
        assert contrib.shape[-1] == lm.layout.d_model


def test_contributions_sum_gemma3_style(tiny_gemma3):
    lay = tiny_gemma3.layout
    assert lay.n_heads * lay.head_dim != lay.d_model  # the case that breaks hidden//heads
    _check_contributions_sum(tiny_gemma3)


def test_contributions_sum_with_bias(tiny_llama):
    assert tiny_llama.output_bias(0) is not None
    _check_contributions_sum(tiny_llama)


@pytest.mark.slow
def test_contributions_sum_smollm2(smollm2):
    _check_contributions_sum(smollm2)


def test_captured_z_equals_o_proj_input(tiny_gemma3):
    lm = tiny_gemma3
    acts = capture_heads(lm, PROMPTS[:1], positions="all", progress=False)
    x, _ = _o_proj_io(lm, 1, lm.encode(PROMPTS[:1]))
    torch.testing.assert_close(acts.head_layer(1).reshape(acts.n_rows, -1), x[0], rtol=1e-5, atol=1e-5)
    # contributions() is the same decomposition through the stored z
    c = acts.contributions(lm, 1)
    y = torch.nn.functional.linear(x[0], lm.output_weight(1).detach())
    torch.testing.assert_close(c.sum(1), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["last_prompt", "answer", "all"])
def test_batched_equals_single(tiny_llama, side, positions):
    samples = [CaptureSample(p, answer=" Paris, France." if i % 2 == 0 else " yes") for i, p in enumerate(PROMPTS)]
    batched = capture_heads(tiny_llama, samples, positions=positions, batch_size=4, padding_side=side, progress=False)
    singles = [capture_heads(tiny_llama, [s], positions=positions, batch_size=1, progress=False) for s in samples]
    z_single = torch.cat([a.z for a in singles])
    assert batched.z.shape == z_single.shape
    torch.testing.assert_close(batched.z, z_single, rtol=1e-4, atol=1e-4)
    assert batched.position.tolist() == torch.cat([a.position for a in singles]).tolist()
    assert batched.target_token.tolist() == torch.cat([a.target_token for a in singles]).tolist()


def test_auto_batch_size_equals_fixed_batches(tiny_llama):
    from headpursuit.models.batching import CPU_BATCH_SIZES

    samples = [CaptureSample(p, "Paris") for p in PROMPTS]
    before = CAPTURE_STATS["forward_batches"]
    auto = capture_heads(tiny_llama, samples, positions="answer", batch_size="auto", progress=False)
    n_batches = CAPTURE_STATS["forward_batches"] - before
    fixed = capture_heads(tiny_llama, samples, positions="answer", batch_size=1, progress=False)
    # on CPU, auto is the fixed forward default: every sample here fits in one batch
    assert n_batches == -(-len(samples) // CPU_BATCH_SIZES["forward"])
    torch.testing.assert_close(auto.z, fixed.z, rtol=1e-5, atol=1e-5)
    assert auto.sample_index.tolist() == fixed.sample_index.tolist()
    for bad in (0, "big", 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            capture_heads(tiny_llama, samples, batch_size=bad, progress=False)


@pytest.mark.slow
def test_batched_left_padding_smollm2(smollm2):
    prompts = [smollm2.format_prompt(q) for q in ("Hi", "What is the capital of a large country in Europe?")]
    batched = capture_heads(smollm2, prompts, batch_size=2, progress=False)
    single = torch.cat([capture_heads(smollm2, [p], progress=False).z for p in prompts])
    torch.testing.assert_close(batched.z, single, rtol=1e-3, atol=1e-3)


def test_positions_semantics(tiny_llama):
    lm = tiny_llama
    prompt, answer = "Q: Where is Rome? A:", " Italy is the answer"
    p_ids = lm.token_ids(prompt)
    a_ids = lm.token_ids(answer, special=False)
    s = CaptureSample(prompt, answer=answer)
    last = capture_heads(lm, [s], positions="last_prompt", progress=False)
    assert last.position.tolist() == [len(p_ids) - 1]
    assert last.target_token.tolist() == [a_ids[0]]
    ans = capture_heads(lm, [s], positions="answer", progress=False)
    assert ans.target_token.tolist() == a_ids  # one row per answer token, predicting it
    concept = {a_ids[0]}
    ac = capture_heads(lm, [s], positions="answer_concept", concept_token_ids=concept, progress=False)
    assert ac.target_token.tolist() == [a_ids[0]]
    # No concept token in the answer: fall back to the last prompt token.
    fb = capture_heads(lm, [s], positions="answer_concept", concept_token_ids={-5}, progress=False)
    assert fb.position.tolist() == [len(p_ids) - 1]
    with pytest.raises(ValueError, match="needs each sample's answer"):
        capture_heads(lm, [prompt], positions="answer", progress=False)
    with pytest.raises(ValueError, match="Unknown positions"):
        capture_heads(lm, [prompt], positions="middle", progress=False)
    with pytest.raises(ValueError, match="empty"):
        capture_heads(lm, [], progress=False)


def test_layers_subset(tiny_llama):
    acts = capture_heads(tiny_llama, PROMPTS, layers=[2, 0], progress=False)
    full = capture_heads(tiny_llama, PROMPTS, progress=False)
    torch.testing.assert_close(acts.head_layer(2), full.head_layer(2))
    torch.testing.assert_close(acts.head(0, 1), full.head(0, 1))
    with pytest.raises(ValueError, match="out of range"):
        capture_heads(tiny_llama, PROMPTS, layers=[99], progress=False)


def test_cache_served_from_disk(tiny_llama, tmp_path):
    samples = [CaptureSample(p, answer=" ok") for p in PROMPTS]
    before = CAPTURE_STATS["forward_batches"]
    a = capture_heads(tiny_llama, samples, positions="answer", cache_dir=tmp_path, batch_size=2, progress=False)
    assert CAPTURE_STATS["forward_batches"] == before + 2
    b = capture_heads(tiny_llama, samples, positions="answer", cache_dir=tmp_path, batch_size=2, progress=False)
    assert CAPTURE_STATS["forward_batches"] == before + 2  # no new forward pass
    assert b.meta["from_cache"] and not a.meta["from_cache"]
    torch.testing.assert_close(a.z, b.z)
    assert a.target_token.tolist() == b.target_token.tolist()
    # Different inputs -> a different key -> recomputed.
    capture_heads(tiny_llama, samples[:2], positions="answer", cache_dir=tmp_path, progress=False)
    assert CAPTURE_STATS["forward_batches"] == before + 3


def test_a_folder_and_a_store_at_it_share_one_entry(tiny_llama, tmp_path):
    """`cache_dir` given as a folder becomes a store: the same entry (``acts/<activation_key>``) as a
    `Store` at that folder, so the library and the app (`RunCache`, a Store) read each other's."""
    from headpursuit.app.cache import RunCache

    before = CAPTURE_STATS["forward_batches"]
    a = capture_heads(tiny_llama, PROMPTS, cache_dir=tmp_path, progress=False)
    key = activation_key(
        tiny_llama, [CaptureSample(p) for p in PROMPTS], "last_prompt", range(tiny_llama.layout.n_layers), None
    )
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("acts/*.safetensors")] == [
        f"acts/{key}.safetensors"
    ]
    assert Store(tmp_path).has("acts", key, ACTIVATIONS)
    cache = RunCache(tmp_path)
    b = capture_heads(tiny_llama, PROMPTS, cache_dir=cache, progress=False)
    assert CAPTURE_STATS["forward_batches"] == before + 1 and b.meta["from_cache"] and cache.hits == {"acts": [True]}
    torch.testing.assert_close(a.z, b.z)
    off = RunCache(None)  # no cache: computed, the miss recorded
    capture_heads(tiny_llama, PROMPTS, cache_dir=off, progress=False)
    assert off.hits == {"acts": [False]} and CAPTURE_STATS["forward_batches"] == before + 2


def test_corrupt_cache_is_a_clear_error(tiny_llama, tmp_path):
    capture_heads(tiny_llama, PROMPTS[:1], cache_dir=tmp_path, progress=False)
    (f,) = list(tmp_path.glob("acts/*.safetensors"))
    f.write_bytes(b"not a safetensors file")
    with pytest.raises(CacheError, match="Delete it"):
        HeadActivations.load(f)  # capture_heads sets it aside and recomputes (tests/test_faults.py)


def test_save_load_roundtrip(tiny_gemma3, tmp_path):
    acts = capture_heads(tiny_gemma3, PROMPTS, positions="all", progress=False)
    path = acts.save(tmp_path / "a.safetensors")
    back = HeadActivations.load(path)
    torch.testing.assert_close(back.z, acts.z)
    assert back.layers == acts.layers and back.meta["positions"] == "all"
    assert back.meta["provenance"]["random_init"] is True


def test_pad_batch_positions():
    out = pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    out = pad_batch([[5, 6, 7], [8]], pad_id=0, padding_side="right")
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[1], []], 0)


def _embed_widths(lm):
    """A recorder of the padded width of every forward pass, at the token embedding."""
    widths: list[int] = []
    handle = lm.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[1]))
    return widths, handle


@pytest.mark.parametrize("positions", ["answer", "prompt_mean"])
def test_batches_are_formed_by_length_and_rows_come_back_in_input_order(tiny_llama, positions):
    lm = tiny_llama
    long = "A long question " + "with one clause after another, " * 12
    samples = [
        CaptureSample(p, answer=a)
        for p, a in [("Hi", " yes"), (long, " Paris, France."), ("Water boils at", " one hundred"), (long + "?", " no")]
    ]
    lengths = [len(lm.token_ids(s.prompt)) + len(lm.token_ids(s.answer, special=False)) for s in samples]
    by_length = sorted(range(len(samples)), key=lambda i: -lengths[i])
    widths, handle = _embed_widths(lm)
    try:
        acts = capture_heads(lm, samples, positions=positions, batch_size=2, progress=False)
    finally:
        handle.remove()
    # Two batches: the two long samples, then the two short ones (not long + short twice).
    assert widths == [lengths[by_length[0]], lengths[by_length[2]]]
    # The reference: the samples handed over longest first (the very same batches), rows then put
    # back in input order by hand: identical, bit for bit.
    ref = capture_heads(lm, [samples[i] for i in by_length], positions=positions, batch_size=2, progress=False)
    rows = [ref.sample_index == by_length.index(i) for i in range(len(samples))]
    assert acts.sample_index.tolist() == [i for i, r in enumerate(rows) for _ in range(int(r.sum()))]
    assert torch.equal(acts.z, torch.cat([ref.z[r] for r in rows]))
    assert torch.equal(acts.position, torch.cat([ref.position[r] for r in rows]))
    assert torch.equal(acts.target_token, torch.cat([ref.target_token[r] for r in rows]))
    # And the same activations as consecutive batches in input order (padding changes no row).
    unsorted = torch.cat(
        [capture_heads(lm, samples[s : s + 2], positions=positions, batch_size=2, progress=False).z for s in (0, 2)]
    )
    torch.testing.assert_close(acts.z, unsorted, rtol=1e-5, atol=1e-5)


def test_auto_capture_batches_are_as_large_as_fits_their_own_longest_sample(tiny_llama, monkeypatch):
    import headpursuit.capture as C

    long = "A long question " + "with one clause after another, " * 12
    samples = [CaptureSample(p) for p in ("Hi", long, "Water boils at", "Red, green,", long + "?")]
    monkeypatch.setattr(
        C, "auto_batch_size", lambda lm, kind, *, prompt_len, rows: min(rows, 1 if prompt_len > 30 else 8)
    )
    widths, handle = _embed_widths(tiny_llama)
    try:
        acts = capture_heads(tiny_llama, samples, batch_size="auto", progress=False)
    finally:
        handle.remove()
    lengths = sorted((len(tiny_llama.token_ids(s.prompt)) for s in samples), reverse=True)
    assert widths == [lengths[0], lengths[1], lengths[2]]  # the two long ones alone, then the rest together
    ref = capture_heads(tiny_llama, samples, batch_size=1, progress=False)
    assert acts.sample_index.tolist() == ref.sample_index.tolist() == list(range(len(samples)))
    torch.testing.assert_close(acts.z, ref.z, rtol=1e-5, atol=1e-5)
