"""Caption quality against reference captions: CIDEr-D (the paper's metric) and `sacrebleu` (BLEU, chrF).

Metric choice: `sacrebleu` (PyPI ``sacrebleu>=2.4``) is maintained, pure Python, works offline and
prints a signature of every setting (tokeniser, smoothing, version) that we store with the
results, so numbers are reproducible and comparable. CIDEr (pycocoevalcap) is the captioning
community's usual metric, but its package is unmaintained since 2020 and its standard tokeniser
needs Java; BLEU-4 with several references is the other standard caption metric, and chrF
(character n-gram F-score) is robust for the short, noisy captions of small models.
CIDEr-D itself, the paper's caption metric, is `headpursuit.metrics.cider.cider_d` (a reimplementation
of pycocoevalcap's scorer with a Java-free tokeniser).

* ``cider``: CIDEr-D (pycocoevalcap's scale, x10) of the group's captions against their references,
  `headpursuit.metrics.cider.cider_d` over the group (its idf comes from the group's references, so
  it is a corpus score of the group, like BLEU here, never a mean of per-item scores of other
  corpora);
* ``bleu``: corpus BLEU-4 (0-100) over the group, all references of each image used;
  ``tokenize="13a"``, ``smooth_method="exp"``, lowercase (captions differ in case only by style).
* ``chrf``: corpus chrF (0-100, beta 2, char order 6, word order 0), lowercase.
* ``sentence_bleu``: mean of per-caption BLEU (``smooth_method="exp"``, effective order), which
  stays informative on very small groups where corpus BLEU is often 0.

Images with fewer references than others are padded by repeating their first reference, which
changes neither BLEU's clipped counts nor chrF's best-reference choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from headpursuit.metrics.cider import cider_d

__all__ = ["caption_quality", "metric_signatures", "METRIC_PACKAGE", "CIDER_SIGNATURE"]

METRIC_PACKAGE = "sacrebleu"
#: what the ``cider`` number is, for provenance (it has no sacrebleu signature)
CIDER_SIGNATURE = (
    "CIDEr-D|headpursuit.metrics.cider.cider_d|n:1-4|sigma:6|x10|pycocoevalcap-compatible, Java-free tokeniser"
)


def _require():
    try:
        import sacrebleu  # noqa: F401
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("caption metrics need the 'sacrebleu' package: pip install 'sacrebleu>=2.4'") from e
    return BLEU, CHRF


def _metrics():
    BLEU, CHRF = _require()
    corpus_bleu = BLEU(tokenize="13a", smooth_method="exp", lowercase=True)
    sent_bleu = BLEU(tokenize="13a", smooth_method="exp", lowercase=True, effective_order=True)
    chrf = CHRF(lowercase=True)
    return corpus_bleu, sent_bleu, chrf


def _reference_lists(references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each image's non-empty reference captions; a ValueError naming an image that has none."""
    refs = []
    for i, r in enumerate(references):
        r = [x for x in ([r] if isinstance(r, str) else r) if isinstance(x, str) and x.strip()]
        if not r:
            raise ValueError(f"caption {i} has no non-empty reference caption")
        refs.append(r)
    return refs


def _ref_streams(refs: list[list[str]]) -> list[list[str]]:
    width = max(len(r) for r in refs)
    padded = [r + [r[0]] * (width - len(r)) for r in refs]
    return [list(stream) for stream in zip(*padded)]  # sacrebleu: one stream per reference slot


def caption_quality(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu", "chrf", "sentence_bleu"} (0-100) and {"cider"} (CIDEr-D, x10) of captions against
    their references.

    NaNs when there are no captions.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"caption_quality: {len(hypotheses)} captions but {len(references)} reference lists")
    if not hypotheses:
        return {"bleu": math.nan, "chrf": math.nan, "sentence_bleu": math.nan, "cider": math.nan}
    hyps = [h if isinstance(h, str) else "" for h in hypotheses]
    refs = _reference_lists(references)
    streams = _ref_streams(refs)
    corpus_bleu, sent_bleu, chrf = _metrics()
    per_sentence = [sent_bleu.sentence_score(h, [s[i] for s in streams]).score for i, h in enumerate(hyps)]
    return {
        "bleu": float(corpus_bleu.corpus_score(hyps, streams).score),
        "chrf": float(chrf.corpus_score(hyps, streams).score),
        "sentence_bleu": float(sum(per_sentence) / len(per_sentence)),
        # unpadded: CIDEr-D averages over an image's references, which a repeated one would skew
        "cider": float(cider_d(hyps, refs)["cider"]),
    }


def metric_signatures() -> dict[str, str]:
    """sacrebleu's signature strings (settings + version) and CIDEr-D's settings, for provenance."""
    corpus_bleu, sent_bleu, chrf = _metrics()
    # sacrebleu builds a signature only after scoring (it records the number of references):
    # score a dummy pair, then report the settings without the dummy's reference count.
    corpus_bleu.corpus_score(["a"], [["a"]])
    sent_bleu.sentence_score("a", ["a"])
    chrf.corpus_score(["a"], [["a"]])

    def sig(metric) -> str:
        return "|".join(p for p in str(metric.get_signature()).split("|") if not p.startswith("nrefs:"))

    return {
        "package": METRIC_PACKAGE,
        "bleu": sig(corpus_bleu),
        "sentence_bleu": sig(sent_bleu),
        "chrf": sig(chrf),
        "cider": CIDER_SIGNATURE,
    }
