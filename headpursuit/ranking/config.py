"""`RankingConfig`: the options of a head ranking, with their only defaults.

    scores = rank_heads(acts, lm, concept, **asdict(RankingConfig(method="concept_restricted")))

`rank_heads` takes the same options as keyword arguments, defaulting to these fields; a run
config's ``ranking`` node holds the same keys (``conf/ranking/*.yaml`` set what differs).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RankingConfig"]


@dataclass(kw_only=True)
class RankingConfig:
    """How heads are scored for a concept (see `headpursuit.ranking` for the methods)."""

    #: a registered method (`METHODS`): concept_share | concept_restricted | logit_lens |
    #: logit_lens_mean | random
    method: str = "concept_share"
    #: SOMP steps (concept_share, concept_restricted: capped at the number of concept tokens); for
    #: logit_lens the top tokens per sample; unused by logit_lens_mean and random
    somp_steps: int = 10
    #: SOMP atom choice: l1 (sum_i |<R_i, D_j>|, the paper) | l2
    aggregation: str = "l1"
    #: fold the final norm's gain into the unembedding (D * gamma)
    fold_norm_gain: bool = True
    #: SOMP methods: remove each head's mean over rows before pursuit (likely the paper: true)
    center: bool = False
    #: SOMP methods: unit-norm dictionary rows; false: the raw rows (likely the paper)
    normalize_atoms: bool = True
