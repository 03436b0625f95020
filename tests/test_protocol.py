"""The paper's controls (issue 12): layer-matched random head sets, median / quartiles over the
seeds, metrics normalised to the unedited model, the experiment=paper_* files, and the pipeline end
to end with them (docs/protocol.md, "Controls and normalisation")."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from headpursuit.app.config import ConfigError, validate_config
from headpursuit.app.record import (
    normalize_to_baseline,
    normalized_metrics,
    percentile,
    relaxation,
    relaxed_layers,
    summarize_seeds,
)
from headpursuit.app.tracking import to_jsonable
from headpursuit.heads import RANDOM_POOLS, ControlDraw, layer_count_draw, random_control_draw

REPO = Path(__file__).resolve().parents[1]
# SmolLM2's layout: 30 layers x 9 heads.
L, H = 30, 9
SELECTED = [(0, 1), (0, 3), (5, 2), (12, 4), (29, 0), (29, 8), (29, 5)]


# ------------------------------------------------------------------------------------------
# layer_counts: the paper's random head sets
# ------------------------------------------------------------------------------------------


def old_layer_count_heads(selected, n_heads, seed):
    """The layer_counts draw before issue 19 (no borrowing), as it was: the reference for every set
    that needs none."""
    chosen = {(int(a), int(b)) for a, b in selected}
    counts = Counter(layer for layer, _ in chosen)
    rng = random.Random(f"layer_counts:{seed}")
    out = []
    for layer in sorted(counts):
        pool = [(layer, h) for h in range(n_heads) if (layer, h) not in chosen]
        out += rng.sample(pool, counts[layer])
    return sorted(out)


def short_layers(selected, n_heads):
    """{layer: heads it lacks}: layers holding more edited heads than other heads."""
    counts = Counter(a for a, _ in selected)
    return {layer: c - (n_heads - c) for layer, c in counts.items() if c > n_heads - c}


def test_layer_counts_sets_match_the_selected_layers_and_are_disjoint():
    assert "layer_counts" in RANDOM_POOLS
    sets = [random_control_draw(SELECTED, L, H, len(SELECTED), s, pool="layer_counts") for s in range(10)]
    for draw in sets:
        hs = draw.heads
        assert Counter(a for a, _ in hs) == Counter(a for a, _ in SELECTED) and draw.borrowed == {}
        assert not set(hs) & set(SELECTED)
        assert len(set(hs)) == len(SELECTED) and hs == sorted(hs)
        assert all(0 <= h < H for _, h in hs)
    # 10 seeds, 10 different sets; the same seed gives the same set (string-seeded generator)
    assert len({tuple(d.heads) for d in sets}) == 10
    assert sets == [layer_count_draw(SELECTED, L, H, s) for s in range(10)]
    assert layer_count_draw(list(reversed(SELECTED)), L, H, 3) == sets[3]  # order of the input is irrelevant


def test_layer_counts_without_a_short_layer_is_the_old_draw():
    """Sets that need no borrowing are exactly the draws of before (strict or not)."""
    rng = random.Random("selections")
    n_checked = 0
    for _ in range(200):
        selected = rng.sample([(a, b) for a in range(L) for b in range(H)], rng.randint(1, 40))
        if short_layers(selected, H):
            continue
        n_checked += 1
        for seed in (0, 1, 7):
            old = old_layer_count_heads(selected, H, seed)
            assert layer_count_draw(selected, L, H, seed) == ControlDraw(seed, old, {})
            assert layer_count_draw(selected, L, H, seed, strict=True).heads == old
    assert n_checked > 100


def test_layer_counts_fills_a_layer_to_its_last_free_heads():
    # 4 of layer 7's 9 heads are edited: the 5 others can supply 4, and every draw uses 4 of them.
    selected = [(7, 0), (7, 2), (7, 4), (7, 6)]
    for s in range(10):
        draw = layer_count_draw(selected, L, H, s)
        hs = draw.heads
        assert len(hs) == 4 and {a for a, _ in hs} == {7} and set(hs) <= {(7, h) for h in (1, 3, 5, 7, 8)}
        assert draw.borrowed == {}


def test_layer_counts_borrows_for_a_short_layer_by_hand():
    # SmolLM2's case: 5 of layer 0's 9 heads edited, so its 4 others and 1 head of layer 1 (the only
    # layer at distance 1) make the set; layer 12 is drawn as before.
    selected = [(0, h) for h in range(5)] + [(12, 4)]
    for s in range(10):
        draw = layer_count_draw(selected, L, H, s)
        assert draw.borrowed == {0: {1: 1}} and draw.shortfall == {0: 1}
        assert {(0, h) for h in range(5, 9)} <= set(draw.heads)
        assert Counter(a for a, _ in draw.heads) == {0: 4, 1: 1, 12: 1}
        # the layer that can supply its count gets the old draw of the edited heads outside the short layer
        assert [h for h in draw.heads if h[0] == 12] == old_layer_count_heads([(12, 4)], H, s)
    # layers 0 (5 edited, 1 short) and 1 (6 edited, 3 short): layer 1's other heads are all in the
    # set, so both borrow from layer 2
    two = [(0, h) for h in range(5)] + [(1, h) for h in range(6)]
    draw = layer_count_draw(two, L, H, 0)
    assert draw.borrowed == {0: {2: 1}, 1: {2: 3}}
    assert Counter(a for a, _ in draw.heads) == {0: 4, 1: 3, 2: 4}
    # all of layer 10 edited: its 9 come from layers 9 and 11, one pool (neither side preferred)
    sources = Counter()
    for s in range(20):
        draw = layer_count_draw([(10, h) for h in range(H)], L, H, s)
        assert set(draw.borrowed) == {10} and sum(draw.borrowed[10].values()) == H
        assert {a for a, _ in draw.heads} <= {9, 11} and len(draw.heads) == H
        sources.update(draw.borrowed[10])
    assert sources[9] > 40 and sources[11] > 40  # 180 heads over 20 draws, from both sides


@pytest.mark.parametrize("n_selected", [12, 30, 60, 100, 135])
def test_layer_counts_relaxed_sets_against_the_rules(n_selected):
    """Random edited sets that crowd a few layers: each draw has k heads, disjoint from the edited
    ones; every layer keeps at least its count (the short ones all their other heads); the layers
    that can are drawn as before; each short layer borrowed exactly what it lacks, from the nearest
    layers (nothing free is left nearer than its farthest source); the same seed, the same draw."""
    rng = random.Random(f"crowded{n_selected}")
    n_relaxed = 0
    for trial in range(15):
        # concentrate the edited heads in a few layers so that some are short
        layers = rng.sample(range(L), max(2, n_selected // 6))
        pool = [(a, b) for a in layers for b in range(H)]
        selected = rng.sample(pool, min(n_selected, len(pool)))
        if len(selected) < n_selected:
            rest = [(a, b) for a in range(L) for b in range(H) if (a, b) not in set(selected)]
            selected += rng.sample(rest, n_selected - len(selected))
        short = short_layers(selected, H)
        counts = Counter(a for a, _ in selected)
        for seed in (trial, trial + 100):
            draw = layer_count_draw(selected, L, H, seed)
            assert draw == layer_count_draw(selected, L, H, seed)
            hs = draw.heads
            assert len(hs) == len(set(hs)) == len(selected) and hs == sorted(hs)
            assert not set(hs) & set(selected)
            got = Counter(a for a, _ in hs)
            for layer, c in counts.items():
                assert got[layer] >= (H - c if layer in short else c)
            assert draw.shortfall == short
            n_relaxed += bool(short)
            # the layers that can supply their count: the old draw of the edited heads outside short layers
            fine = [h for h in selected if h[0] not in short]
            assert set(old_layer_count_heads(fine, H, seed)) <= set(hs)
            borrowed_from = Counter()
            for layer, src in draw.borrowed.items():
                farthest = max(abs(s - layer) for s in src)
                nearer = [(a, b) for a in range(L) if 0 < abs(a - layer) < farthest for b in range(H)]
                assert all(h in set(hs) or h in set(selected) for h in nearer), (layer, src)
                borrowed_from.update(src)
            # heads beyond the old draw and the short layers' own heads are exactly the borrowed ones
            extra = Counter(a for a, _ in set(hs) - set(old_layer_count_heads(fine, H, seed)) if a not in short)
            assert extra == borrowed_from
    if n_selected >= 30:
        assert n_relaxed > 0


def test_layer_counts_strict_keeps_the_error_naming_the_layer_and_fixes():
    selected = [(3, h) for h in range(5)] + [(10, 0)]  # 5 edited in layer 3: only 4 heads remain there
    with pytest.raises(ConfigError) as err:
        random_control_draw(selected, L, H, len(selected), 0, pool="layer_counts", strict=True)
    msg = str(err.value)
    assert "layer 3" in msg and "needs 5" in msg and "only 4" in msg
    assert "intervention.random_pool=all" in msg and "intervention.k" in msg
    assert "intervention.random_strict=false" in msg
    # the fixes it names work
    assert len(random_control_draw(selected, L, H, len(selected), 0, pool="all").heads) == len(selected)
    relaxed = random_control_draw(selected, L, H, len(selected), 0, pool="layer_counts", strict=False)
    assert relaxed.borrowed == {3: {2: 1}} or relaxed.borrowed == {3: {4: 1}}


def test_layer_counts_needs_k_heads_outside_the_edited_ones():
    # 2 layers x 4 heads: 5 edited heads leave 3, fewer than the 5 a disjoint set needs
    selected = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(ConfigError, match=r"intervention\.k=5.*at most 4"):
        layer_count_draw(selected, 2, 4, 0)
    draw = layer_count_draw(selected[:4], 2, 4, 0)  # 4 of 8: every other head
    assert set(draw.heads) == {(0, 3), (1, 1), (1, 2), (1, 3)} and draw.borrowed == {0: {1: 2}}


def test_relaxation_records_by_hand():
    draws = [
        ControlDraw(0, [(0, 5), (0, 6), (0, 7), (0, 8), (1, 2)], {0: {1: 1}}),
        ControlDraw(1, [(0, 5), (0, 6), (0, 7), (1, 4), (2, 0)], {0: {1: 1, 2: 1}}),
        ControlDraw(2, [(3, 1)], {}),
    ]
    assert relaxation(draws[0]) == {"0": {"short": 1, "from": {"1": 1}}}
    assert relaxation(draws[1]) == {"0": {"short": 2, "from": {"1": 1, "2": 1}}}
    assert relaxation(draws[2]) == {}
    assert relaxed_layers(draws) == {"0": {"short": 2, "n_sets": 2, "from": {"1": 2, "2": 1}}}
    assert relaxed_layers(draws[2:]) == {}
    # JSON-ready: string keys, plain ints
    assert json.loads(json.dumps(relaxed_layers(draws))) == relaxed_layers(draws)


def test_validate_config_accepts_layer_counts():
    cfg = {
        "model": {"name_or_path": "smollm2", "n_layers": L, "n_heads": H},
        "task": {"name": "qa_countries", "positions": "answer_concept"},
        "ranking": {"method": "concept_share", "somp_steps": 10},
        "intervention": {"k": 6, "alpha": -1.0, "random_seeds": [0, 1], "random_pool": "layer_counts"},
        "seed": 0,
    }
    validate_config(cfg)
    cfg["intervention"]["random_strict"] = True
    validate_config(cfg)
    cfg["intervention"]["k"] = 136  # 272 > 270 heads: no disjoint set of 136, before any model loads
    with pytest.raises(ConfigError, match=r"intervention\.k=136.*at most 135"):
        validate_config(cfg)
    cfg["intervention"]["k"] = 135
    validate_config(cfg)
    cfg["intervention"]["random_pool"] = "layer_count"
    with pytest.raises(ConfigError, match="layer_counts"):
        validate_config(cfg)


# ------------------------------------------------------------------------------------------
# Quartiles over the seeds
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10])
def test_quartiles_are_linear_interpolation(n):
    vals = [random.Random(f"q{n}").random() for _ in range(n)]
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    assert percentile(vals, 0.25) == pytest.approx(q1, abs=1e-12)
    assert percentile(vals, 0.75) == pytest.approx(q3, abs=1e-12)
    assert percentile(vals, 0.25) == pytest.approx(float(np.percentile(vals, 25)), abs=1e-12)
    s = summarize_seeds([{"concept": {"accuracy": v}} for v in vals])
    assert s["q25"]["concept"]["accuracy"] == pytest.approx(q1, abs=1e-12)
    assert s["q75"]["concept"]["accuracy"] == pytest.approx(q3, abs=1e-12)
    assert s["median"]["concept"]["accuracy"] == pytest.approx(statistics.median(vals), abs=1e-12)


def test_quartiles_by_hand_one_seed_and_nan():
    # sorted 0.1 0.2 0.4 0.8 1.0: q25 at position 1 -> 0.2, q75 at position 3 -> 0.8
    per_seed = [{"g": {"m": v, "u": float("nan")}} for v in (0.8, 0.1, 1.0, 0.4, 0.2)]
    s = summarize_seeds(per_seed)
    assert (s["q25"]["g"]["m"], s["median"]["g"]["m"], s["q75"]["g"]["m"]) == (0.2, 0.4, 0.8)
    assert math.isnan(s["q25"]["g"]["u"]) and math.isnan(s["q75"]["g"]["u"])
    one = summarize_seeds(per_seed[:1])
    assert one["q25"]["g"]["m"] == one["q75"]["g"]["m"] == one["median"]["g"]["m"] == 0.8
    # the existing keys stay as they were
    assert set(s) == {"g", "std", "median", "q25", "q75", "n_seeds"} and s["g"]["m"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# Normalised to the unedited model
# ------------------------------------------------------------------------------------------


def test_normalized_metrics_by_hand():
    baseline = {
        "concept": {"accuracy": 0.8, "zero": 0.0},
        "control": {"accuracy": 0.5},
        "n": {"concept": 4},
        "examples": [],
    }
    edited = {"concept": {"accuracy": 0.4, "zero": 0.3}, "control": {"accuracy": 0.5}}
    per_seed = [
        {"seed": s, "heads": [[0, 1]], "concept": {"accuracy": a, "zero": 0.0}, "control": {"accuracy": c}}
        for s, (a, c) in enumerate([(0.8, 0.5), (0.4, 0.25), (0.6, 0.5), (0.2, 0.0)])
    ]
    n = normalized_metrics(baseline, edited, per_seed)
    assert n["edited"]["concept"]["accuracy"] == pytest.approx(0.5)
    assert n["edited"]["control"]["accuracy"] == pytest.approx(1.0)
    assert math.isnan(n["edited"]["concept"]["zero"])  # baseline 0: undefined, no crash
    r = n["random"]
    # concept: 1, 0.5, 0.75, 0.25 -> sorted 0.25 0.5 0.75 1
    assert r["median"]["concept"]["accuracy"] == pytest.approx(0.625)
    assert r["q25"]["concept"]["accuracy"] == pytest.approx(0.4375)  # 0.25 + 0.75 * 0.25
    assert r["q75"]["concept"]["accuracy"] == pytest.approx(0.8125)  # 0.75 + 0.25 * 0.25
    assert r["mean"]["concept"]["accuracy"] == pytest.approx(0.625)
    assert r["std"]["concept"]["accuracy"] == pytest.approx(statistics.stdev([1, 0.5, 0.75, 0.25]))
    # control: 1, 0.5, 1, 0 -> median 0.75
    assert r["median"]["control"]["accuracy"] == pytest.approx(0.75)
    assert math.isnan(r["median"]["concept"]["zero"]) and r["n_seeds"] == 4
    # normalise each seed, then summarise (here equal to summarising then dividing: baseline > 0)
    raw = summarize_seeds(per_seed)
    assert r["q25"]["concept"]["accuracy"] == pytest.approx(raw["q25"]["concept"]["accuracy"] / 0.8)
    # NaN is written as null in results.json
    js = json.loads(json.dumps(to_jsonable(n), allow_nan=False))
    assert js["edited"]["concept"]["zero"] is None and js["random"]["median"]["concept"]["zero"] is None
    assert normalized_metrics(baseline, edited, [])["random"] is None


def test_normalize_to_baseline_missing_and_non_finite():
    out = normalize_to_baseline(
        {"a": {"x": 1.0, "y": float("nan"), "new": 2.0}, "b": {"z": 3}}, {"a": {"x": 2.0, "y": 1.0}}
    )
    assert out["a"]["x"] == 0.5 and math.isnan(out["a"]["y"]) and math.isnan(out["a"]["new"])
    assert math.isnan(out["b"]["z"])


# ------------------------------------------------------------------------------------------
# The experiment files (composed with Hydra's compose API)
# ------------------------------------------------------------------------------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


PAPER_SEEDS = list(range(10))


PAPER_K_FRACS = "0.0078125,0.015625,0.03125"  # 8, 16, 32 of 1024 heads


@pytest.mark.parametrize(
    "command, model, ranking, positions, sweep",
    [
        (
            ("protocol=paper",),
            "smollm2",
            "concept_restricted",
            "prompt_mean",
            {"ranking": "paper,logit_lens_mean", "intervention.k_frac": PAPER_K_FRACS},
        ),
        (("protocol=paper_controls",), "smollm2", "concept_share", "answer_concept", {"intervention.k_frac": PAPER_K_FRACS}),
        (
            ("experiment=paper_fig2_qa",),
            "mistralai/Mistral-7B-Instruct-v0.2",
            "concept_restricted",
            "prompt_mean",
            {"ranking": "paper,logit_lens_mean", "intervention.k_frac": PAPER_K_FRACS},
        ),
    ],
)  # fmt: skip
def test_protocols_compose(command, model, ranking, positions, sweep):
    """protocol=paper (the paper's ranking, prompts, positions, k and controls), protocol=paper_controls
    (the paper's k and controls around our ranking) on the default task and data, and a paper
    experiment that chooses protocol=paper."""
    from omegaconf import OmegaConf

    cfg = _compose(*command)
    assert cfg.model.name_or_path == model
    assert cfg.ranking.method == ranking and cfg.task.name == "qa_countries"
    assert cfg.task.positions == positions
    iv = cfg.intervention
    assert iv.random_pool == "layer_counts" and list(iv.random_seeds) == PAPER_SEEDS and iv.alpha == -1.0
    assert iv.heads == "ranked" and iv.random_controls and iv.k_frac == 0.0078125
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == sweep
    if ranking == "concept_restricted":
        assert cfg.hydra.runtime.choices.ranking == "paper" and cfg.task.prompt_preset == "paper"
        assert (
            cfg.ranking.somp_steps,
            cfg.ranking.center,
            cfg.ranking.normalize_atoms,
            cfg.ranking.fold_norm_gain,
        ) == (
            50,
            True,
            False,
            False,
        )
        assert list(cfg.task.rank_groups) == ["concept", "control"]
    else:
        assert cfg.task.prompt_preset == "ours" and cfg.task.rank_groups is None
    if model == "smollm2":  # the default task and data: the shipped questions, as `make run`
        assert (cfg.task.source, cfg.task.n_rank, cfg.task.n_eval) == ("fixture", 40, 40)
    # Each job of the sweep composes: the command line's ranking choice replaces the protocol's.
    if "ranking" in sweep:
        ll = _compose(*command, "ranking=logit_lens_mean")
        assert ll.ranking.method == "logit_lens_mean" and ll.task.positions == positions


def test_the_default_protocol_is_ours_and_adds_nothing():
    """protocol=ours (the default) and data=task (the default) leave every group's own values:
    `make run` composes exactly what it composed before the protocol and data groups existed."""
    from omegaconf import OmegaConf

    default, ours = _compose(), _compose("protocol=ours", "data=task")
    assert default.hydra.runtime.choices.protocol == "ours" and default.hydra.runtime.choices.data == "task"

    def plain(cfg):
        return {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}

    assert plain(default) == plain(ours)
    groups = {"model", "task", "ranking", "intervention", "logger"}
    from dataclasses import fields

    from headpursuit.app.schema import AppConfig

    # no node from the choice-only groups (protocol, data, offline_model, hub_model): only the schema's keys
    assert set(plain(default)) - groups - {"rank_task"} == {f.name for f in fields(AppConfig)} - groups - {"rank_task"}
    assert (default.task.source, default.task.positions, default.task.prompt_preset) == (
        "fixture",
        "answer_concept",
        "ours",
    )
    assert (default.intervention.k, default.intervention.k_frac, default.intervention.random_pool) == (6, None, "all")


# ------------------------------------------------------------------------------------------
# End to end (the embedded SmolLM2, offline)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_records_layer_counts_quartiles_and_normalized(tmp_path, tmp_path_factory):
    from test_pipeline import run_record, shared_cache

    rec = run_record(
        tmp_path / "run",
        shared_cache(tmp_path_factory),
        "intervention.k=3",
        "intervention.alpha=-1",
        "intervention.random_pool=layer_counts",
        "intervention.random_seeds=[0,1,2]",
    )
    assert rec.status == "complete"
    r = rec.outcome
    edited = r.edit.pairs
    rnd = r.random
    assert rnd.pool == "layer_counts" and rnd.stats.n_seeds == 3 and len(rnd.per_seed) == 3
    assert rnd.relaxed_layers == {}  # 3 heads never fill more than half of a layer of 9
    for draw in rnd.per_seed:
        assert Counter(a for a, _ in draw.heads) == Counter(a for a, _ in edited) and not set(draw.heads) & set(edited)
        assert draw.relaxed == {}
    # the existing keys, and beside them the quartiles
    for stat in ("std", "median", "q25", "q75"):
        assert "accuracy" in rnd.stats.stat(stat)["concept"], stat
    accs = [d.result.groups["concept"]["accuracy"] for d in rnd.per_seed]
    assert rnd.stats.mean["concept"]["accuracy"] == pytest.approx(sum(accs) / 3)
    q1, _, q3 = statistics.quantiles(accs, n=4, method="inclusive")
    assert rnd.stats.q25["concept"]["accuracy"] == pytest.approx(q1)
    assert rnd.stats.q75["concept"]["accuracy"] == pytest.approx(q3)
    norm = r.normalized
    for g in ("concept", "control"):
        b, e = r.baseline.groups[g]["accuracy"], r.edited.groups[g]["accuracy"]
        got = norm.edited[g]["accuracy"]
        assert math.isnan(got) if b == 0 else got == pytest.approx(e / b)  # undefined over 0 (null in the file)
        for stat in ("median", "q25", "q75", "mean", "std"):
            assert "accuracy" in norm.random.stat(stat)[g], (stat, g)
    b = r.baseline.groups["concept"]["accuracy"]
    if b:
        med = statistics.median(a / b for a in accs)
        assert norm.random.median["concept"]["accuracy"] == pytest.approx(med)


@pytest.mark.slow
def test_paper_protocol_runs_end_to_end(tmp_path, tmp_path_factory):
    """`python -m headpursuit experiment=smoke protocol=paper` (one run: ranking=paper, k = 8/1024
    of the heads) on the default task and data with small sample counts: prompt_mean activations,
    both groups' ranking questions, the paper's SOMP scoring, layer_counts controls, normalised
    metrics."""
    from test_pipeline import run_job, shared_cache

    r = run_job(
        tmp_path / "run",
        shared_cache(tmp_path_factory),
        "protocol=paper",
        "task.n_rank=4",
        "task.n_eval=3",
        "task.max_new_tokens=8",
        experiment="smoke",  # 2 random sets, no plots
    )
    assert r["status"] == "complete" and r["ranking"] == "concept_restricted"
    assert r["config"]["task"]["positions"] == "prompt_mean"
    assert r["config"]["task"]["rank_groups"] == ["concept", "control"]
    assert r["config"]["ranking"]["somp_steps"] == 50 and r["config"]["ranking"]["center"] is True
    assert r["k"] == 2 and r["k_frac"] == 8 / 1024  # round(270 * 8 / 1024)
    assert r["run"]["choices"]["ranking"] == "paper" and r["run"]["choices"]["protocol"] == "paper"
    assert r["random"]["pool"] == "layer_counts" and r["random"]["n_seeds"] == 2
    edited = Counter(h["layer"] for h in r["heads"])
    assert all(Counter(a for a, _ in d["heads"]) == edited for d in r["random"]["per_seed"])
    assert "concept" in r["normalized"]["edited"] and "q25" in r["normalized"]["random"]
