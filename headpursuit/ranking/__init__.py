"""Rank attention heads by how much a concept explains what they write.

    scores = rank_heads(acts, lm, concept, method="concept_share", somp_steps=10)
    scores.table          # layer, head, score, rank (1 = best), top_tokens, explained_variance
    scores.top(6)         # [(layer, head), ...]

Methods (the SOMP ranking of Head Pursuit, Basile et al., NeurIPS 2025, arXiv:2510.21518, and
baselines), registered by name in :data:`METHODS` (``methods.py``; add one with
:func:`register_method`):

* ``concept_share`` -- SOMP over the full vocabulary for ``somp_steps`` steps per head; the score is
  the sum of the explained-variance gains of the steps whose atom is a concept token.
* ``concept_restricted`` -- SOMP with the dictionary restricted to the concept's tokens; the score
  is the explained variance after ``somp_steps`` steps (capped at the number of concept tokens).
* ``logit_lens`` -- per row, the top ``lens_top`` tokens (by value) of ``D c`` with unit-norm atoms
  ``D``; the score is the fraction of them in the concept, averaged over rows. ``lens_top``
  defaults to ``somp_steps``.
* ``logit_lens_mean`` -- the paper's logit-lens baseline: per head, the mean over rows and concept
  tokens of the logit ``D[concept] c`` (raw unembedding rows).
* ``random`` -- seeded random scores (``random_scores``: a ranking baseline, not the random-head
  controls of an edit).

Options of the SOMP methods: ``center`` (remove each head's mean over rows before pursuit),
``normalize_atoms`` (unit-norm or raw dictionary rows), ``fold_norm_gain`` (fold the final norm's
gain into the unembedding). The paper's scoring is ``method="concept_restricted", somp_steps=50,
center=True, normalize_atoms=False, fold_norm_gain=False`` (``conf/ranking/paper.yaml``); see
docs/protocol.md ("Ranking") for which choice is the paper's and which is ours.

Ties are broken deterministically: higher score first, then lower layer, then lower head.

Modules: ``inputs`` (HeadWeights and the checks of what a ranking reads), ``methods`` (the
registry), ``scores`` (HeadScores), ``rank`` (rank_heads, explain_head), ``config``
(RankingConfig: the options and their defaults).
"""

from headpursuit.ranking.config import RankingConfig
from headpursuit.ranking.inputs import HeadWeights
from headpursuit.ranking.methods import METHODS, MethodResult, RankingInputs, RankingMethod, register_method
from headpursuit.ranking.rank import explain_head, rank_heads
from headpursuit.ranking.scores import COLUMNS, HeadScores

__all__ = [
    "HeadScores",
    "HeadWeights",
    "RankingConfig",
    "rank_heads",
    "explain_head",
    "METHODS",
    "register_method",
    "RankingInputs",
    "MethodResult",
    "RankingMethod",
    "COLUMNS",
]
