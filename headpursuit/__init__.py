"""Head Pursuit: find the attention heads that write a concept, and steer a model by rescaling them.

import headpursuit as hp
lm = hp.load_model("smollm2")
concept = hp.load_concept("countries", lm.tokenizer)
acts = hp.capture_heads(lm, samples, positions="answer_concept", concept_token_ids=concept.token_ids)
scores = hp.rank_heads(acts, lm, concept, method="concept_share", somp_steps=10)
with hp.scale_heads(lm, {h: -1.0 for h in scores.top(6)}):
    ...
effects = hp.head_effects(lm, {"concept": samples, "control": other}, alpha=-1.0)  # causal check
"""

from headpursuit._version import __version__
from headpursuit.capture import CaptureSample, HeadActivations, capture_heads
from headpursuit.concepts import Concept, load_concept
from headpursuit.determinism import deterministic, set_deterministic
from headpursuit.effects import HeadEffects, answer_logprob, head_effects
from headpursuit.intervention import scale_heads, uniform_scales
from headpursuit.models import AttentionLayout, LoadedModel, load_model, wrap_model
from headpursuit.ranking import HeadScores, explain_head, rank_heads
from headpursuit.somp import SOMPResult, somp, somp_heads, somp_reference

__all__ = [
    "__version__",
    "deterministic",
    "set_deterministic",
    "AttentionLayout",
    "LoadedModel",
    "load_model",
    "wrap_model",
    "CaptureSample",
    "HeadActivations",
    "capture_heads",
    "scale_heads",
    "uniform_scales",
    "SOMPResult",
    "somp",
    "somp_heads",
    "somp_reference",
    "Concept",
    "load_concept",
    "HeadScores",
    "explain_head",
    "rank_heads",
    "HeadEffects",
    "answer_logprob",
    "head_effects",
]
