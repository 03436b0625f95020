"""Edits at some positions only (`scale_heads(..., where=...)`, `intervention.where`, issue 23).

Two independent references, both written here:
* at the edited layer's `o_proj`, in every forward of a generation: at the positions that should be
  edited (worked out here from the call's shape and the prompt's width, or the image token id), the
  output equals the head's W_O columns scaled by hand applied to the layer's unedited input; at every
  other position it is bit-identical to the unedited layer's output on that input;
* whole generations: a greedy loop written here that runs the prompt pass and the decode steps with
  the head's W_O columns scaled in the weights (`w_o_columns_scaled`) in the phases the edit covers.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from devices import CPU_OVERRIDES
from docs_harness import run_app
from vlm_samples import shape_samples

from headpursuit.app.aggregate import result_row
from headpursuit.app.results import RunRecord
from headpursuit.app.run import run_name
from headpursuit.app.stages import eval_key
from headpursuit.intervention import WHERE, generate_with_edits, per_row_scales, scale_heads
from headpursuit.models import generation
from headpursuit.models.edit_positions import prompt_width
from headpursuit.models.generation import generate_rows, generate_with_images, generation_config
from headpursuit.models.greedy import MIN_SHARED_PREFIX, greedy_decode
from headpursuit.models.inputs import encode, position_ids_from_mask, processor_inputs

LAYER, HEAD, ALPHA = 1, 1, -3.0
EDIT = {(LAYER, HEAD): ALPHA, (0, 0): 2.5}
PROMPTS = ["The capital of France is", "Hi", "One, two, three, four,"]
NEW = 5


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def lm(request):
    from headpursuit.models.tiny import tiny_text_model

    return tiny_text_model(request.param)


def _gc(lm, use_cache: bool = True):
    """Greedy, no EOS (random tiny models never emit theirs; every row runs NEW steps)."""
    gc = generation_config(lm, max_new_tokens=NEW)
    gc.eos_token_id = None
    gc.use_cache = use_cache
    return gc


@contextlib.contextmanager
def o_proj_calls(lm, layer: int):
    """[(input before any edit, output)] of `layer`'s o_proj, one per forward. Entered before
    `scale_heads`, so this pre-hook runs before the edit's."""
    calls: list[list[torch.Tensor]] = []
    module = lm.o_proj(layer)
    pre = module.register_forward_pre_hook(lambda m, args: calls.append([args[0].detach().clone()]))
    post = module.register_forward_hook(lambda m, args, out: calls[-1].append(out.detach().clone()))
    try:
        yield calls
    finally:
        pre.remove()
        post.remove()


def check_o_proj(lm, layer: int, calls, expected_masks, alpha_by_head: dict[int, float]) -> tuple[int, int]:
    """Each call's output: the hand-scaled W_O's at the expected positions, the plain W_O's
    (bit for bit) elsewhere. Returns (edited, unedited) position counts."""
    assert len(calls) == len(expected_masks)
    W, b = lm.output_weight(layer).detach(), lm.output_bias(layer)
    dh = lm.layout.head_dim
    W_scaled = W.clone()
    for h, a in alpha_by_head.items():
        W_scaled[:, h * dh : (h + 1) * dh] *= a
    edited = unedited = 0
    for (x, y), m in zip(calls, expected_masks):
        assert m.shape == x.shape[:2]
        plain, by_hand = F.linear(x, W, b), F.linear(x, W_scaled, b)
        assert torch.equal(y[~m], plain[~m])
        torch.testing.assert_close(y[m], by_hand[m], rtol=1e-4, atol=1e-5)
        edited, unedited = edited + int(m.sum()), unedited + int((~m).sum())
    return edited, unedited


def _prompt_edited(where: str) -> bool:
    return where in ("all", "prompt")


def _generated_edited(where: str) -> bool:
    return where in ("all", "generated")


@pytest.mark.parametrize("where", ["all", "prompt", "generated"])
@pytest.mark.parametrize("path", ["greedy_loop", "generate_cache", "generate_no_cache"])
def test_o_proj_edited_exactly_at_the_positions_of_where(lm, where, path, monkeypatch):
    """With the KV cache (our greedy loop; transformers' generate) the prompt pass is one forward
    of prompt tokens and each step one generated token; without it every step recomputes the whole
    sequence and the prompt's columns are [0, width) (left padding: the same for every row)."""
    if path == "generate_cache":
        monkeypatch.setattr(generation, "DROP_FINISHED_ROWS", False)
    gc = _gc(lm, use_cache=path != "generate_no_cache")
    width = encode(lm, PROMPTS)["input_ids"].shape[1]
    with o_proj_calls(lm, LAYER) as calls, scale_heads(lm, EDIT, where=where):
        generate_rows(lm, PROMPTS, gc, batch_size=len(PROMPTS), progress=False)
    rows = len(PROMPTS)
    if path == "generate_no_cache":
        masks = []
        for step in range(NEW):
            is_prompt = (torch.arange(width + step) < width)[None].expand(rows, -1)
            masks.append(torch.where(is_prompt, _prompt_edited(where), _generated_edited(where)))
    else:
        masks = [torch.full((rows, width), _prompt_edited(where))]
        masks += [torch.full((rows, 1), _generated_edited(where)) for _ in range(NEW - 1)]
    edited, unedited = check_o_proj(lm, LAYER, calls, masks, {HEAD: ALPHA})
    assert edited > 0 and (unedited > 0) == (where != "all")


def reference_greedy(lm, prompts, edit, where, w_o_columns_scaled) -> torch.Tensor:
    """(rows, NEW) greedy tokens with the KV cache: the prompt pass, then one token per step, with
    the heads' W_O columns scaled in the weights in the phases `where` covers."""
    from transformers import DynamicCache

    enc = encode(lm, prompts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = position_ids_from_mask(mask)
    cache = DynamicCache(config=lm.model.config.get_text_config(decoder=True))
    out = []

    def weights(edited: bool):
        return w_o_columns_scaled(lm, edit) if edited else contextlib.nullcontext()

    with torch.no_grad():
        with weights(_prompt_edited(where)):
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1]
        for _ in range(NEW):
            nxt = logits.float().argmax(-1)
            out.append(nxt)
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            positions = positions[:, -1:] + 1
            with weights(_generated_edited(where)):
                logits = lm.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, cache=cache)
                logits = logits.logits[:, -1]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("where", ["all", "prompt", "generated"])
def test_generations_equal_the_weight_edit_in_the_edited_phases(lm, where, w_o_columns_scaled, monkeypatch):
    """Greedy loop, generate with and without the KV cache: the same tokens as the reference loop
    with W_O scaled in the weights during the prompt pass and/or the decode steps."""
    expected = reference_greedy(lm, PROMPTS, EDIT, where, w_o_columns_scaled)
    unedited = reference_greedy(lm, PROMPTS, {}, "all", w_o_columns_scaled)
    assert not torch.equal(expected, unedited)  # the edit changes the tokens (else this proves little)
    enc = encode(lm, PROMPTS)
    ids, mask, width = enc["input_ids"], enc["attention_mask"], enc["input_ids"].shape[1]
    with scale_heads(lm, EDIT, where=where), torch.no_grad():
        loop = greedy_decode(lm.model, ids, mask, _gc(lm))
        with prompt_width(width):
            cached = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=_gc(lm))[:, width:]
            recomputed = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=_gc(lm, False))
    assert torch.equal(loop, expected)
    assert torch.equal(cached, expected)
    assert torch.equal(recomputed[:, width:], expected)
    if where == "generated":  # the prompt pass is the unedited model's: its token is the unedited one
        assert torch.equal(loop[:, 0], unedited[:, 0])


def test_prompt_pass_of_a_generated_only_edit_is_the_unedited_model_bit_for_bit(lm):
    enc = encode(lm, PROMPTS)
    with torch.no_grad():
        plain = lm.model(**enc).logits
        with scale_heads(lm, EDIT, where="generated"), prompt_width(enc["input_ids"].shape[1]):
            kept = lm.model(**enc).logits
        with scale_heads(lm, EDIT, where="prompt"), prompt_width(enc["input_ids"].shape[1]):
            prompt_only = lm.model(**enc).logits
        with scale_heads(lm, EDIT):
            everywhere = lm.model(**enc).logits
    assert torch.equal(kept, plain)
    assert torch.equal(prompt_only, everywhere) and not torch.equal(everywhere, plain)


def test_teacher_forced_prompt_width_per_row(tiny_llama):
    """A bare forward with per-row prompt lengths (teacher forcing, right padding): columns before
    each row's answer are its prompt."""
    lm = tiny_llama
    enc = encode(lm, PROMPTS, padding_side="right")
    lengths = torch.tensor([3, 1, 4])
    rows, width = enc["input_ids"].shape
    is_prompt = torch.arange(width)[None] < lengths[:, None]
    for where, expected in (("prompt", is_prompt), ("generated", ~is_prompt)):
        with o_proj_calls(lm, LAYER) as calls, scale_heads(lm, EDIT, where=where), prompt_width(lengths):
            with torch.no_grad():
                lm.model(**enc)
        check_o_proj(lm, LAYER, calls, [expected], {HEAD: ALPHA})


@pytest.mark.parametrize("where", ["prompt", "generated"])
def test_teacher_forced_answer_logprob_reads_the_answer_as_generated(tiny_llama, where, w_o_columns_scaled):
    """`answer_logprob(..., where=...)` against a reference with the KV cache: the prompt run, then
    the answer tokens on top of it, W_O scaled in the weights for the part `where` names."""
    from transformers import DynamicCache

    from headpursuit.capture import CaptureSample
    from headpursuit.effects import answer_logprob
    from headpursuit.models.inputs import teacher_forced_ids

    lm, sample = tiny_llama, CaptureSample("Q: The capital of France? A:", " Paris, a large city")
    tf = teacher_forced_ids(lm, sample.prompt, sample.answer)
    ids, n = torch.tensor(tf.ids)[None], tf.prompt_len
    cache = DynamicCache(config=lm.model.config)

    def weights(edited: bool):
        return w_o_columns_scaled(lm, EDIT) if edited else contextlib.nullcontext()

    with torch.no_grad():
        with weights(where == "prompt"):
            prompt_logits = lm.model(input_ids=ids[:, :n], cache=cache).logits
        with weights(where == "generated"):
            answer_logits = lm.model(input_ids=ids[:, n:], cache=cache).logits
    # position t predicts token t+1: the last prompt position and every answer position but the last
    logits = torch.cat([prompt_logits[:, -1:], answer_logits[:, :-1]], dim=1).float()
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, n:, None]).mean()
    got = answer_logprob(lm, [sample], scales=EDIT, where=where)
    torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, answer_logprob(lm, [sample], scales=EDIT))  # differs from the edit everywhere


def test_prompt_or_generated_on_a_bare_forward_without_a_prompt_width_is_an_error(tiny_llama):
    enc = encode(tiny_llama, PROMPTS)
    with scale_heads(tiny_llama, EDIT, where="generated"), pytest.raises(ValueError, match="prompt_width"):
        tiny_llama.model(**enc)
    with scale_heads(tiny_llama, EDIT, where="all"):  # the paper's edit needs no context
        tiny_llama.model(**enc)


def test_bad_where_and_image_on_a_text_model_are_clear_errors(tiny_llama):
    with pytest.raises(ValueError, match="where='middle' is not one of all, prompt, generated, image, text"):
        with scale_heads(tiny_llama, EDIT, where="middle"):
            pass
    with pytest.raises(ValueError, match=r"where='image' / 'text' \(intervention.where\).*text-only.*where='all'"):
        with scale_heads(tiny_llama, EDIT, where="image"):
            pass
    with pytest.raises(ValueError, match="where has 2 values for 3 edits"):
        generate_with_edits(tiny_llama, PROMPTS, [{}, EDIT, EDIT], where=["all", "prompt"])


def test_where_all_is_the_plain_edit_with_no_position_hook(tiny_llama):
    from headpursuit.models.hooks import live_hooks

    for where in ("all", ["all", "all"]):
        with scale_heads(tiny_llama, per_row_scales([EDIT, {}]), where=where):
            hooks = live_hooks(tiny_llama.model)
            assert all(getattr(h, "positions", None) is None for h in hooks)
            assert len(hooks) == 2  # one per edited layer, none on the whole model
    with scale_heads(tiny_llama, EDIT, where="prompt"):
        assert len(live_hooks(tiny_llama.model)) == 3  # and the one that marks each forward's positions
    assert live_hooks(tiny_llama.model) == []


# ---------------------------------------------------------------------------------------------
# Batched edits with mixed positions: rows dropped, a prefix shared only between alike rows
# ---------------------------------------------------------------------------------------------

SHARED = "Answer in one short word, please, and do not explain anything at all: "
SUFFIXES = ["the capital of France", "two plus two", "the colour of the sky on a clear day"]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_mixed_where_batch_gives_the_tokens_of_one_edit_at_a_time(family):
    from headpursuit.models.tiny import tiny_text_model

    lm = tiny_text_model(family)
    prompts = [SHARED + s for s in SUFFIXES]
    edits = [{}, EDIT, EDIT, EDIT, {(0, 1): -1.0}]
    wheres = ["prompt", "prompt", "generated", "all", "generated"]
    gc = _gc(lm)
    alone = []
    for edit, where in zip(edits, wheres):
        enc = encode(lm, prompts)
        with scale_heads(lm, edit, where=where), torch.no_grad():
            alone.append(greedy_decode(lm.model, enc["input_ids"], enc["attention_mask"], gc))
    # EOS: tokens the unedited rows emit early, so rows leave the batch at different steps
    gc.eos_token_id = sorted({int(alone[0][0, 1]), int(alone[0][1, 2])})
    ends = gc.eos_token_id
    alone = []
    for edit, where in zip(edits, wheres):
        enc = encode(lm, prompts)
        with scale_heads(lm, edit, where=where), torch.no_grad():
            alone.append(greedy_decode(lm.model, enc["input_ids"], enc["attention_mask"], gc))
    rows = [(i, e) for i in range(len(prompts)) for e in range(len(edits))]
    enc = encode(lm, [prompts[i] for i, _ in rows])
    first_batch = []
    hook = lm.model.register_forward_pre_hook(
        lambda m, a, kw: first_batch.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        with (
            scale_heads(lm, per_row_scales([edits[e] for _, e in rows]), where=[wheres[e] for _, e in rows]),
            torch.no_grad(),
        ):
            together = greedy_decode(lm.model, enc["input_ids"], enc["attention_mask"], gc)
    finally:
        hook.remove()
    for r, (i, e) in enumerate(rows):
        assert torch.equal(together[r], alone[e][i]), (i, e, wheres[e])
    finished = torch.isin(together[:, :-1], torch.tensor(ends)).any(1)
    assert finished.any() and not finished.all()  # some rows left the batch early, others went on
    if family == "llama":  # full attention: the shared prefix runs once per distinct (edit, where)
        assert first_batch[0][0] == len(edits) and first_batch[0][1] >= MIN_SHARED_PREFIX


def test_generate_with_edits_per_edit_where_equals_one_at_a_time(tiny_llama):
    from headpursuit.models.generation import generate_batch

    edits = [{}, EDIT, EDIT, EDIT]
    wheres = ["all", "prompt", "generated", "all"]
    together = generate_with_edits(tiny_llama, PROMPTS, edits, max_new_tokens=NEW, batch_size=8, where=wheres)
    for e, (edit, where) in enumerate(zip(edits, wheres)):
        with scale_heads(tiny_llama, edit, where=where):
            assert together[e] == generate_batch(tiny_llama, PROMPTS, max_new_tokens=NEW, batch_size=2)
    assert len({tuple(t) for t in together[1:]}) == 3  # three different edits, three different outputs


# ---------------------------------------------------------------------------------------------
# VLM: image-patch tokens vs the rest
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["image", "text"])
def test_vlm_image_vs_text_positions(tiny_vlm, where):
    lm = tiny_vlm
    samples = shape_samples(lm)[:2]
    prompts, images = [s.prompt for s in samples], [s.image for s in samples]
    image_id = int(lm.model.config.image_token_id)
    ids = processor_inputs(lm, prompts, images, padding_side="left")["input_ids"]
    is_image = ids == image_id
    assert is_image.any() and (~is_image).any()
    steps = 3
    with o_proj_calls(lm, LAYER) as calls, scale_heads(lm, EDIT, where=where):
        generate_with_images(lm, prompts, images, max_new_tokens=steps, batch_size=2, progress=False)
    new_tokens = [torch.zeros((2, 1), dtype=torch.bool)] * (len(calls) - 1)  # no generated token is an image patch
    masks = [is_image, *new_tokens] if where == "image" else [~is_image, *[~m for m in new_tokens]]
    edited, unedited = check_o_proj(lm, LAYER, calls, masks, {HEAD: ALPHA})
    assert edited > 0 and unedited > 0


# ---------------------------------------------------------------------------------------------
# The pipeline: config, cache keys, run name, aggregate, the command
# ---------------------------------------------------------------------------------------------


def _cfg(**iv):
    return {
        "model": {"name_or_path": "smollm2", "n_layers": 30, "n_heads": 9},
        "task": {"name": "qa_countries"},
        "ranking": {"method": "concept_share", "somp_steps": 10},
        "intervention": {"random_seeds": [0, 1], **iv},
        "logger": {"backend": "none", "mode": "disabled"},
    }


def test_config_where_checked_before_the_model_loads():
    from headpursuit.app.config import ConfigError, validate_config

    assert validate_config(_cfg()).intervention.where == "all"
    assert validate_config(_cfg(where="generated")).intervention.where == "generated"
    with pytest.raises(ConfigError, match=r"intervention\.where='middle' is not one of " + ", ".join(WHERE)):
        validate_config(_cfg(where="middle"))
    with pytest.raises(ConfigError, match=r"intervention\.where=image .* has no images; use intervention\.where=all"):
        validate_config(_cfg(where="image"))
    image_task = _cfg(where="text")
    image_task["model"] = {"name_or_path": "tiny_vlm"}
    image_task["task"] = {"name": "captioning"}
    assert validate_config(image_task).intervention.where == "text"


def _texts(outputs):
    return {g: list(o.outputs) for g, o in outputs.groups.items()}


def test_stages_edit_the_edited_heads_and_random_controls_at_where(tiny_llama, tmp_path):
    """The batched pass (`generate_uncached`) and the one-edit-at-a-time path (`evaluate_cached`
    without outputs) both edit at `where`: the texts of a generated-only edit, computed either way,
    are those of `task.generate` inside `scale_heads(..., where="generated")`."""
    from headpursuit.app.cache import RunCache
    from headpursuit.app.stages import evaluate_cached, generate_uncached, random_control_edits, random_control_sets
    from headpursuit.tasks import QAConfig, QATask

    lm = tiny_llama
    task = QATask(QAConfig(concept=["France", "Japan"], n_rank=1, n_eval=3, max_new_tokens=4), lm.tokenizer)
    ident = {"model": "tiny_llama", "task": "qa"}
    draws = random_control_sets([(LAYER, HEAD)], lm.layout, k=2, seeds=[0], pool="all")
    edits = [{}, EDIT, *random_control_edits(draws, ALPHA)]
    generated = generate_uncached(RunCache(tmp_path / "a"), lm, task, ident, edits, seed=0, where="generated")
    assert set(generated) == {eval_key(ident, e, 0, "generated") for e in edits}
    for edit in edits:
        with scale_heads(lm, edit, where="generated"):
            expected = _texts(task.generate(lm))
        assert _texts(generated[eval_key(ident, edit, 0, "generated")]) == expected
    with scale_heads(lm, EDIT):
        assert _texts(task.generate(lm)) != _texts(generated[eval_key(ident, EDIT, 0, "generated")])
    # one at a time: scored from the same generations (the cache entry of the batched pass is not used here)
    batched = evaluate_cached(
        RunCache(tmp_path / "b"), lm, task, ident, EDIT, label="edited", seed=0, generated=generated, where="generated"
    )
    alone = evaluate_cached(RunCache(tmp_path / "c"), lm, task, ident, EDIT, label="edited", seed=0, where="generated")
    assert batched["examples"] == alone["examples"]


def test_eval_key_holds_where_only_when_it_matters():
    ident = {"model": "m", "task": "t"}
    assert eval_key(ident, EDIT, 0, "all") == eval_key(ident, EDIT, 0)  # keys of before `where`
    assert eval_key(ident, {}, 0, "generated") == eval_key(ident, {}, 0)  # one baseline for every where
    keys = {eval_key(ident, EDIT, 0, w) for w in ("all", "prompt", "generated")}
    assert len(keys) == 3


def test_run_name_says_where():
    assert run_name(None, "all") == "default"
    assert run_name(None, "generated") == "default,where=generated"
    assert run_name("intervention.where=prompt", "prompt") == "intervention.where=prompt"
    assert run_name("intervention.k=3", "prompt") == "intervention.k=3,where=prompt"


def test_aggregate_has_a_where_column():
    old = RunRecord.from_json({"status": "failed", "config": {"intervention": {"alpha": -1.0}}})
    new = RunRecord.from_json({"status": "failed", "config": {"intervention": {"alpha": -1.0, "where": "prompt"}}})
    assert result_row(old)["where"] == "all"  # runs of before the key edited every position
    assert result_row(new)["where"] == "prompt"


@pytest.mark.slow
def test_cli_where_generated_runs_offline(tmp_path):
    run_dir = tmp_path / "run"
    rc = run_app(
        [
            "experiment=smoke",
            "intervention.where=generated",
            "task.n_rank=2",
            "task.n_eval=2",
            "task.max_new_tokens=4",
            "intervention.random_seeds=[0]",
            *CPU_OVERRIDES,
            "logger=none",
            f"hydra.run.dir={run_dir}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert rc == 0
    rec = json.loads((run_dir / "results.json").read_text())
    assert rec["status"] == "complete", rec.get("error")
    assert rec["config"]["intervention"]["where"] == "generated"
