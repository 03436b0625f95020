"""The ranking methods, one small function each, registered by name in :data:`METHODS`.

A method gets the validated :class:`RankingInputs`, the number of steps ``somp_steps`` and the caller's
options, and returns a :class:`MethodResult` (one value per head, heads flattened layer-major).
Every method receives every option of :func:`~headpursuit.ranking.rank_heads` (so one ranking
config serves all methods) and ignores those that are not its own. A new method is one function
and one :func:`register_method` call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from headpursuit.ranking.inputs import HeadWeights, format_tokens, validated_steps
from headpursuit.somp import (
    HeadSignals,
    SOMPResult,
    default_memory_budget,
    dictionary_rows,
    head_dictionary,
    somp_heads,
)

__all__ = [
    "RankingInputs",
    "MethodResult",
    "RankingMethod",
    "METHODS",
    "register_method",
    "seeded_random_scores",
    "concept_share",
    "concept_restricted",
    "logit_lens",
    "logit_lens_mean",
    "random_scores",
]


@dataclass(frozen=True)
class RankingInputs:
    """Everything a method needs, checked by rank_heads (shapes agree, the steps and the concept are valid).

    z: float32 (rows, layers, heads, head_dim), on the device it was captured on (the methods move
    it to the weights' device as they go). layers: the captured layer numbers.
    weights: W_O of exactly the captured layers, the unembedding and the tokenizer.
    norm_gain: the final norm's gain to fold into the dictionary, None to leave it out.
    concept_ids: sorted unique vocabulary ids (CPU); concept_mask: bool (vocab,), True at
    concept_ids, on the weights' device (it indexes what the methods compute there).
    aggregation: SOMP atom choice ("l1" or "l2"). seed: for random methods.
    n_top_tokens: how many tokens each head's ``top_tokens`` cell shows.
    center: SOMP methods remove each head's mean over rows before pursuit.
    normalize_atoms: SOMP methods use unit-norm dictionary rows (True) or the raw rows (False).
    """

    z: torch.Tensor
    layers: list[int]
    weights: HeadWeights
    norm_gain: torch.Tensor | None
    concept_ids: torch.Tensor
    concept_mask: torch.Tensor
    aggregation: str
    seed: int
    n_top_tokens: int
    center: bool = False
    normalize_atoms: bool = True

    @property
    def n_heads_total(self) -> int:
        return self.z.shape[1] * self.z.shape[2]

    @property
    def vocab(self) -> int:
        return self.weights.unembedding.shape[0]


class MethodResult(NamedTuple):
    """Per head (flattened layer-major): score, top_tokens cell, explained variance (NaN where the
    method has none); meta: what the method adds to HeadScores.meta."""

    score: torch.Tensor
    top_tokens: list[str]
    explained_variance: torch.Tensor
    meta: dict


class RankingMethod(Protocol):
    def __call__(self, inputs: RankingInputs, somp_steps: int, **opts: Any) -> MethodResult: ...


# name -> method, in the order error messages list them
METHODS: dict[str, RankingMethod] = {}


def register_method(name: str, method: RankingMethod) -> RankingMethod:
    """Make ``method`` available as ``rank_heads(..., method=name)``."""
    if name in METHODS:
        raise ValueError(f"ranking method {name!r} is already registered")
    METHODS[name] = method
    return method


def _no_explained_variance(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"), dtype=torch.float64)


def seeded_random_scores(n: int, seed: int) -> torch.Tensor:
    """float64 (n,) uniform scores from ``seed`` alone (the random control needs no model)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# SOMP over the unembedding


def _somp(inputs: RankingInputs, somp_steps: int, token_ids: torch.Tensor | None, somp_options: dict) -> SOMPResult:
    gain = inputs.norm_gain
    return somp_heads(
        inputs.z,
        inputs.weights.W_O,
        inputs.weights.unembedding,
        somp_steps,
        token_ids=token_ids,
        norm_gain=gain,
        fold_norm_gain=gain is not None,
        layers=inputs.layers,
        aggregation=inputs.aggregation,
        center=inputs.center,
        normalize_atoms=inputs.normalize_atoms,
        **somp_options,
    )


def _somp_method_result(inputs: RankingInputs, res: SOMPResult, score: torch.Tensor, steps_used: int) -> MethodResult:
    tok, n_top = inputs.weights.tokenizer, inputs.n_top_tokens
    tops = [format_tokens(tok, row) for row in res.indices[:, :n_top].cpu().tolist()]  # one transfer
    return MethodResult(score, tops, res.explained_variance[:, -1], {"somp_steps_used": steps_used, "somp": res.meta})


def concept_share(
    inputs: RankingInputs, somp_steps: int, *, lens_top: int | None = None, **somp_options: Any
) -> MethodResult:
    """SOMP over the full vocabulary for `somp_steps` steps per head; the score is the sum of the
    explained-variance gains of the steps whose atom is a concept token.

    somp_options go to :func:`~headpursuit.somp.somp_heads`; lens_top (a logit_lens option) is unused."""
    res = _somp(inputs, somp_steps, None, somp_options)
    hit = inputs.concept_mask[res.indices.clamp_min(0)] & (res.indices >= 0)
    return _somp_method_result(inputs, res, (res.gains * hit).sum(dim=1), somp_steps)


def concept_restricted(
    inputs: RankingInputs, somp_steps: int, *, lens_top: int | None = None, **somp_options: Any
) -> MethodResult:
    """SOMP with the dictionary restricted to the concept's tokens; the score is the explained
    variance after `somp_steps` steps (capped at the number of concept tokens, with a warning).

    somp_options go to :func:`~headpursuit.somp.somp_heads`; lens_top (a logit_lens option) is unused."""
    n_concept = int(inputs.concept_ids.numel())
    if somp_steps > n_concept:
        # stacklevel 3: the warning points at the caller of rank_heads
        warnings.warn(
            f"concept_restricted: somp_steps={somp_steps} > {n_concept} concept tokens; using somp_steps={n_concept}",
            stacklevel=3,
        )
        somp_steps = n_concept
    res = _somp(inputs, somp_steps, inputs.concept_ids, somp_options)
    return _somp_method_result(inputs, res, res.explained_variance[:, -1], somp_steps)


# ----------------------------------------------------------------------------------------------
# baselines


def _lens_top_tokens(
    z: torch.Tensor,
    W_O: torch.Tensor,
    D: torch.Tensor,
    lens_top: int,
    memory_budget: int | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """long (heads, rows, lens_top): per head and row, the ids of the largest entries of D c."""
    op = HeadSignals(z, W_O, torch.float32)
    n, V = z.shape[0], D.shape[0]
    budget = memory_budget if memory_budget is not None else default_memory_budget(D.device)
    # C (float32) and topk's scratch of the same size, plus the operator's own working memory
    per_head = n * V * 4 * 2 + op.bytes_per_head(V)
    hb = max(1, min(op.n_heads, budget // max(per_head, 1)))
    tops = []
    for h0 in range(0, op.n_heads, hb):
        C, _, _ = op.prepare(slice(h0, min(op.n_heads, h0 + hb)), D, chunk_size)
        tops.append(torch.topk(C, lens_top, dim=2).indices)
        del C
    return torch.cat(tops)


def _most_frequent(ids: torch.Tensor, n: int) -> list[int]:
    """The n most frequent values of ``ids`` (ties: lower id first)."""
    vals, counts = torch.unique(ids, return_counts=True)
    order = sorted(range(len(vals)), key=lambda i: (-int(counts[i]), int(vals[i])))[:n]
    return [int(vals[i]) for i in order]


def logit_lens(
    inputs: RankingInputs,
    somp_steps: int,
    *,
    lens_top: int | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    **_unused: Any,
) -> MethodResult:
    """Per row, the top ``lens_top`` tokens (by value) of ``D c`` with unit-norm atoms ``D``; the
    score is the fraction of them in the concept, averaged over rows. ``lens_top`` defaults to
    `somp_steps` (here: the top tokens per row).
    The top_tokens cell shows the most frequent top-1 tokens over the rows."""
    lens_top = validated_steps(lens_top if lens_top is not None else somp_steps, inputs.vocab, "lens_top")
    gain = inputs.norm_gain
    D, _, _ = head_dictionary(inputs.weights.unembedding, gain, None, fold_norm_gain=gain is not None)
    top = _lens_top_tokens(inputs.z, inputs.weights.W_O, D, lens_top, memory_budget, chunk_size)
    score = inputs.concept_mask[top].float().mean(dim=(1, 2))
    top1 = top[:, :, 0].cpu()
    tops = [format_tokens(inputs.weights.tokenizer, _most_frequent(row, inputs.n_top_tokens)) for row in top1]
    return MethodResult(score, tops, _no_explained_variance(inputs.n_heads_total), {"lens_top": lens_top})


def logit_lens_mean(inputs: RankingInputs, somp_steps: int, **_unused: Any) -> MethodResult:
    """The paper's logit-lens baseline: per head, the mean over rows and concept tokens of the
    logit the logit lens assigns, ``D[concept] c_h`` with the RAW unembedding rows (the logit is
    what the paper defines; ``normalize_atoms`` does not apply), the final norm's gain folded in
    when ``fold_norm_gain``. ``center`` does not apply either (a centred signal has mean logit 0);
    somp_steps is unused. The mean over rows is taken first (everything is linear), in float64. The
    top_tokens cell shows the concept tokens with the highest mean logit for the head."""
    gain = inputs.norm_gain
    rows, _ = dictionary_rows(inputs.weights.unembedding, gain, inputs.concept_ids, fold_norm_gain=gain is not None)
    Dc = rows.to(torch.float64)  # (n_concept, d)
    dev = Dc.device  # the weights' device; z may be elsewhere
    z_mean = inputs.z.to(torch.float64).mean(dim=0).to(dev)  # (L, H, dh)
    L, Hn, dh = z_mean.shape
    logits = torch.empty(L, Hn, Dc.shape[0], dtype=torch.float64, device=dev)
    for li in range(L):
        # (n_concept, H*dh) -> per head the logit of each concept token: D W_h mean(z_h)
        P = (Dc @ inputs.weights.W_O[li].to(torch.float64)).view(-1, Hn, dh)
        logits[li] = torch.einsum("chk,hk->hc", P, z_mean[li])
    logits = logits.reshape(L * Hn, -1)
    n_top = min(inputs.n_top_tokens, logits.shape[1])
    # stable descending sort: among equal logits the lower token id first
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :n_top].cpu()
    tok = inputs.weights.tokenizer
    tops = [format_tokens(tok, inputs.concept_ids[row].tolist()) for row in order]
    return MethodResult(logits.mean(dim=1), tops, _no_explained_variance(inputs.n_heads_total), {})


def random_scores(inputs: RankingInputs, somp_steps: int, **_unused: Any) -> MethodResult:
    """Seeded random scores: the ranking baseline of method "random" (not the random-head controls
    of an edit, `headpursuit.heads.random_control_draw`)."""
    n = inputs.n_heads_total
    return MethodResult(seeded_random_scores(n, inputs.seed), [""] * n, _no_explained_variance(n), {})


register_method("concept_share", concept_share)
register_method("concept_restricted", concept_restricted)
register_method("logit_lens", logit_lens)
register_method("logit_lens_mean", logit_lens_mean)
register_method("random", random_scores)
