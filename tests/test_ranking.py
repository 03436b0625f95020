"""rank_heads on a synthetic model with one planted concept head; HeadScores; explain_head."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from headpursuit.ranking import METHODS, HeadScores, explain_head, rank_heads

CONCEPT = list(range(10, 20))
TARGET = (1, 2)


class FakeTokenizer:
    name_or_path = "fake"

    def decode(self, ids, **kw):
        return "".join(f" tok{i}" for i in ids)


@pytest.fixture(scope="module")
def planted():
    """2 layers x 3 heads, head_dim 4, d_model 64, vocab 300. Head TARGET writes combinations of
    4 concept-token directions (of the gain-folded unembedding); every other head writes 4 other
    tokens."""
    g = torch.Generator().manual_seed(0)
    L, H, dh, d, V, n = 2, 3, 4, 64, 300, 24
    U = torch.randn(V, d, generator=g)
    gain = 0.5 + torch.rand(d, generator=g)
    Dg = U * gain  # the dictionary the ranking sees (gain folded)
    W = torch.zeros(L, d, H * dh)
    others = iter(range(100, 300, 4))
    for l in range(L):
        for h in range(H):
            toks = [12, 13, 15, 17] if (l, h) == TARGET else list(range(next(others), 0, -1))[:4]
            cols = Dg[toks] / Dg[toks].norm(dim=1, keepdim=True)
            W[l, :, h * dh : (h + 1) * dh] = cols.T
    z = torch.randn(n, L, H, dh, generator=g)
    weights = {"W_O": W, "unembedding": U, "norm_gain": gain, "tokenizer": FakeTokenizer()}

    class Acts:
        pass

    acts = Acts()
    acts.z, acts.layers, acts.meta = z, [0, 1], {"model": "synthetic", "positions": "test"}
    return acts, weights


@pytest.mark.parametrize("method", ["concept_share", "concept_restricted", "logit_lens"])
def test_planted_head_ranks_first(planted, method):
    acts, weights = planted
    scores = rank_heads(acts, weights, CONCEPT, method=method, somp_steps=4)
    assert scores.top(1) == [TARGET]
    t = scores.table
    assert list(t.columns) == ["layer", "head", "score", "rank", "top_tokens", "explained_variance"]
    assert t["rank"].tolist() == list(range(1, 7))
    assert scores.method == method and scores.meta["concept"] == "token_ids"
    best = t.iloc[0]
    if method == "concept_share":
        assert best["score"] == pytest.approx(1.0, abs=1e-4)  # all variance from concept atoms
        assert (t["score"].iloc[1:] < 0.05).all()
        assert set(best["top_tokens"].split(" | ")) == {"' tok12'", "' tok13'", "' tok15'", "' tok17'"}
    if method == "concept_restricted":
        assert best["explained_variance"] == pytest.approx(1.0, abs=1e-4)
        assert best["score"] == best["explained_variance"]
    if method == "logit_lens":
        assert best["score"] > 0.3 and (t["score"].iloc[1:] < 0.1).all()
        assert pd.isna(best["explained_variance"])


def test_norm_gain_folding_matters_for_the_planted_head(planted):
    acts, weights = planted
    on = rank_heads(acts, weights, CONCEPT, method="concept_share", somp_steps=4)
    off = rank_heads(acts, weights, CONCEPT, method="concept_share", somp_steps=4, fold_norm_gain=False)
    assert on.meta["fold_norm_gain"] and not off.meta["fold_norm_gain"]
    assert on.score_of(*TARGET) > off.score_of(*TARGET) - 1e-9
    assert on.score_of(*TARGET) == pytest.approx(1.0, abs=1e-4)


def test_random_is_seeded(planted):
    acts, weights = planted
    a = rank_heads(acts, weights, CONCEPT, method="random", seed=3)
    b = rank_heads(acts, weights, CONCEPT, method="random", seed=3)
    c = rank_heads(acts, weights, CONCEPT, method="random", seed=4)
    assert a.top(6) == b.top(6)
    assert a.top(6) != c.top(6)
    assert rank_heads(acts, None, CONCEPT, method="random", seed=3).top(6) == a.top(6)


def test_ties_are_deterministic(planted):
    acts, weights = planted
    z = acts.z.clone()
    z[:] = 0  # every head scores 0
    s = rank_heads(z, weights, CONCEPT, method="concept_share", somp_steps=2)
    assert s.top(6) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert (s.table["score"] == 0).all()


def test_csv_round_trip(planted, tmp_path):
    acts, weights = planted
    s = rank_heads(acts, weights, CONCEPT, method="concept_share", somp_steps=4)
    p = s.to_csv(tmp_path / "sub" / "head_scores.csv")
    back = HeadScores.from_csv(p)
    assert back.method == "concept_share"
    assert back.meta["somp_steps"] == 4
    pd.testing.assert_frame_equal(back.table, s.table, check_dtype=False)
    assert back.top(3) == s.top(3)
    ll = rank_heads(acts, weights, CONCEPT, method="logit_lens", somp_steps=3)
    back = HeadScores.from_csv(ll.to_csv(tmp_path / "ll.csv"))
    assert back.table["explained_variance"].isna().all()
    assert back.top(6) == ll.top(6)


def test_explain_head(planted):
    acts, weights = planted
    df = explain_head(acts, weights, TARGET[0], TARGET[1], somp_steps=6)
    assert list(df.columns) == ["step", "token_id", "token", "explained_variance", "gain"]
    assert set(df["token_id"].iloc[:4]) == {12, 13, 15, 17}
    assert df["explained_variance"].iloc[3] == pytest.approx(1.0, abs=1e-4)
    assert len(df) == 4  # residual exhausted after the 4 planted atoms
    assert df["token"].iloc[0].startswith(" tok")
    with pytest.raises(ValueError, match="not captured"):
        explain_head(acts, weights, 7, 0)
    with pytest.raises(ValueError, match="out of range"):
        explain_head(acts, weights, 0, 3)


def test_errors(planted):
    acts, weights = planted
    with pytest.raises(ValueError, match="unknown ranking method"):
        rank_heads(acts, weights, CONCEPT, method="best")
    with pytest.raises(ValueError, match="somp_steps must be >= 1"):
        rank_heads(acts, weights, CONCEPT, somp_steps=0)
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        rank_heads(acts, weights, CONCEPT, somp_steps=301)
    with pytest.raises(ValueError, match="empty"):
        rank_heads(acts.z[:0], weights, CONCEPT)
    with pytest.raises(ValueError, match="heads x head_dim"):
        rank_heads(acts.z[:, :, :, :3], weights, CONCEPT)
    bad = dict(weights, unembedding=weights["unembedding"][:, :20])
    with pytest.raises(ValueError, match="d_model"):
        rank_heads(acts, bad, CONCEPT)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        rank_heads(acts, weights, [5, 999])
    with pytest.raises(ValueError, match="W_O"):
        rank_heads(acts, {"unembedding": weights["unembedding"]}, CONCEPT)
    assert set(METHODS) == {"concept_share", "concept_restricted", "logit_lens", "logit_lens_mean", "random"}


def test_concept_restricted_caps_k(planted):
    acts, weights = planted
    with pytest.warns(UserWarning, match="concept tokens"):
        s = rank_heads(acts, weights, [12, 13, 15], method="concept_restricted", somp_steps=5)
    assert s.meta["somp_steps_used"] == 3


def test_loaded_model_path():
    """rank_heads/explain_head with a real LoadedModel (tiny random Llama + SmolLM2 tokenizer)."""
    from headpursuit.capture import CaptureSample, capture_heads
    from headpursuit.concepts import load_concept
    from headpursuit.models.tiny import tiny_text_model

    lm = tiny_text_model("llama", seed=0)
    acts = capture_heads(
        lm, [CaptureSample("Q: Where is Paris?\nA:", answer=" France")], positions="answer", progress=False
    )
    concept = load_concept("countries", lm.tokenizer)
    s = rank_heads(acts, lm, concept, method="concept_share", somp_steps=3)
    assert len(s.table) == lm.layout.n_total_heads
    assert s.meta["concept"] == "countries"
    df = explain_head(acts, lm, 0, 1, somp_steps=3)
    assert len(df) == 3 and df["explained_variance"].is_monotonic_increasing
    s2 = rank_heads(acts, lm, "countries", method="logit_lens", somp_steps=5)
    assert s2.table["score"].between(0, 1).all()
