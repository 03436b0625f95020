"""Metrics: text (alias accuracy, concept rates), toxicity (scorers + RTP metrics), fluency."""

from headpursuit.metrics.fluency import perplexity
from headpursuit.metrics.text import (
    ConceptRate,
    accuracy,
    alias_match,
    concept_rate,
    count_concept_words,
    empty_rate,
    normalize_answer,
)
from headpursuit.metrics.toxicity import (
    DEFAULT_THRESHOLD,
    DetoxifyScorer,
    ProfanityCheckScorer,
    ToxicityScorer,
    expected_max_toxicity,
    get_scorer,
    known_scorers,
    mean_toxicity,
    register_scorer,
    toxic_fraction,
    toxicity_metrics,
    toxicity_probability,
)

__all__ = [
    "ConceptRate",
    "DEFAULT_THRESHOLD",
    "DetoxifyScorer",
    "ProfanityCheckScorer",
    "ToxicityScorer",
    "accuracy",
    "alias_match",
    "concept_rate",
    "count_concept_words",
    "empty_rate",
    "expected_max_toxicity",
    "get_scorer",
    "known_scorers",
    "mean_toxicity",
    "normalize_answer",
    "perplexity",
    "register_scorer",
    "toxic_fraction",
    "toxicity_metrics",
    "toxicity_probability",
]
