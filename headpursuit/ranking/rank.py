"""rank_heads: score every captured head for a concept with one registered method; explain_head."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from headpursuit.concepts import Concept
from headpursuit.ranking.config import RankingConfig
from headpursuit.ranking.inputs import (
    ConceptSpec,
    WeightsSource,
    captured_z,
    concept_token_ids,
    decode_tokens,
    head_weights,
    validated_steps,
)
from headpursuit.ranking.methods import METHODS, RankingInputs, seeded_random_scores
from headpursuit.ranking.scores import HeadScores, score_table
from headpursuit.somp import dictionary_rows, head_dictionary, somp

if TYPE_CHECKING:
    from headpursuit.capture import HeadActivations

__all__ = ["rank_heads", "explain_head"]


def _random_without_model(z: torch.Tensor, layers: list[int], concept: ConceptSpec | None, seed: int) -> HeadScores:
    """The random control when no model is given: it needs only the number of heads."""
    n, L, Hn, _ = z.shape
    nan = torch.full((L * Hn,), float("nan"), dtype=torch.float64)
    meta = {
        "method": "random",
        "seed": seed,
        "n_rows": n,
        "layers": layers,
        "n_heads": Hn,
        "concept": concept.name if isinstance(concept, Concept) else None,
    }
    table = score_table(layers, Hn, seeded_random_scores(L * Hn, seed), [""] * (L * Hn), nan)
    return HeadScores(table, "random", meta)


def rank_heads(
    activations: HeadActivations | torch.Tensor,
    lm_or_weights: WeightsSource | None,
    concept: ConceptSpec,
    method: str = RankingConfig.method,
    somp_steps: int = RankingConfig.somp_steps,
    *,
    seed: int = 0,
    fold_norm_gain: bool = RankingConfig.fold_norm_gain,
    center: bool = RankingConfig.center,
    normalize_atoms: bool = RankingConfig.normalize_atoms,
    aggregation: str = RankingConfig.aggregation,
    top_tokens: int = 5,
    lens_top: int | None = None,
    **somp_kwargs: Any,
) -> HeadScores:
    """Score every captured head for ``concept`` with ``METHODS[method]`` (see headpursuit.ranking).

    activations: HeadActivations (or a z tensor (rows, layers, heads, head_dim)).
    lm_or_weights: a LoadedModel, a HeadWeights, or a dict with the keys ``W_O`` (layers, d_model,
        heads*head_dim) (all model layers or exactly the captured ones), ``unembedding`` (vocab,
        d_model), optional ``norm_gain`` (d_model,), ``tokenizer`` and ``name``. May be None for
        ``method="random"``.
    concept: a Concept, token ids, or a concept name / word list (needs a tokenizer).
    method, somp_steps, fold_norm_gain, center, normalize_atoms, aggregation: the fields of
        `RankingConfig`, with its defaults (``**asdict(config)`` passes one).
    somp_steps: SOMP steps (concept_share, concept_restricted) or the default ``lens_top`` (logit_lens).
    fold_norm_gain: fold the final norm's gain into the unembedding (D * gamma) before normalising.
    center: (SOMP methods) remove each head's mean over rows before pursuit; the explained variance
        is then that of the centred signal, 1 - ||R||^2 / ||H - mean||^2.
    normalize_atoms: (SOMP methods) unit-norm dictionary rows (default) or the raw rows, whose norms
        then weight the atom choice argmax_j sum_i |<R_i, D_j>|.
    The paper's scoring is ``method="concept_restricted", somp_steps=50, center=True, normalize_atoms=False,
    fold_norm_gain=False`` (conf/ranking/paper.yaml; docs/protocol.md says which choice is whose).
    aggregation: SOMP atom choice, "l1" (default) or "l2". top_tokens: how many selected atoms to
    decode into the ``top_tokens`` column. somp_kwargs go to :func:`somp_heads` (tol,
    memory_budget, chunk_size, variant, ...).
    """
    if "k" in somp_kwargs:  # it would reach somp_heads as an unknown option
        raise TypeError("rank_heads: the keyword k is now somp_steps (the number of SOMP steps)")
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    z, layers, ameta = captured_z(activations)
    n, L, Hn, dh = z.shape
    if method == "random" and lm_or_weights is None:
        return _random_without_model(z, layers, concept, seed)
    w = head_weights(lm_or_weights, layers)
    vocab, d_model = w.unembedding.shape
    if w.W_O.shape[1] != d_model:
        raise ValueError(
            f"W_O has d_model={w.W_O.shape[1]} but the unembedding has d_model={d_model}; they must come from the same model"
        )
    if w.W_O.shape[2] != Hn * dh:
        raise ValueError(
            f"W_O has {w.W_O.shape[2]} input columns but the activations have {Hn} heads x head_dim {dh} = {Hn * dh}; "
            "capture and weights must come from the same model"
        )
    somp_steps = validated_steps(somp_steps, vocab)
    ids, cname = concept_token_ids(concept, w.tokenizer, vocab)
    cmask = torch.zeros(vocab, dtype=torch.bool, device=w.device)
    cmask[ids.to(w.device)] = True
    gain = w.norm_gain if fold_norm_gain else None
    meta: dict[str, Any] = {
        "method": method,
        "somp_steps": somp_steps,
        "aggregation": aggregation,
        "fold_norm_gain": bool(fold_norm_gain and gain is not None),
        "center": bool(center),
        "normalize_atoms": bool(normalize_atoms),
        "concept": cname,
        "n_concept_tokens": int(ids.numel()),
        "n_rows": n,
        "layers": layers,
        "n_heads": Hn,
        "model": ameta.get("model", w.name),
        "positions": ameta.get("positions"),
        "seed": seed,
        "vocab": vocab,
        "device": str(w.device),
    }
    inputs = RankingInputs(
        z=z,
        layers=layers,
        weights=w,
        norm_gain=gain,
        concept_ids=ids,
        concept_mask=cmask,
        aggregation=aggregation,
        seed=seed,
        n_top_tokens=max(0, int(top_tokens)),
        center=bool(center),
        normalize_atoms=bool(normalize_atoms),
    )
    result = METHODS[method](inputs, somp_steps, lens_top=lens_top, **somp_kwargs)
    meta.update(result.meta)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    table = score_table(layers, Hn, result.score, result.top_tokens, result.explained_variance)
    return HeadScores(table, method, meta)


def explain_head(
    activations: HeadActivations | torch.Tensor,
    lm_or_weights: WeightsSource,
    layer: int,
    head: int,
    somp_steps: int = RankingConfig.somp_steps,
    *,
    fold_norm_gain: bool = RankingConfig.fold_norm_gain,
    aggregation: str = RankingConfig.aggregation,
    center: bool = RankingConfig.center,
    normalize_atoms: bool = RankingConfig.normalize_atoms,
) -> pd.DataFrame:
    """The tokens one head writes over the captured rows: full-vocabulary SOMP for `somp_steps`
    steps (``center`` / ``normalize_atoms`` as in :func:`rank_heads`).

    Returns a DataFrame with step (1..somp_steps), token_id, token, explained_variance, gain.
    """
    z, layers, _ = captured_z(activations)
    if layer not in layers:
        raise ValueError(f"layer {layer} was not captured; captured layers: {layers}")
    Hn, dh = z.shape[2], z.shape[3]
    if not (0 <= int(head) < Hn):
        raise ValueError(f"head {head} out of range: the model has {Hn} heads per layer")
    w = head_weights(lm_or_weights, [layer])
    vocab = w.unembedding.shape[0]
    k = validated_steps(somp_steps, vocab)
    if w.W_O.shape[2] != Hn * dh:
        raise ValueError(f"W_O has {w.W_O.shape[2]} columns but the activations have {Hn}x{dh}")
    Wh = w.W_O[0][:, head * dh : (head + 1) * dh]  # (d, dh)
    signal = z[:, layers.index(layer), head].to(Wh.device) @ Wh.T  # (n, d), on the weights' device
    gain = w.norm_gain if fold_norm_gain else None
    D, usable, _ = head_dictionary(w.unembedding, gain, None, fold_norm_gain=gain is not None)
    if not normalize_atoms:
        D, _ = dictionary_rows(w.unembedding, gain, None, fold_norm_gain=gain is not None)
    res = somp(signal, D, k, aggregation=aggregation, atom_mask=usable, center=center, normalize_atoms=normalize_atoms)
    idx = res.indices.tolist()
    ev = res.explained_variance.tolist()
    gains = res.gains.tolist()
    rows = []
    for t in range(k):
        if idx[t] < 0:
            break
        rows.append(
            {
                "step": t + 1,
                "token_id": idx[t],
                "token": decode_tokens(w.tokenizer, [idx[t]])[0],
                "explained_variance": ev[t],
                "gain": gains[t],
            }
        )
    return pd.DataFrame(rows, columns=["step", "token_id", "token", "explained_variance", "gain"])
