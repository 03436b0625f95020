"""Text metrics: SQuAD-style answer normalisation, alias matching, accuracy, concept-word rates.

`normalize_answer` follows the SQuAD evaluation script (lowercase, drop punctuation, drop the
articles a/an/the, collapse whitespace) with three documented refinements that make alias matching
robust for short free-form generations:

* accents are folded (``"Türkiye" -> "turkiye"``, ``"São Tomé" -> "sao tome"``);
* a possessive ``'s`` is dropped (``"Einstein's equation" -> "einstein equation"``);
* apostrophes and full stops are *deleted* (``"U.S." -> "us"``, ``"d'Ivoire" -> "divoire"``) while
  every other punctuation character (any Unicode ``P*`` category, plus symbols such as ``+`` or
  ``=``) becomes a *space* (``"Guinea-Bissau" -> "guinea bissau"``, ``"Tokyo,Japan" -> "tokyo
  japan"``), so words glued by punctuation stay separate words;
* whitespace is collapsed and stripped.

The same function is applied to predictions and aliases, so both sides always agree.

`official_normalize`, `token_f1` and `exact_match_official` are the TriviaQA v1.0 evaluation
script's own definitions (``evaluation/triviaqa_evaluation.py``, itself extended from the SQuAD v1.1
script), reproduced unchanged so that F1 is "the standard TriviaQA F1" of the paper.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "normalize_answer",
    "alias_match",
    "accuracy",
    "empty_rate",
    "count_concept_words",
    "concept_rate",
    "answer_metrics",
    "answer_items",
    "mean_of_items",
    "ConceptRate",
    "official_normalize",
    "token_f1",
    "exact_match_official",
    "mean_token_f1",
    "exact_class_match",
    "exact_match_rate",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019\u02bc]s\b")
_DELETE = {"'", "\u2019", "\u2018", "\u02bc", "`", "."}


def _fold_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _strip_punctuation(text: str) -> str:
    out = []
    for ch in text:
        if ch in _DELETE:
            continue
        cat = unicodedata.category(ch)
        if cat.startswith("P") or cat.startswith("S"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_answer(text: str | None) -> str:
    """Lowercase, fold accents, strip punctuation and articles, collapse whitespace."""
    if not text:
        return ""
    text = _fold_accents(str(text).lower())
    text = _POSSESSIVE.sub("", text)
    text = _strip_punctuation(text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def alias_match(prediction: str | None, aliases: Iterable[str] | str) -> bool:
    """True when some normalised alias occurs as a whole-word span of the normalised prediction.

    ``alias_match("It is the U.S.A.!", ["USA"])`` is True; ``alias_match("Russian", ["Russia"])``
    is False (whole words only); an alias that normalises to nothing never matches.
    """
    if isinstance(aliases, str):
        aliases = [aliases]
    pred = normalize_answer(prediction)
    if not pred:
        return False
    padded = f" {pred} "
    for alias in aliases:
        norm = normalize_answer(alias)
        if norm and f" {norm} " in padded:
            return True
    return False


def accuracy(predictions: Sequence[str], references: Sequence[Iterable[str]]) -> float:
    """Fraction of predictions that `alias_match` their reference aliases (NaN when empty)."""
    if len(predictions) != len(references):
        raise ValueError(f"accuracy: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        return math.nan
    hits = sum(alias_match(p, r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def empty_rate(texts: Sequence[str]) -> float:
    """Fraction of texts that are empty or whitespace only (NaN when there are no texts)."""
    if not texts:
        return math.nan
    return sum(1 for t in texts if not (t or "").strip()) / len(texts)


def _word_pattern(words: Iterable[str]) -> re.Pattern | None:
    words = sorted({w.strip() for w in words if w and w.strip()}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def count_concept_words(text: str, concept: Any) -> int:
    """Whole-word, case-insensitive concept-word matches in `text`.

    `concept` is a `headpursuit.concepts.Concept` (its own ``count_in_text`` is used) or any
    iterable of words/phrases.
    """
    if hasattr(concept, "count_in_text"):
        return int(concept.count_in_text(text or ""))
    pattern = _word_pattern(concept)
    if pattern is None or not text:
        return 0
    return len(pattern.findall(text))


class ConceptRate(NamedTuple):
    """`rate`: fraction of texts with at least one concept word; `mean_count`: mean matches."""

    rate: float
    mean_count: float


def concept_rate(texts: Sequence[str], concept: Any) -> ConceptRate:
    """Concept-word frequency over texts (a Concept or a word list); NaNs when there are no texts."""
    if not texts:
        return ConceptRate(math.nan, math.nan)
    if not hasattr(concept, "count_in_text"):
        pattern = _word_pattern(concept)
        counts = [len(pattern.findall(t or "")) if pattern is not None else 0 for t in texts]
    else:
        counts = [count_concept_words(t, concept) for t in texts]
    return ConceptRate(
        rate=sum(c > 0 for c in counts) / len(counts),
        mean_count=sum(counts) / len(counts),
    )


def answer_items(
    predictions: Sequence[str], references: Sequence[Sequence[str]], concept: Any
) -> dict[str, list[float]]:
    """`answer_metrics` per item: {metric: one value per prediction}; each metric of
    `answer_metrics` is the mean of its items (`mean_of_items`), which is what bootstrap intervals
    resample (`headpursuit.stats`)."""
    if len(predictions) != len(references):
        raise ValueError(f"answer_items: {len(predictions)} predictions but {len(references)} reference lists")
    counts = [count_concept_words(p, concept) for p in predictions]
    return {
        "accuracy": [float(alias_match(p, r)) for p, r in zip(predictions, references)],
        "f1": [float(token_f1(p, r)) for p, r in zip(predictions, references)],
        "concept_rate": [float(c > 0) for c in counts],
        "concept_count": [float(c) for c in counts],
        "empty_rate": [float(not (p or "").strip()) for p in predictions],
    }


def mean_of_items(items: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """{metric: the mean of its item values} (NaN without items)."""
    return {m: (sum(v) / len(v) if len(v) else math.nan) for m, v in items.items()}


def answer_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]], concept: Any) -> dict[str, float]:
    """The per-group metrics of a task whose answers are words (QA, image classification): the means
    of `answer_items`.

    `accuracy` is our alias match (any accepted answer contained in the prediction, after
    `normalize_answer`); `f1` is the official TriviaQA token F1 (`token_f1`, max over aliases), the
    paper's QA metric.
    """
    return mean_of_items(answer_items(predictions, references, concept))


# ------------------------------------------------------------------------------------------
# The official TriviaQA / SQuAD answer metrics (token F1, exact match)
# ------------------------------------------------------------------------------------------

# TriviaQA's script adds the typographic quotes and the acute accent to ASCII punctuation.
_OFFICIAL_PUNCTUATION = frozenset(string.punctuation + "\u2018\u2019\u00b4`")
_OFFICIAL_ARTICLES = re.compile(r"\b(a|an|the)\b")


def official_normalize(text: str | None) -> str:
    """The TriviaQA evaluation script's ``normalize_answer``, exactly.

    Underscores -> spaces, lowercase, every ASCII punctuation character and the quotes U+2018,
    U+2019 and the acute accent U+00B4 -> a space, the articles a/an/the dropped, whitespace
    collapsed. Unlike `normalize_answer` there is no accent folding and no possessive rule
    (``"U.S." -> "u s"``, ``"Einstein's" -> "einstein s"``). The SQuAD v1.1 script differs only in
    *deleting* punctuation instead of replacing it by a space (and in keeping underscores);
    TriviaQA's variant is the one used here because the paper reports TriviaQA F1.
    """
    if not text:
        return ""
    text = str(text).replace("_", " ").lower()
    text = "".join(" " if ch in _OFFICIAL_PUNCTUATION else ch for ch in text)
    text = _OFFICIAL_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_answer_list(ground_truths: Iterable[str] | str) -> list[str]:
    return [ground_truths] if isinstance(ground_truths, str) else list(ground_truths)


def _f1_one(prediction_tokens: list[str], truth_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str | None, ground_truths: Iterable[str] | str) -> float:
    """Official TriviaQA/SQuAD token F1, maximised over the ground truths (aliases).

    Both sides are `official_normalize`-d and split on whitespace; precision and recall count the
    tokens of the multiset (bag) intersection. An empty prediction, no overlap, or no ground truth
    at all scores 0.0 (the official script would fail on an empty alias list).
    """
    prediction_tokens = official_normalize(prediction).split()
    if not prediction_tokens:
        return 0.0
    return max(
        (_f1_one(prediction_tokens, official_normalize(t).split()) for t in _as_answer_list(ground_truths)), default=0.0
    )


def exact_match_official(prediction: str | None, ground_truths: Iterable[str] | str) -> float:
    """Official TriviaQA/SQuAD exact match: 1.0 when the `official_normalize`-d prediction equals
    some normalised ground truth, else 0.0 (also for an empty alias list)."""
    pred = official_normalize(prediction)
    return float(any(pred == official_normalize(t) for t in _as_answer_list(ground_truths)))


def _mean_score(
    name: str, score: Callable[[str, Any], float], predictions: Sequence[str], references: Sequence[Any]
) -> float:
    """Mean of ``score(prediction, references)`` over paired items (NaN when there are none)."""
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        return math.nan
    return sum(float(score(p, r)) for p, r in zip(predictions, references)) / len(predictions)


def mean_token_f1(predictions: Sequence[str], references: Sequence[Iterable[str]]) -> float:
    """Mean `token_f1` over questions (NaN when empty), as the official script's F1 / 100."""
    return _mean_score("mean_token_f1", token_f1, predictions, references)


def exact_class_match(prediction: str | None, aliases: Iterable[str] | str) -> bool:
    """The paper's classification exact match: the whole answer, without surrounding blanks and one
    trailing full stop, normalised (`normalize_answer`: case, punctuation, articles), equals a
    normalised alias (class name, its display form, configured aliases). ``"Seven."`` matches ``7``
    only if ``seven`` is an alias; ``"It is a 7"`` never matches (`alias_match` would)."""
    if isinstance(aliases, str):
        aliases = [aliases]
    text = (prediction or "").strip()
    if text.endswith("."):
        text = text[:-1]
    pred = normalize_answer(text)
    return bool(pred) and any(pred == normalize_answer(a) for a in aliases)


def exact_match_rate(predictions: Sequence[str], references: Sequence[Iterable[str]]) -> float:
    """Fraction of predictions that `exact_class_match` their aliases (NaN when there are none)."""
    return _mean_score("exact_match_rate", exact_class_match, predictions, references)
