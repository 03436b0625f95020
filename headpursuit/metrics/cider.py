"""CIDEr-D (Vedantam, Zitnick & Parikh, CVPR 2015), the captioning metric the paper reports.

The computation follows ``pycocoevalcap/cider/cider_scorer.py`` (the COCO caption evaluation code,
which implements the CIDEr-D variant), reimplemented here without its Java tokeniser:

* n-grams of orders 1..4 with raw counts as term frequencies;
* idf from the *references*: the document frequency of an n-gram is the number of images among
  whose reference captions it occurs (at least once, in any of them); weight = tf * (log N -
  log max(1, df)) with N the number of images, so an n-gram that no reference contains gets the
  largest weight, log N, and one in every image's references weight 0;
* per order, the clipped cosine sum_g min(c_g, r_g) * r_g / (|c| |r|) between the candidate's and
  one reference's tf-idf vectors (0 when either vector is zero), times the Gaussian length penalty
  exp(-delta^2 / (2 * 6^2)). As in pycocoevalcap, a sentence's "length" is its number of bigrams,
  so delta is the difference in token counts except when one side is empty;
* the mean over the four orders, averaged over the image's references, times 10; the corpus score
  is the mean over images.

Scores depend on the corpus (idf), so compute them over a whole evaluation set, never per item.

Tokenisation approximates the PTB tokeniser + punctuation removal that pycocoevalcap applies
first (which needs Java): lowercase; the clitics ``n't`` and ``'s 're 've 'll 'd 'm`` become
tokens of their own (``"don't" -> "do n't"``, ``"dog's" -> "dog 's"``); words are runs of letters
and digits, joined by inner hyphens (``"black-and-white"`` stays one token); every other
character (punctuation, symbols) is dropped. Numbers with separators (``"3.5"``) split into digits
groups, where PTB keeps them whole; the difference only matters for such rare tokens.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["CIDER_MAX_N", "CIDER_SIGMA", "caption_tokens", "cider_d"]

CIDER_MAX_N = 4  # n-gram orders 1..4
CIDER_SIGMA = 6.0  # standard deviation of the Gaussian length penalty
_SCALE = 10.0  # CIDEr-D's final scale factor

_TOKEN = re.compile(
    r"[^\W_]+?(?=n't\b)"  # "do" of "don't" (the clitic is the next alternative)
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"
    r"|[^\W_]+(?:-[^\W_]+)*"  # words: letters/digits, hyphenated compounds kept whole
)

NGram = tuple[str, ...]


def caption_tokens(text: str | None) -> list[str]:
    """Lower-cased PTB-like tokens of a caption, punctuation removed (see the module docstring)."""
    if not text:
        return []
    return _TOKEN.findall(str(text).lower().replace("\u2019", "'"))


def _ngram_counts(tokens: Sequence[str]) -> Counter[NGram]:
    counts: Counter[NGram] = Counter()
    for k in range(1, CIDER_MAX_N + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i : i + k])] += 1
    return counts


class _TfIdf:
    """One sentence's tf-idf vectors, split by n-gram order, with their norms and penalty length."""

    def __init__(self, counts: Counter[NGram], doc_freq: Counter[NGram], log_images: float):
        self.by_order: list[dict[NGram, float]] = [{} for _ in range(CIDER_MAX_N)]
        for gram, tf in counts.items():
            self.by_order[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, doc_freq[gram])))
        self.norms = [math.sqrt(sum(w * w for w in vec.values())) for vec in self.by_order]
        # pycocoevalcap's length: the number of bigrams (== tokens - 1 for a non-empty sentence).
        self.length = sum(c for g, c in counts.items() if len(g) == 2)


def _similarity(cand: _TfIdf, ref: _TfIdf, sigma: float) -> float:
    """Mean over n-gram orders of the clipped, length-penalised cosine of candidate and reference."""
    delta = cand.length - ref.length
    penalty = math.exp(-(delta**2) / (2 * sigma**2))
    total = 0.0
    for k in range(CIDER_MAX_N):
        c_vec, r_vec = cand.by_order[k], ref.by_order[k]
        dot = sum(min(w, r_vec[g]) * r_vec[g] for g, w in c_vec.items() if g in r_vec)
        if cand.norms[k] > 0 and ref.norms[k] > 0:
            total += dot / (cand.norms[k] * ref.norms[k]) * penalty
    return total / CIDER_MAX_N


def _reference_lists(references: Sequence[Sequence[str]]) -> list[list[str]]:
    refs = []
    for i, r in enumerate(references):
        r = [r] if isinstance(r, str) else [x for x in r if isinstance(x, str)]
        if not r:
            raise ValueError(f"cider_d: caption {i} has no reference caption")
        refs.append(r)
    return refs


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """CIDEr-D of one candidate caption per image against that image's reference captions.

    Returns ``{"cider": corpus score (mean over images), "cider_per_item": [score per image]}``
    on pycocoevalcap's scale (x10; about 0-10, 1.0 is a good COCO caption). NaN and ``[]`` when
    there are no captions. An image without any reference raises ValueError.
    """
    if len(candidates) != len(references):
        raise ValueError(f"cider_d: {len(candidates)} captions but {len(references)} reference lists")
    if not candidates:
        return {"cider": math.nan, "cider_per_item": []}
    ref_counts = [[_ngram_counts(caption_tokens(r)) for r in refs] for refs in _reference_lists(references)]
    doc_freq: Counter[NGram] = Counter()
    for image_refs in ref_counts:
        doc_freq.update({gram for counts in image_refs for gram in counts})
    log_images = math.log(len(ref_counts))
    per_item = []
    for cand, image_refs in zip(candidates, ref_counts):
        cand_vec = _TfIdf(_ngram_counts(caption_tokens(cand if isinstance(cand, str) else "")), doc_freq, log_images)
        sims = [_similarity(cand_vec, _TfIdf(r, doc_freq, log_images), CIDER_SIGMA) for r in image_refs]
        per_item.append(_SCALE * sum(sims) / len(sims))
    return {"cider": sum(per_item) / len(per_item), "cider_per_item": per_item}
