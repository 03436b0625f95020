"""The greedy loop that drops finished rows (`headpursuit.models.greedy`): the same tokens as
`model.generate`, with and without per-row head scales, on models with full and sliding-window
attention. The reference is transformers' own `generate` on the same left-padded batch."""

import contextlib
import itertools

import pytest
import torch

from headpursuit.intervention import per_row_scales, scale_heads
from headpursuit.models.generation import GenerationProgress, generate_batch, generation_config
from headpursuit.models.greedy import greedy_decode, plain_greedy
from headpursuit.models.hooks import live_hooks
from headpursuit.models.inputs import encode

# Mixed lengths (left padding differs by row); the last is longer than tiny_gemma3's 16-token
# sliding window, so its sliding layers drop cache entries while rows leave the batch.
PROMPTS = [
    "The capital of France is",
    "One, two, three,",
    "Hi",
    "A much longer prompt with quite a few more tokens in it than any of the others here, and more",
    "Water boils at",
    "Colours: red, green,",
]
NEW = 12


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def lm(request):
    # Without conftest's o_proj bias: that model repeats one token, and rows must end at varied steps.
    from headpursuit.models.tiny import tiny_text_model

    return tiny_text_model(request.param)


def _enc(lm, prompts):
    enc = encode(lm, prompts, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def _hf_new_tokens(lm, prompts, gc):
    """transformers' generate on the same batch: the new tokens, padded with pad to gc.max_new_tokens."""
    ids, mask = _enc(lm, prompts)
    with torch.no_grad():
        out = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)[:, ids.shape[1] :]
    full = torch.full((len(prompts), gc.max_new_tokens), gc.pad_token_id, dtype=torch.long)
    full[:, : out.shape[1]] = out
    return full


def _eos_that_ends_rows_early(lm, prompts):
    """A generation config whose EOS ids are tokens the model emits at different steps of different
    rows (random tiny models never emit their real EOS), so rows finish one after another: the
    one to three tokens (of those generated) that end the rows at the most distinct steps."""
    gc = generation_config(lm, max_new_tokens=NEW)
    gc.eos_token_id = None
    free = _hf_new_tokens(lm, prompts, gc).tolist()
    first = {}  # token -> the step of its first occurrence in each row (NEW: never)
    for r, row in enumerate(free):
        for step, tok in enumerate(row):
            first.setdefault(tok, [NEW] * len(free))
            first[tok][r] = min(first[tok][r], step)
    best, best_score = None, -1
    for n in (1, 2, 3):
        for combo in itertools.combinations(sorted(first), n):
            steps = [min(first[t][r] for t in combo) for r in range(len(free))]
            score = len(set(steps))
            if score > best_score:
                best, best_score = combo, score
    gc = generation_config(lm, max_new_tokens=NEW)
    gc.eos_token_id = list(best)
    return gc


def _finish_steps(tokens, eos):
    """The step at which each row emitted its first EOS (NEW when it never did)."""
    hit = torch.isin(tokens, torch.tensor(eos))
    return [int(row.nonzero()[0]) if row.any() else NEW for row in hit]


def test_same_tokens_as_generate_with_rows_finishing_at_different_steps(lm):
    gc = _eos_that_ends_rows_early(lm, PROMPTS)
    ref = _hf_new_tokens(lm, PROMPTS, gc)
    steps = _finish_steps(ref, gc.eos_token_id)
    assert len(set(steps)) >= 3, steps  # the test really drops rows at several steps
    ids, mask = _enc(lm, PROMPTS)
    assert torch.equal(greedy_decode(lm.model, ids, mask, gc), ref)


def test_same_tokens_as_generate_when_no_row_ends(lm):
    gc = generation_config(lm, max_new_tokens=NEW)
    gc.eos_token_id = None
    ids, mask = _enc(lm, PROMPTS)
    assert torch.equal(greedy_decode(lm.model, ids, mask, gc), _hf_new_tokens(lm, PROMPTS, gc))


EDITS = [{}, {(0, 1): -1.0, (1, 3): -1.0}, {(1, 0): 0.0, (0, 2): 3.0}]


def _generate_per_edit(lm, prompts, gc):
    """{e: generate()'s new tokens of every prompt under EDITS[e] alone}: the per-row reference."""
    ref = {}
    for e, edit in enumerate(EDITS):
        with scale_heads(lm, edit):
            ref[e] = _hf_new_tokens(lm, prompts, gc)
    return ref


def test_per_row_scales_follow_their_rows_as_rows_leave(lm):
    """Rows are (prompt, edit) pairs; each row's tokens equal generate() under that edit alone."""
    gc = _eos_that_ends_rows_early(lm, PROMPTS)
    ref = _generate_per_edit(lm, PROMPTS, gc)
    rows = [(i, e) for e in range(len(EDITS)) for i in range(len(PROMPTS))]
    ids, mask = _enc(lm, [PROMPTS[i] for i, _ in rows])
    with scale_heads(lm, per_row_scales([EDITS[e] for _, e in rows])):
        got = greedy_decode(lm.model, ids, mask, gc)
        # The hooks hold every row again afterwards: a second batch in the same block works.
        again = greedy_decode(lm.model, ids, mask, gc)
    expected = torch.stack([ref[e][i] for i, e in rows])
    assert len(set(_finish_steps(expected, gc.eos_token_id))) >= 3
    assert torch.equal(got, expected)
    assert torch.equal(again, expected)
    assert sum(len(lm.o_proj(i)._forward_pre_hooks) for i in range(lm.layout.n_layers)) == 0


def test_hooks_hold_every_row_again_after_an_error(lm):
    ids, mask = _enc(lm, PROMPTS)
    with scale_heads(lm, {(0, 1): [-1.0, 2.0, 0.0, -1.0, 2.0, 0.0]}):
        gc = _eos_that_ends_rows_early(lm, PROMPTS)  # under the edit: rows do leave
        (scaler,) = live_hooks(lm.o_proj(0))
        seen = []

        def fail_after_a_drop(module, args):
            if scaler.rows is not None:  # rows have left the batch: interrupt the decode here
                seen.append(len(scaler.rows))
                raise RuntimeError("interrupted mid-decode")

        handle = lm.o_proj(1).register_forward_pre_hook(fail_after_a_drop)
        try:
            with pytest.raises(RuntimeError, match="interrupted"):
                greedy_decode(lm.model, ids, mask, gc)
        finally:
            handle.remove()
        assert seen and seen[0] < len(PROMPTS)
        assert scaler.rows is None
        assert torch.equal(greedy_decode(lm.model, ids, mask, gc), _hf_new_tokens(lm, PROMPTS, gc))


def test_configs_it_does_not_reproduce_go_to_generate(lm):
    gc = generation_config(lm, max_new_tokens=NEW)
    assert plain_greedy(gc)
    for field, value in [("repetition_penalty", 1.5), ("no_repeat_ngram_size", 2), ("min_new_tokens", 3)]:
        other = generation_config(lm, max_new_tokens=NEW)
        setattr(other, field, value)
        assert not plain_greedy(other), field
    ids, mask = _enc(lm, PROMPTS)
    other = generation_config(lm, max_new_tokens=NEW)
    other.repetition_penalty = 1.5
    with pytest.raises(ValueError, match="plain greedy"):
        greedy_decode(lm.model, ids, mask, other)
    # generate_batch honours a checkpoint's repetition penalty (it runs generate for that config).
    saved = lm.model.generation_config.repetition_penalty
    lm.model.generation_config.repetition_penalty = 1.5
    try:
        texts = generate_batch(lm, PROMPTS, max_new_tokens=NEW, batch_size=len(PROMPTS), progress=False)
        ref = _hf_new_tokens(lm, PROMPTS, generation_config(lm, max_new_tokens=NEW))
    finally:
        lm.model.generation_config.repetition_penalty = saved
    assert texts == [t.strip() for t in lm.tokenizer.batch_decode(ref, skip_special_tokens=True)]


def test_progress_counts_every_step_once_per_batch(lm):
    gc = _eos_that_ends_rows_early(lm, PROMPTS)
    progress = GenerationProgress(2, NEW, "t", enabled=True)
    try:
        for start in (0, 3):
            ids, mask = _enc(lm, PROMPTS[start : start + 3])
            greedy_decode(lm.model, ids, mask, gc, streamer=progress.streamer())
        assert progress.bar.n == 2 * NEW
    finally:
        progress.close()


@pytest.mark.slow
def test_smollm2_same_tokens_as_generate(smollm2):
    """The real model with its real EOS: chat-formatted QA prompts end after a few tokens."""
    lm = smollm2
    prompts = [
        lm.format_prompt(q)
        for q in [
            "What is the capital of France? Answer in one word.",
            "Name a colour.",
            "Which country is Tokyo in? Answer with the country only.",
            "Write a long sentence about the sea.",
        ]
    ]
    gc = generation_config(lm, max_new_tokens=24)
    ref = _hf_new_tokens(lm, prompts, gc)
    assert len(set(_finish_steps(ref, [gc.eos_token_id]))) >= 2
    ids, mask = _enc(lm, prompts)
    assert torch.equal(greedy_decode(lm.model, ids, mask, gc), ref)


# --- a shared prompt prefix, run once per edit -------------------------------------------

PREFIX = "System: you answer questions in a few words, and you never explain. User: "


@contextlib.contextmanager
def _embed_calls(lm):
    """Within the block, record the (rows, tokens) of every forward pass, at the token embedding."""
    calls = []
    handle = lm.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: calls.append(tuple(a[0].shape)))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def lm_wide(request):
    """Tiny models whose sliding window (gemma3) holds the whole sequence: the prefix can be shared."""
    from headpursuit.models.tiny import tiny_text_model

    extra = {"sliding_window": 256} if request.param == "gemma3_text" else {}
    return tiny_text_model(request.param, **extra)


def test_shared_prefix_runs_once_per_edit_and_gives_generates_tokens(lm_wide):
    lm = lm_wide
    prompts = [PREFIX + p for p in PROMPTS]
    gc = _eos_that_ends_rows_early(lm, prompts)
    ref = _generate_per_edit(lm, prompts, gc)
    rows = [(i, e) for i in range(len(prompts)) for e in range(len(EDITS))]  # prompt-major, edits mixed
    ids, mask = _enc(lm, [prompts[i] for i, _ in rows])
    with _embed_calls(lm) as calls, scale_heads(lm, per_row_scales([EDITS[e] for _, e in rows])):
        got = greedy_decode(lm.model, ids, mask, gc)
    n_prefix = len(lm.token_ids(PREFIX.rstrip())) - 1  # the tokenizer may merge the last one onward
    assert calls[0][0] == len(EDITS) and calls[0][1] >= n_prefix  # one prefix row per edit
    assert calls[1][0] == len(rows) and calls[1][1] < ids.shape[1]  # then each row's own tokens
    expected = torch.stack([ref[e][i] for i, e in rows])
    assert len(set(_finish_steps(expected, gc.eos_token_id))) >= 3
    assert torch.equal(got, expected)


def test_no_sharing_where_the_sliding_window_is_shorter_than_the_sequence(lm):
    prompts = [PREFIX + p for p in PROMPTS]
    gc = _eos_that_ends_rows_early(lm, prompts)
    ids, mask = _enc(lm, prompts)
    with _embed_calls(lm) as calls:
        got = greedy_decode(lm.model, ids, mask, gc)
    window = getattr(lm.model.config, "sliding_window", None)
    if window and ids.shape[1] + NEW > window:
        assert calls[0] == tuple(ids.shape)  # the whole prompt in one pass
    else:
        assert calls[0][0] == 1  # no edits: the prefix once
    assert torch.equal(got, _hf_new_tokens(lm, prompts, gc))


def test_rows_without_a_common_prefix_run_as_one_batch(lm):
    gc = generation_config(lm, max_new_tokens=4)
    ids, mask = _enc(lm, PROMPTS)
    with _embed_calls(lm) as calls:
        greedy_decode(lm.model, ids, mask, gc)
    assert calls[0] == tuple(ids.shape)


# --- batches of similar length ---------------------------------------------------------------

# Very different lengths in an order that mixes them: consecutive batches of two would pad each
# short prompt to a long one.
MIXED = [
    "Hi there",
    "A long prompt " + "with many more words in it, " * 12,
    "Water boils at",
    "Another long prompt, " + "one clause after another and another, " * 10,
    "Red, green,",
    "The capital of France is",
]


def _prefill_widths(calls):
    """The padded width of each batch's prompt pass (decode steps feed one token per row)."""
    return [tokens for _, tokens in calls if tokens > 1]


def test_greedy_batches_are_formed_by_length_and_outputs_come_back_in_input_order(lm):
    gc = generation_config(lm, max_new_tokens=NEW)
    # The reference: transformers' generate on consecutive batches of two, in input order.
    ref = []
    for start in range(0, len(MIXED), 2):
        new = _hf_new_tokens(lm, MIXED[start : start + 2], gc)
        ref += [t.strip() for t in lm.tokenizer.batch_decode(new, skip_special_tokens=True)]
    with _embed_calls(lm) as calls:
        out = generate_batch(lm, MIXED, max_new_tokens=NEW, batch_size=2, progress=False)
    assert out == ref
    lengths = sorted((len(lm.token_ids(p)) for p in MIXED), reverse=True)
    assert _prefill_widths(calls) == [max(lengths[s : s + 2]) for s in range(0, len(lengths), 2)]
    assert _prefill_widths(calls) != [max(len(lm.token_ids(p)) for p in MIXED[s : s + 2]) for s in (0, 2, 4)]


def test_batched_edits_keep_a_prompts_edits_together_in_length_batches(lm):
    from headpursuit.intervention import generate_with_edits

    edits = [{}, {(0, 0): -1.0, (1, 1): 0.0}, {(1, 0): 2.0}]
    # A batch of len(edits) rows holds one prompt's edits: as wide as that prompt, each one.
    with _embed_calls(lm) as calls:
        out = generate_with_edits(lm, MIXED, edits, max_new_tokens=NEW, batch_size=len(edits), progress=False)
    assert sorted(_prefill_widths(calls), reverse=True) == _prefill_widths(calls)
    assert sorted(_prefill_widths(calls)) == sorted(len(lm.token_ids(p)) for p in MIXED)
    for e, edit in enumerate(edits):
        with scale_heads(lm, edit):
            assert out[e] == generate_batch(lm, MIXED, max_new_tokens=NEW, batch_size=1, progress=False)


def test_sampled_batches_stay_in_input_order(lm):
    """Seeded sampling draws per batch: regrouping rows would change every seeded sample, so
    sampled batches are consecutive prompts, as before."""
    with _embed_calls(lm) as calls:
        a = generate_batch(lm, MIXED, max_new_tokens=4, batch_size=2, do_sample=True, seed=3, progress=False)
    widths = [max(len(lm.token_ids(p)) for p in MIXED[s : s + 2]) for s in (0, 2, 4)]
    assert _prefill_widths(calls) == widths
    assert a == generate_batch(lm, MIXED, max_new_tokens=4, batch_size=2, do_sample=True, seed=3, progress=False)


def test_auto_batches_are_as_large_as_fits_their_own_longest_prompt(lm, monkeypatch):
    """batch_size="auto": each length batch is sized at its own longest prompt, so one long prompt
    no longer shrinks every batch (the device is asked per batch: here, 1 row fits above 30 tokens)."""
    from headpursuit.models import generation

    asked: list[int] = []

    def fits(lm_, kind, *, prompt_len, rows, **kwargs):
        asked.append(prompt_len)
        return min(rows, 1 if prompt_len > 30 else 4)

    monkeypatch.setattr(generation, "auto_batch_size", fits)
    with _embed_calls(lm) as calls:
        out = generate_batch(lm, MIXED, max_new_tokens=NEW, batch_size="auto", progress=False)
    lengths = sorted((len(lm.token_ids(p)) for p in MIXED), reverse=True)
    assert lengths[1] > 30 >= lengths[2]  # two long prompts, four short ones
    assert [(rows, tokens) for rows, tokens in calls if tokens > 1] == [
        (1, lengths[0]),
        (1, lengths[1]),
        (4, lengths[2]),
    ]
    assert asked == lengths[:3]
    assert out == generate_batch(lm, MIXED, max_new_tokens=NEW, batch_size=1, progress=False)
