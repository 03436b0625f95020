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
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Iterable, NamedTuple, Sequence

__all__ = [
    "normalize_answer",
    "alias_match",
    "accuracy",
    "empty_rate",
    "count_concept_words",
    "concept_rate",
    "answer_metrics",
    "ConceptRate",
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
        raise ValueError(
            f"accuracy: {len(predictions)} predictions but {len(references)} reference lists"
        )
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


def answer_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]], concept: Any) -> dict[str, float]:
    """The per-group metrics of a task whose answers are words (QA, image classification)."""
    cr = concept_rate(predictions, concept)
    return {
        "accuracy": float(accuracy(predictions, references)),
        "concept_rate": float(cr.rate),
        "concept_count": float(cr.mean_count),
        "empty_rate": float(empty_rate(predictions)),
    }
