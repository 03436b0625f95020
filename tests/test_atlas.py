"""The head atlas (headpursuit.atlas, headpursuit.app.atlas): concept scores from one shared SOMP
equal concept_share per concept; a planted colour head is the colour specialist beyond every random
token set; the control is seeded; the outputs are written and read back. Tiny models on the CPU
(tests/devices.py); the app end to end on SmolLM2 is marked slow."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import wandb_offline
import yaml
from devices import CPU_OVERRIDES
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from headpursuit import CaptureSample, capture_heads, load_concept, rank_heads
from headpursuit.app.atlas import (
    load_atlas_concepts,
    preflight_atlas,
    prompt_set,
    prompt_sources,
    validate_atlas,
)
from headpursuit.app.atlas_report import (
    ATLAS_CSV,
    ATLAS_MD,
    LAYERS_CSV,
    OVERLAP_CSV,
    AtlasOutcome,
    AtlasRecord,
    ConceptSummary,
    concept_summary,
    overlap_json,
    track,
    write_outputs,
)
from headpursuit.app.preflight import PreflightError
from headpursuit.app.results import ResultsError, RunRecord, completed_results, write_error, write_record
from headpursuit.app.schema import AtlasAppConfig, AtlasConfig, AtlasSompConfig
from headpursuit.app.tracker import Tracker
from headpursuit.atlas import (
    TOKEN_FORMS,
    SharedPursuit,
    control_pool,
    head_atlas,
    jaccard_overlap,
    logit_lens_tokens,
    random_token_sets,
    shared_pursuit,
    specialisation,
    token_form,
    token_masks,
    token_set_scores,
    top_heads,
)
from headpursuit.errors import ConfigError
from headpursuit.models.tiny import tiny_text_model
from headpursuit.ranking import RankingConfig
from headpursuit.ranking.inputs import head_weights
from headpursuit.tasks import CaptioningConfig, QAConfig, ToxicityConfig

REPO = Path(__file__).resolve().parents[1]

PROMPTS = [
    "The sky over the red barn was blue and the grass was green.",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "She counted one, two, three apples and five pears.",
    "What a wonderful, happy day it was after the terrible storm.",
]
PLANTED = (1, 2)


def _acts(lm, positions="all"):
    # unformatted prompts (no chat template): few rows, so each SOMP over the 49k-token vocabulary is quick
    samples = [CaptureSample(p, answer=" Sure.") for p in PROMPTS]
    return capture_heads(lm, samples, positions=positions, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def tiny_acts(tiny_llama):
    return _acts(tiny_llama)


@pytest.fixture(scope="module")
def planted_colour_model():
    """A tiny Llama (from a config, random weights) whose head PLANTED writes only colour tokens:
    its W_O columns are combinations of 4 colour tokens' rows of the dictionary SOMP reads (the
    unembedding times the final norm's gain), so whatever it reads, what it writes lies in their span."""
    lm = tiny_text_model("llama", seed=7)
    colours = load_concept("colors", lm.tokenizer)
    picked = colours.token_ids[:: max(1, colours.token_ids.numel() // 4)][:4]
    D = lm.unembedding().detach() * lm.final_norm_gain().detach()
    rows = D[picked] / D[picked].norm(dim=1, keepdim=True)  # (4, d_model)
    dh = lm.layout.head_dim
    mix = torch.randn(4, dh, generator=torch.Generator().manual_seed(0))
    layer, head = PLANTED
    with torch.no_grad():
        lm.output_weight(layer)[:, head * dh : (head + 1) * dh] = rows.T @ mix
    return lm, colours, picked


# ----------------------------------------------------------------------------------------------
# scores from the shared SOMP


def test_scores_equal_rank_heads_concept_share_per_concept(tiny_llama, tiny_acts):
    """Every concept's atlas score equals rank_heads(method="concept_share") run on its own, on the
    same activations: same heads in the same order, same scores to 1e-6. Besides shipped word lists
    (few of whose tokens a random model selects), token sets that hold selected atoms make the
    scores non-zero."""
    pursuit = shared_pursuit(tiny_acts, tiny_llama, somp_steps=6)
    selected = pursuit.indices[pursuit.indices >= 0].unique()
    concepts = {
        "colors": load_concept("colors", tiny_llama.tokenizer),
        "countries": load_concept("countries", tiny_llama.tokenizer),
        "picked_a": torch.cat([selected[::3], torch.arange(100, 140)]).unique(),
        "picked_b": selected[1::4],
    }
    atlas = head_atlas(pursuit, concepts, tokenizer=tiny_llama.tokenizer, n_draws=3, seed=0, pool="vocab")
    assert atlas.meta["somp_runs"] == len(pursuit.heads) == tiny_llama.layout.n_total_heads
    nonzero = 0
    for name, concept in concepts.items():
        ref = rank_heads(tiny_acts, tiny_llama, concept, method="concept_share", somp_steps=6).table
        ours = atlas.table[["layer", "head", f"score_{name}"]].rename(columns={f"score_{name}": "score"})
        merged = ref.merge(ours, on=["layer", "head"], suffixes=("_ref", "_atlas"))
        assert len(merged) == len(ref) == len(pursuit.heads)
        assert (merged["score_ref"] - merged["score_atlas"]).abs().max() < 1e-6, name
        assert top_heads(atlas.concept_scores(name), pursuit.heads, 5) == [
            (int(a), int(b)) for a, b in ref[ref["score"] > 0].head(5)[["layer", "head"]].to_numpy()
        ]
        nonzero += int((merged["score_ref"] > 0).sum())
    assert nonzero > 0  # the comparison is not all zeros
    # the same options reach the SOMP: centred pursuit with raw rows and l2 atom choice
    opts = {"center": True, "normalize_atoms": False, "aggregation": "l2"}
    pursuit2 = shared_pursuit(tiny_acts, tiny_llama, somp_steps=4, **opts)
    ref2 = rank_heads(tiny_acts, tiny_llama, concepts["picked_a"], method="concept_share", somp_steps=4, **opts).table
    ours2 = token_set_scores(pursuit2, token_masks([concepts["picked_a"]], pursuit2.vocab))[0]
    assert torch.allclose(torch.tensor(ref2.sort_values(["layer", "head"])["score"].to_numpy()), ours2, atol=1e-6)


def test_one_somp_per_head_whatever_the_concepts(tiny_llama, tiny_acts, monkeypatch):
    """An atlas of the 7 shipped concepts with 20 random sets each runs SOMP once, over every head
    in one batched call: the concepts and the draws are masks over its atoms."""
    import headpursuit.atlas as atlas_module
    from headpursuit.concepts import available_concepts

    calls = []

    def counting(z, *args, **kwargs):
        calls.append(z.shape[1] * z.shape[2])  # heads in this call
        return real(z, *args, **kwargs)

    real = atlas_module.somp_heads
    monkeypatch.setattr(atlas_module, "somp_heads", counting)
    pursuit = shared_pursuit(tiny_acts, tiny_llama, somp_steps=3)
    concepts = {n: load_concept(n, tiny_llama.tokenizer) for n in available_concepts()}
    assert len(concepts) == 7
    atlas = head_atlas(pursuit, concepts, tokenizer=tiny_llama.tokenizer, n_draws=20, seed=0, pool="vocab")
    assert calls == [tiny_llama.layout.n_total_heads] and atlas.meta["somp_runs"] == tiny_llama.layout.n_total_heads
    assert atlas.scores.shape == (7, tiny_llama.layout.n_total_heads)


def test_token_set_scores_reference():
    """Scores against a loop over heads and steps written here (stopped steps, -1, count nothing)."""
    idx = torch.tensor([[5, 2, -1], [1, 5, 7], [3, 4, 0]])
    gains = torch.tensor([[0.5, 0.2, 0.0], [0.1, 0.3, 0.05], [0.4, 0.1, 0.1]], dtype=torch.float64)
    p = SharedPursuit(idx, gains, gains.sum(1), layers=[0], n_heads=3, vocab=8)
    sets = [[5], [1, 7], [0, 2, 3, 4, 6]]
    got = token_set_scores(p, token_masks(sets, 8))
    for s, ids in enumerate(sets):
        for h in range(3):
            want = sum(float(gains[h, t]) for t in range(3) if int(idx[h, t]) in ids)
            assert math.isclose(float(got[s, h]), want, abs_tol=1e-12)


# ----------------------------------------------------------------------------------------------
# the planted colour head


def test_planted_colour_head_is_the_colour_specialist_beyond_every_random_set(planted_colour_model):
    lm, colours, picked = planted_colour_model
    acts = _acts(lm)
    pursuit = shared_pursuit(acts, lm, somp_steps=10)
    names = ["countries", "colors", "numbers", "sentiment", "toxic"]
    atlas = head_atlas(
        pursuit, {n: load_concept(n, lm.tokenizer) for n in names}, tokenizer=lm.tokenizer, n_draws=20, seed=3
    )
    row = pursuit.heads.index(PLANTED)
    c = atlas.concepts.index("colors")
    assert atlas.top_heads("colors", 1) == [PLANTED]
    assert float(atlas.scores[c, row]) > 0.9  # nearly all it writes is colour
    assert set(pursuit.indices[row][pursuit.indices[row] >= 0][:4].tolist()) <= set(colours.token_ids.tolist())
    assert atlas.random_scores.shape == (len(names), 20, len(pursuit.heads))
    assert float(atlas.scores[c, row]) > float(atlas.random_scores[c, :, row].max())
    assert bool(atlas.beyond_random[c, row])
    assert atlas.specialist[row] == c and float(atlas.index[row]) > 0.99
    t = atlas.table.set_index(["layer", "head"]).loc[PLANTED]
    assert t["specialist"] == "colors" and bool(t["beyond_random_colors"])
    # no other head comes close on colours
    others = torch.cat([atlas.scores[c, :row], atlas.scores[c, row + 1 :]])
    assert float(others.max()) < 0.5 * float(atlas.scores[c, row])


# ----------------------------------------------------------------------------------------------
# the random-token-set control


def test_random_token_sets_are_seeded_matched_and_avoid_the_concept(tiny_llama):
    vocab = tiny_llama.unembedding().shape[0]
    pool = control_pool(tiny_llama.tokenizer, vocab, "matched")
    concept = load_concept("colors", tiny_llama.tokenizer).token_ids
    a = random_token_sets(pool, concept, 5, seed=0, concept="colors")
    b = random_token_sets(pool, concept, 5, seed=0, concept="colors")
    c = random_token_sets(pool, concept, 5, seed=1, concept="colors")
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed, same draws
    assert not any(torch.equal(x, y) for x, y in zip(a, c))  # other seed, other draws
    assert len({tuple(x.tolist()) for x in a}) == 5  # the draws differ from each other

    def forms(ids):  # tokens of each form, counted here
        counts = [0] * len(TOKEN_FORMS)
        for i in ids.tolist():
            counts[int(pool.forms[i])] += 1
        return counts

    assert sum(forms(concept)[:3]) > 0.9 * concept.numel()  # colour tokens are mostly words
    for draw in a + c:
        assert draw.numel() == concept.numel() == len(set(draw.tolist()))
        assert forms(draw) == forms(concept)  # as many tokens of each form as the concept
        assert not set(draw.tolist()) & set(concept.tolist())
    # a concept's draws depend on (seed, its name, draw) only, not on the other concepts
    d = random_token_sets(pool, concept, 3, seed=0, concept="colors")
    assert all(torch.equal(x, y) for x, y in zip(a[:3], d))
    uniform = control_pool(tiny_llama.tokenizer, vocab, "vocab")
    assert uniform.size == vocab and set(uniform.forms.tolist()) == {0}
    with pytest.raises(ValueError, match="control pool"):
        control_pool(tiny_llama.tokenizer, vocab, "nonsense")


def test_token_forms(tiny_llama):
    """Forms against the decoded pieces, written out here."""
    assert [
        TOKEN_FORMS[token_form(p)] for p in (" red", "Italy", "ational", " UK", "42", " the", "\u2581blue", "ré")
    ] == [
        "space",
        "capital",
        "lower",
        "other",
        "other",
        "space",
        "space",
        "other",
    ]
    tok = tiny_llama.tokenizer
    vocab = tiny_llama.unembedding().shape[0]
    pool = control_pool(tok, vocab, "matched")
    for text, form in ((" red", "space"), ("Italy", "capital"), ("ing", "lower"), (",", "other")):
        (i,) = tok.encode(text, add_special_tokens=False)
        assert TOKEN_FORMS[int(pool.forms[i])] == form
    # the pool's forms (one batched decode) against each id decoded on its own
    for i in range(0, min(vocab, len(tok)), 97):
        assert int(pool.forms[i]) == token_form(tok.decode([i], clean_up_tokenization_spaces=False)), i
    assert pool.size == vocab and set(pool.forms.unique().tolist()) == set(range(len(TOKEN_FORMS)))


def test_head_atlas_control_is_seeded(tiny_llama, tiny_acts):
    pursuit = shared_pursuit(tiny_acts, tiny_llama, somp_steps=4)
    concepts = {"colors": load_concept("colors", tiny_llama.tokenizer)}
    a = head_atlas(pursuit, concepts, tokenizer=tiny_llama.tokenizer, n_draws=4, seed=0, pool="vocab")
    b = head_atlas(pursuit, concepts, tokenizer=tiny_llama.tokenizer, n_draws=4, seed=0, pool="vocab")
    c = head_atlas(pursuit, concepts, tokenizer=tiny_llama.tokenizer, n_draws=4, seed=5, pool="vocab")
    assert torch.equal(a.random_scores, b.random_scores)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert torch.equal(a.scores, c.scores)  # the concept's own score does not depend on the seed


# ----------------------------------------------------------------------------------------------
# specialisation, overlap, logit lens


def test_specialisation_index():
    scores = torch.tensor([[0.6, 0.0, 0.2, 0.3], [0.2, 0.0, 0.2, 0.3]], dtype=torch.float64)
    union = torch.tensor([0.8, 0.0, 0.4, 0.3], dtype=torch.float64)  # head 3: both concepts share its tokens
    index, spec = specialisation(scores, union)
    assert index[0].item() == pytest.approx(0.75) and spec[0].item() == 0
    assert math.isnan(index[1].item()) and spec[1].item() == -1  # no concept share: undefined
    assert index[2].item() == pytest.approx(0.5) and spec[2].item() == 0  # a tie: the first listed
    assert index[3].item() == pytest.approx(1.0)  # overlapping lists do not halve it


def test_top_heads_and_jaccard():
    heads = [(0, 0), (0, 1), (1, 0), (1, 1)]
    s = torch.tensor([0.2, 0.0, 0.2, 0.5])
    assert top_heads(s, heads, 3) == [(1, 1), (0, 0), (1, 0)]  # ties: lower layer first
    assert top_heads(s, heads, 10) == [(1, 1), (0, 0), (1, 0)]  # zero-score heads never
    m = jaccard_overlap({"a": [(0, 0), (1, 1)], "b": [(1, 1), (1, 0)], "c": []})
    assert m.loc["a", "b"] == pytest.approx(1 / 3) and m.loc["a", "a"] == 1.0
    assert math.isnan(m.loc["a", "c"]) and math.isnan(m.loc["c", "c"])


def test_logit_lens_tokens_reference(tiny_llama, tiny_acts):
    """Per head: the top-3 tokens of every row of D c, counted over rows; the 4 most frequent
    (ties: lower id first). Reference from the gain-folded unit dictionary, one row at a time."""
    head = (2, 1)
    got = logit_lens_tokens(tiny_acts, tiny_llama, [head], per_row=3, n_most=4)[head]
    w = head_weights(tiny_llama, tiny_acts.layers)
    D = w.unembedding * w.norm_gain
    D = D / D.norm(dim=1, keepdim=True)
    dh = tiny_acts.z.shape[3]
    Wh = w.W_O[head[0]][:, head[1] * dh : (head[1] + 1) * dh]
    counts: dict[int, int] = {}
    for r in range(tiny_acts.n_rows):
        logits = D @ (Wh @ tiny_acts.z[r, head[0], head[1]])
        for i in torch.topk(logits, 3).indices.tolist():
            counts[i] = counts.get(i, 0) + 1
    want = sorted(counts, key=lambda i: (-counts[i], i))[:4]
    assert got == want


# ----------------------------------------------------------------------------------------------
# the app: outputs on a tiny model, the record, the config and the checks before the model loads


ATLAS_CFG = AtlasConfig(
    concepts=["colors", "numbers"],
    somp=AtlasSompConfig(somp_steps=6),
    positions="all",
    top_k=3,
    table_heads=2,
    top_tokens=4,
    lens_top=3,
)


def test_outputs_exist_and_read_back(planted_colour_model, tmp_path):
    lm, _, _ = planted_colour_model
    acts = _acts(lm)
    pursuit = shared_pursuit(acts, lm, somp_steps=6)
    concepts = {n: load_concept(n, lm.tokenizer) for n in ATLAS_CFG.concepts}
    atlas = head_atlas(pursuit, concepts, tokenizer=lm.tokenizer, n_draws=5, seed=0)
    files, overlap, profile, images = write_outputs(tmp_path, atlas, lm, acts, ATLAS_CFG, "Rows: test.", plots=True)
    table = pd.read_csv(tmp_path / ATLAS_CSV)
    assert len(table) == lm.layout.n_total_heads
    for col in ("layer", "head", "top_tokens", "top_gains", "specialisation", "specialist", "model_notes"):
        assert col in table
    for name in ATLAS_CFG.concepts:
        assert {f"score_{name}", f"random_max_{name}", f"beyond_random_{name}"} <= set(table.columns)
    assert table["model_notes"].str.contains("RANDOM-INITIALISED").all()  # the model's notes on every row
    assert table.set_index(["layer", "head"]).loc[PLANTED, "specialist"] == "colors"
    ov = pd.read_csv(tmp_path / OVERLAP_CSV, index_col=0)
    assert list(ov.index) == list(ov.columns) == ATLAS_CFG.concepts and ov.loc["colors", "colors"] == 1.0
    prof = pd.read_csv(tmp_path / LAYERS_CSV, index_col=0)
    assert prof.shape == (2, lm.layout.n_layers)
    assert prof.loc["colors"].sum() == pytest.approx(float(atlas.scores[0].sum()))
    md = (tmp_path / ATLAS_MD).read_text()
    assert "RANDOM-INITIALISED" in md and f"L{PLANTED[0]}.H{PLANTED[1]}" in md and "## Overlap" in md
    assert "(6 steps;" in md and "most frequent top-3" in md  # the config's steps and lens_top
    assert set(images) == {"atlas_colors", "atlas_numbers", "atlas_layers", "overlap"}
    for path in images.values():
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert set(files) >= {"atlas_csv", "atlas_md", "overlap_csv", "layers_csv"}
    # the same tables and images to W&B (offline), read back from its transaction log
    tracker = Tracker({"backend": "wandb", "mode": "offline", "project": "hp-test"}, tmp_path)
    tracker.start({"atlas": dataclasses.asdict(ATLAS_CFG)}, name="atlas", job_type="atlas")
    assert tracker.status["status"] == "ok", tracker.status
    outcome = AtlasOutcome(
        model=lm.name,
        concepts=concept_summary(atlas, 3),
        top_k=3,
        overlap=overlap_json(overlap),
        somp_runs=atlas.meta["somp_runs"],
        control={},
    )
    track(tracker, atlas, overlap, profile, images, outcome)
    tracker.finish()
    logged = wandb_offline.wait_for_wandb_run(tmp_path, "somp_runs")["summary"]
    assert logged["somp_runs"] == lm.layout.n_total_heads
    assert logged["beyond_random/colors"] == len(outcome.concepts["colors"].beyond_random) >= 1
    for name in ("atlas", "overlap", "atlas_layers", *images):
        assert any(k == name or k.startswith(f"{name}/") for k in logged), (name, sorted(logged))


def test_atlas_record_round_trip_and_failure(tmp_path):
    """results.json of an atlas: a run's record with `kind: atlas` and the outcome at the top
    level; read back the same; a failure keeps the kind and never replaces a complete record."""
    summary = ConceptSummary(
        n_tokens=40,
        top_heads=[[3, 1], [0, 2]],
        n_heads_with_share=2,
        random_heads_with_share={"mean": 1.5, "max": 3, "min": 0},
        beyond_random=[[3, 1]],
        n_specialist=1,
    )
    outcome = AtlasOutcome(
        model="tiny",
        concepts={"colors": summary},
        top_k=10,
        overlap={"colors": {"colors": 1.0}},
        somp_runs=12,
        control={"n_draws": 20, "pool": "matched", "pool_size": 100, "seed": 0},
        files={"atlas_csv": "atlas.csv"},
        provenance={"positions": "prompt_mean"},
    )
    rec = AtlasRecord(status="complete", config_hash="abc", config={"seed": 0}, atlas=outcome, tracking={"a": 1})
    write_record(tmp_path, rec)
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["kind"] == "atlas" and raw["status"] == "complete" and raw["somp_runs"] == 12
    assert raw["concepts"]["colors"]["beyond_random"] == [[3, 1]] and raw["overlap"]["colors"]["colors"] == 1.0
    assert list(raw)[-1] == "tracking"  # the outcome sits before the W&B status and the error
    assert AtlasRecord.read(tmp_path / "results.json") == rec
    assert completed_results(tmp_path, "abc") is not None  # the resume check reads it as a run's record
    # a running record has no outcome; a failure of a later launch keeps the complete record
    running = AtlasRecord(status="running", config_hash="other")
    assert "somp_runs" not in running.to_json() and running.to_json()["kind"] == "atlas"
    failed = write_error(tmp_path, RuntimeError("boom"), running, stage="somp")
    assert isinstance(failed, AtlasRecord) and failed.error.stage == "somp"
    assert AtlasRecord.read(tmp_path / "results.json") == rec
    write_error(tmp_path / "fresh", RuntimeError("boom"), running, stage="somp")
    assert AtlasRecord.read(tmp_path / "fresh" / "results.json").status == "failed"
    # a steer run's record is not an atlas record
    write_record(tmp_path / "steer", RunRecord(status="complete"))
    with pytest.raises(ResultsError, match="not an atlas record"):
        AtlasRecord.read(tmp_path / "steer" / "results.json")


def _compose_atlas(*overrides: str):
    from hydra import compose, initialize_config_dir

    from headpursuit.app.run import find_config_dir

    with initialize_config_dir(config_dir=find_config_dir(), version_base="1.3"):
        return compose("atlas", overrides=["cache_dir=null", *overrides])


def test_atlas_config_composes_against_its_schema():
    """conf/atlas.yaml starts from AtlasAppConfig: the defaults are the schema's (one place), the
    prompt sources are their task kinds' configs, and the SOMP options are concept_share's."""
    cfg = _compose_atlas()
    assert OmegaConf.get_type(cfg) is AtlasAppConfig
    conf = validate_atlas(cfg)
    assert conf.atlas == dataclasses.replace(
        AtlasConfig(), text_prompts=conf.atlas.text_prompts, image_prompts=conf.atlas.image_prompts
    )
    assert isinstance(conf.atlas.text_prompts["qa"], QAConfig) and isinstance(
        conf.atlas.text_prompts["toxicity"], ToxicityConfig
    )
    assert isinstance(conf.atlas.image_prompts["captioning"], CaptioningConfig)
    assert {f.name: getattr(conf.atlas.somp, f.name) for f in dataclasses.fields(AtlasSompConfig)} == {
        f.name: getattr(RankingConfig(), f.name) for f in dataclasses.fields(AtlasSompConfig)
    }
    raw = yaml.safe_load((REPO / "conf" / "atlas.yaml").read_text())
    assert "atlas" not in raw  # every atlas default is the schema's
    assert validate_atlas(_compose_atlas("model=gemma3_270m", "atlas.somp.somp_steps=20")).atlas.somp.somp_steps == 20


ATLAS_TYPOS = [
    ("atlas.top_kk=3", "atlas.top_kk"),
    ("atlas.somp.steps=20", "atlas.somp.steps"),  # the old name: somp_steps, as ranking.somp_steps
    ("atlas.random_draws=many", "atlas.random_draws"),
    ("atlas.somp.center=sometimes", "atlas.somp.center"),
    ("atlas.text_prompts.qa.max_new_token=8", "atlas.text_prompts.qa.max_new_token"),
    ("seedd=1", "seedd"),
]


@pytest.mark.parametrize("override, key", ATLAS_TYPOS, ids=[t[0] for t in ATLAS_TYPOS])
def test_a_typo_in_an_atlas_key_fails_at_composition_naming_it(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        _compose_atlas(override)
    assert key in f"{info.value} {info.value.__cause__}"


BASE = {
    "model": {"name_or_path": "smollm2"},
    "atlas": {
        "concepts": ["colors", "numbers"],
        "n_per_group": 4,
        "text_prompts": {"qa": {"name": "qa_countries", "n_rank": 40, "n_eval": 40}},
    },
    "logger": {"mode": "disabled"},
}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("atlas", "positions"), "answer_concept", "atlas.positions='answer_concept'.*depend on the concept"),
        (("atlas", "concepts"), [], "atlas.concepts must be a non-empty list"),
        (("atlas", "somp", "somp_steps"), 0, r"atlas.somp.somp_steps must be an integer >= 1.*somp_steps=10"),
        (("atlas", "somp", "aggregation"), "l3", "atlas.somp.aggregation='l3'"),
        (("atlas", "prompts"), "video", "atlas.prompts='video'"),
        (("atlas", "n_per_group"), 0, "atlas.n_per_group must be an integer >= 1, got 0. Fix: atlas.n_per_group=16"),
        (("atlas", "random_draws"), -1, "atlas.random_draws must be an integer >= 0"),
        (("atlas", "control_pool"), "all", "atlas.control_pool='all'.*Fix: atlas.control_pool=matched"),
        (("atlas", "text_prompts", "qa", "name"), "nope", r"atlas.text_prompts.qa.name='nope'.*\+task@"),
        (("atlas", "top_k"), "ten", "atlas.top_k"),  # a wrong type, from a mapping too
        (("logger", "mode"), "loud", "logger.mode='loud'"),
    ],
)
def test_validate_atlas_names_the_key(path, value, message):
    import copy

    assert validate_atlas(BASE).atlas.text_prompts["qa"] == QAConfig(n_rank=40, n_eval=40)
    cfg = copy.deepcopy(BASE)
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        validate_atlas(cfg)


def test_prompt_sources_take_both_groups():
    atlas = validate_atlas(BASE).atlas
    sources = prompt_sources(atlas, prompt_set(atlas, is_vlm=False))
    assert sources["qa"] == dataclasses.replace(
        QAConfig(n_rank=40, n_eval=40),
        n_rank={"concept": 4, "control": 4},
        rank_groups=["concept", "control"],
        n_eval=1,
        max_new_tokens=1,  # prompt_mean rows read no answer
    )
    answers = prompt_sources(dataclasses.replace(atlas, positions="answer"), "text")
    assert answers["qa"].max_new_tokens == QAConfig().max_new_tokens
    # the sizes are checked as the atlas uses them: 0 new tokens stops answer rows, not prompt rows
    no_tokens = {**BASE["atlas"], "text_prompts": {"qa": {"name": "qa_countries", "max_new_tokens": 0}}}
    validate_atlas({**BASE, "atlas": no_tokens})
    with pytest.raises(ConfigError, match=r"atlas.text_prompts.qa.max_new_tokens=0.*Fix"):
        validate_atlas({**BASE, "atlas": {**no_tokens, "positions": "answer"}})
    with pytest.raises(ConfigError, match=r"atlas.image_prompts holds no prompt source.*\+task@atlas.image_prompts"):
        prompt_sources(atlas, prompt_set(atlas, is_vlm=True))


def test_preflight_checks_the_sources_and_concepts_before_the_model(tmp_path):
    """A missing data file, too many prompts for the source's data, too many SOMP steps and an
    unknown concept each stop the atlas before the model loads, naming the key."""
    import copy

    def with_(path, value):
        cfg = copy.deepcopy(BASE)
        node = cfg
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return validate_atlas(cfg)

    preflight_atlas(validate_atlas(BASE))
    with pytest.raises(PreflightError, match="atlas.text_prompts.qa.data_path=.*no such file"):
        preflight_atlas(with_(("atlas", "text_prompts", "qa", "data_path"), str(tmp_path / "none.jsonl")))
    with pytest.raises(PreflightError, match=r"atlas.text_prompts.qa.n_rank"):
        preflight_atlas(with_(("atlas", "n_per_group"), 100_000))
    with pytest.raises(ConfigError, match=r"atlas.somp.somp_steps=10000000 .*larger than the vocabulary"):
        preflight_atlas(with_(("atlas", "somp", "somp_steps"), 10_000_000))
    with pytest.raises(PreflightError, match="atlas.concepts: 'flavours'"):
        preflight_atlas(with_(("atlas", "concepts"), ["colors", "flavours"]))


def test_unknown_concept_is_a_config_error(tiny_llama):
    assert list(load_atlas_concepts(["colours", "numbers"], tiny_llama.tokenizer)) == ["colors", "numbers"]
    with pytest.raises(ConfigError, match="atlas.concepts: 'flavours' is not a usable concept"):
        load_atlas_concepts(["flavours"], tiny_llama.tokenizer)
    with pytest.raises(ConfigError, match="twice"):
        load_atlas_concepts(["colors", "colours"], tiny_llama.tokenizer)


@pytest.mark.slow
def test_atlas_app_end_to_end_on_smollm2(tmp_path):
    """`python -m headpursuit.app.atlas` on SmolLM2 with 2 prompts per group and source (the
    defaults otherwise: prompt-mean rows, W&B offline): the files, results.json (status, one SOMP
    per head, the model's notes), W&B, and a rerun that resumes."""
    from test_pipeline import run_cli

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = [
        "headpursuit.app.atlas",
        *CPU_OVERRIDES,
        "atlas.n_per_group=2",
        "atlas.random_draws=5",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["kind"] == "atlas"
    assert res["somp_runs"] == 270 and res["provenance"]["positions"] == "prompt_mean"
    assert res["provenance"]["prompts"]["sources"] == {"qa": 4, "toxicity": 4}
    assert res["provenance"]["n_activation_rows"] == 8  # one mean row per prompt
    assert res["provenance"]["somp"]["somp_steps"] == 10
    assert any("4-bit" in n for n in res["provenance"]["model"]["notes"])
    assert set(res["files"]) >= {"atlas_csv", "atlas_md", "overlap_csv", "overlap", "atlas_layers", "atlas_colors"}
    for name in res["files"].values():
        assert (run_dir / name).is_file(), name
    table = pd.read_csv(run_dir / "atlas.csv")
    assert len(table) == 270 and table["model_notes"].str.contains("4-bit").all()
    assert "4-bit" in (run_dir / "atlas.md").read_text()
    assert res["tracking"]["status"] == "ok", res["tracking"]
    assert wandb_offline.read_wandb_run(run_dir)["summary"]["somp_runs"] == 270
    assert AtlasRecord.read(run_dir / "results.json").atlas.somp_runs == 270
    again = run_cli(*args)
    assert again.returncode == 0 and "complete with the same config; skipping" in again.stderr + again.stdout
