"""The paper's scoring (concept_restricted, centred, raw rows, no gain) and its logit-lens baseline
against plain references written here; the options' defaults leave today's results unchanged."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from headpursuit.capture import capture_heads
from headpursuit.concepts import load_concept
from headpursuit.ranking import HeadWeights, rank_heads
from headpursuit.somp import somp, somp_heads

RANKING_CONF = Path(__file__).resolve().parents[1] / "conf" / "ranking"


def ranking_options(name: str) -> dict:
    """The options of conf/ranking/<name>.yaml as the Hydra shell passes them to rank_heads: the
    file composed against its schema, checked by validate_config."""
    from hydra import compose, initialize_config_dir

    from headpursuit.app.config import ranking_config, validate_config

    with initialize_config_dir(config_dir=str(RANKING_CONF.parent), version_base="1.3"):
        cfg = compose("config", overrides=[f"ranking={name}", "logger=none", "cache_dir=null"])
    return asdict(ranking_config(validate_config(cfg)))


PAPER = dict(method="concept_restricted", center=True, normalize_atoms=False, fold_norm_gain=False)
PROMPTS = [
    "Q: Where is Paris?\nA:",
    "The capital of Italy is Rome, and the capital of Spain is",
    "Name a large country in Asia:",
    "Which country has the most people?",
]


# ------------------------------------------------------------------------------------------
# plain references (float64, one head at a time, no tricks)


def head_signal(z: torch.Tensor, W_O: torch.Tensor, layer_index: int, head: int) -> torch.Tensor:
    """c = z_h W_O,h^T (rows, d_model) in float64."""
    dh = z.shape[3]
    Wh = W_O[layer_index][:, head * dh : (head + 1) * dh].double()
    return z[:, layer_index, head].double() @ Wh.T


def paper_reference(
    z: torch.Tensor, W_O: torch.Tensor, U: torch.Tensor, concept_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """Per head (layer-major): centre c over rows, greedy argmax_j sum_i |<R_i, D_j>| over the raw
    concept rows, float64 least squares on the support, score = 1 - ||R||^2 / ||Hc||^2."""
    D = U[concept_ids].double()
    scores, supports = [], []
    for li in range(z.shape[1]):
        for h in range(z.shape[2]):
            c = head_signal(z, W_O, li, h)
            Hc = c - c.mean(dim=0, keepdim=True)
            R, S = Hc.clone(), []
            for _ in range(k):
                score = (R @ D.T).abs().sum(dim=0)
                score[S] = float("-inf")
                S.append(int(score.argmax()))
                W = torch.linalg.lstsq(D[S].T, Hc.T).solution  # (|S|, rows)
                R = Hc - W.T @ D[S]
            scores.append(1.0 - float((R * R).sum()) / float((Hc * Hc).sum()))
            supports.append(concept_ids[S].tolist())
    return torch.tensor(scores, dtype=torch.float64), supports


def by_head(scores) -> torch.Tensor:
    """A HeadScores' score column in layer-major head order."""
    t = scores.table.sort_values(["layer", "head"])
    return torch.tensor(t["score"].to_numpy(), dtype=torch.float64)


def check_against_reference(acts, lm, concept, k: int) -> None:
    w = HeadWeights.from_model(lm, acts.layers)
    ids = concept.token_ids.unique()
    ref_scores, ref_supports = paper_reference(acts.z, w.W_O, w.unembedding, ids, k)
    scores = rank_heads(acts, lm, concept, somp_steps=k, **PAPER)
    assert scores.meta["center"] and not scores.meta["normalize_atoms"] and not scores.meta["fold_norm_gain"]
    assert torch.allclose(by_head(scores), ref_scores, rtol=0, atol=1e-6)
    # the same atoms, in the same order
    res = somp_heads(
        acts.z, w.W_O, w.unembedding, k, token_ids=ids, fold_norm_gain=False, center=True, normalize_atoms=False
    )
    assert res.indices.tolist() == ref_supports
    assert torch.allclose(res.explained_variance[:, -1], ref_scores, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny():
    from headpursuit.models.tiny import tiny_text_model

    lm = tiny_text_model("llama", seed=0)
    acts = capture_heads(lm, PROMPTS, positions="all", progress=False)
    return lm, acts, load_concept("countries", lm.tokenizer)


# ------------------------------------------------------------------------------------------
# the paper's scoring


@pytest.mark.parametrize("k", [10, 50])
def test_paper_scoring_matches_plain_reference_tiny(tiny, k):
    lm, acts, concept = tiny
    assert concept.token_ids.unique().numel() > 50  # no clamping of k here
    check_against_reference(acts, lm, concept, k)


@pytest.mark.slow
def test_paper_scoring_matches_plain_reference_smollm2(smollm2):
    # four layers (36 heads) keep the plain reference's 50 lstsq steps per head affordable
    acts = capture_heads(smollm2, PROMPTS, positions="all", layers=[0, 9, 19, 29], progress=False)
    check_against_reference(acts, smollm2, load_concept("countries", smollm2.tokenizer), 50)


def test_planted_concept_head_ranks_first_under_the_paper_preset(tiny):
    """Head (1, 2)'s W_O block writes only combinations of 4 raw concept rows (of very different
    norms); every other head keeps the tiny model's random weights."""
    lm, acts, concept = tiny
    target, dh = (1, 2), lm.layout.head_dim
    w = HeadWeights.from_model(lm, acts.layers)
    planted = concept.token_ids.unique()[[3, 17, 40, 101]]
    rows = w.unembedding[planted] * torch.tensor([0.2, 1.0, 3.0, 8.0])[:, None]
    mix = torch.randn(4, dh, generator=torch.Generator().manual_seed(0))
    W_O = w.W_O.clone()
    W_O[target[0]][:, target[1] * dh : (target[1] + 1) * dh] = rows.T @ mix
    weights = HeadWeights(W_O, w.unembedding, w.norm_gain, w.tokenizer, w.name)
    scores = rank_heads(acts, weights, concept, **ranking_options("paper"))
    assert scores.top(1) == [target]
    best = scores.table.iloc[0]
    assert best["score"] == pytest.approx(1.0, abs=1e-9)
    assert (scores.table["score"].iloc[1:] < 0.99).all()
    decoded = {repr(lm.tokenizer.decode([int(i)], clean_up_tokenization_spaces=False)) for i in planted}
    assert set(best["top_tokens"].split(" | ")) == decoded  # the 4 planted atoms, then the head stopped


def test_paper_preset_is_the_papers_scoring():
    assert ranking_options("paper") == dict(PAPER, somp_steps=50, aggregation="l1")


def test_concept_restricted_clamps_k_with_raw_rows(tiny):
    lm, acts, _ = tiny
    with pytest.warns(UserWarning, match="concept tokens"):
        s = rank_heads(acts, lm, [12, 13, 15], somp_steps=50, **PAPER)
    assert s.meta["somp_steps_used"] == 3


# ------------------------------------------------------------------------------------------
# raw atoms and centring at the level of somp()


def test_somp_raw_rows_choose_by_norm_and_fit_is_scale_invariant():
    g = torch.Generator().manual_seed(3)
    D = torch.randn(40, 16, generator=g, dtype=torch.float64)
    D = D * torch.linspace(0.1, 5.0, 40, dtype=torch.float64)[:, None]
    H = torch.randn(2, 30, 16, generator=g, dtype=torch.float64) + 2.0  # an offset for centring to remove
    res = somp(H, D, 6, center=True, normalize_atoms=False)
    for h in range(2):
        Hc = H[h] - H[h].mean(0, keepdim=True)
        R, S = Hc.clone(), []
        for _ in range(6):
            score = (R @ D.T).abs().sum(0)
            score[S] = float("-inf")
            S.append(int(score.argmax()))
            W = torch.linalg.lstsq(D[S].T, Hc.T).solution
            R = Hc - W.T @ D[S]
        assert res.indices[h].tolist() == S
        assert float(res.explained_variance[h, -1]) == pytest.approx(
            1 - float((R * R).sum() / (Hc * Hc).sum()), abs=1e-12
        )
        # coefficients are those of the raw rows
        assert torch.allclose(res.coefficients[h], W.T, atol=1e-9)
        assert float(res.signal_energy[h]) == pytest.approx(float((Hc * Hc).sum()), rel=1e-12)


# ------------------------------------------------------------------------------------------
# the paper's logit-lens baseline


@pytest.mark.parametrize("fold", [False, True])
def test_logit_lens_mean_is_the_mean_concept_logit(tiny, fold):
    lm, acts, concept = tiny
    w = HeadWeights.from_model(lm, acts.layers)
    ids = concept.token_ids.unique()
    U = w.unembedding.double() * (w.norm_gain.double() if fold else 1.0)
    n, L, Hn, _ = acts.z.shape
    expected, best_tokens = [], []
    for li in range(L):
        for h in range(Hn):
            c = head_signal(acts.z, w.W_O, li, h)
            total, per_token = 0.0, torch.zeros(ids.numel(), dtype=torch.float64)
            for i in range(n):
                for t, tok in enumerate(ids.tolist()):
                    logit = float(U[tok] @ c[i])
                    total += logit
                    per_token[t] += logit
            expected.append(total / (n * ids.numel()))
            best_tokens.append(ids[torch.argsort(per_token, descending=True, stable=True)[:5]].tolist())
    s = rank_heads(acts, lm, concept, method="logit_lens_mean", fold_norm_gain=fold)
    assert torch.allclose(by_head(s), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert s.table["explained_variance"].isna().all()
    t = s.table.sort_values(["layer", "head"])
    for cell, toks in zip(t["top_tokens"], best_tokens):
        want = " | ".join(repr(lm.tokenizer.decode([i], clean_up_tokenization_spaces=False)) for i in toks)
        assert cell == want


# ------------------------------------------------------------------------------------------
# defaults unchanged; every ranking config is accepted


@pytest.mark.parametrize("method", ["concept_share", "concept_restricted", "logit_lens"])
def test_explicit_defaults_are_todays_behaviour(tiny, method):
    lm, acts, concept = tiny
    today = rank_heads(acts, lm, concept, method=method, somp_steps=6)
    explicit = rank_heads(
        acts, lm, concept, method=method, somp_steps=6, center=False, normalize_atoms=True, fold_norm_gain=True
    )
    assert today.table.equals(explicit.table)
    assert today.meta["center"] is False and today.meta["normalize_atoms"] is True


def test_explicit_somp_defaults_are_bit_identical(tiny):
    lm, acts, concept = tiny
    w = HeadWeights.from_model(lm, acts.layers)
    a = somp_heads(acts.z, w.W_O, w.unembedding, 8, norm_gain=w.norm_gain)
    b = somp_heads(acts.z, w.W_O, w.unembedding, 8, norm_gain=w.norm_gain, center=False, normalize_atoms=True)
    for x, y in zip(
        (a.indices, a.coefficients, a.explained_variance, a.signal_energy),
        (b.indices, b.coefficients, b.explained_variance, b.signal_energy),
    ):
        assert torch.equal(x, y)


@pytest.mark.parametrize("conf", sorted(p.stem for p in RANKING_CONF.glob("*.yaml")))
def test_every_ranking_config_runs_and_validates(tiny, conf):
    """What the Hydra shell does with conf/ranking/<conf>: compose and validate it, then pass its
    options to rank_heads."""
    lm, acts, concept = tiny
    options = ranking_options(conf)
    s = rank_heads(acts, lm, concept, **options)
    assert len(s.table) == lm.layout.n_total_heads
    assert s.meta["center"] == options["center"] and s.meta["normalize_atoms"] == options["normalize_atoms"]


def test_explain_head_with_the_papers_options(tiny):
    """explain_head (full vocabulary) honours center / normalize_atoms like rank_heads."""
    from headpursuit.ranking import explain_head

    lm, acts, _ = tiny
    w = HeadWeights.from_model(lm, acts.layers)
    df = explain_head(acts, lm, 1, 2, somp_steps=4, center=True, normalize_atoms=False, fold_norm_gain=False)
    all_ids, dh = torch.arange(w.unembedding.shape[0]), lm.layout.head_dim
    W_head = w.W_O[1:2, :, 2 * dh : 3 * dh]  # head (1, 2) alone, as head 0 of a one-layer model
    _, ref_supports = paper_reference(acts.z[:, 1:2, 2:3], W_head, w.unembedding, all_ids, 4)
    assert df["token_id"].tolist() == ref_supports[0]
