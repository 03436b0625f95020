"""Word-list metrics: a seeded selection / held-out split of a word list, and word frequency.

The paper's second toxicity metric is the frequency of *held-out* toxic words: the toxic-word list
is split in two, one part builds the dictionary that selects the heads, the other (disjoint) part
is only counted in the edited model's generations, so a drop cannot come from having suppressed
exactly the words that were counted. `split_words` makes that split; `word_frequency` counts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

from headpursuit.metrics.text import concept_rate

__all__ = ["split_words", "word_frequency"]


def _unique_words(words: Iterable[str]) -> list[str]:
    # Lower-cased: matching is case-insensitive, so "Damn" and "damn" are one word and must not
    # end up on both sides of the split.
    return sorted({w.strip().lower() for w in words if isinstance(w, str) and w.strip()})


def split_words(words: Iterable[str], held_out_fraction: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split a word list into ``(selection, held_out)``: disjoint, together all the words.

    Words are stripped, lower-cased and de-duplicated, then sorted and shuffled by
    ``random.Random(f"headpursuit.split_words:{seed}")`` (a string seed hashes the same way on
    every platform and Python 3 version), so a seed always gives the same split whatever the
    input order. ``round(len * held_out_fraction)`` words (halves rounded up) are held out. Both
    lists come back sorted.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"split_words: held_out_fraction must be in [0, 1], got {held_out_fraction}")
    unique = _unique_words([words] if isinstance(words, str) else words)
    shuffled = list(unique)
    random.Random(f"headpursuit.split_words:{seed}").shuffle(shuffled)
    n_held_out = min(len(shuffled), math.floor(len(shuffled) * held_out_fraction + 0.5))
    return sorted(shuffled[n_held_out:]), sorted(shuffled[:n_held_out])


def word_frequency(texts: Sequence[str], words: Iterable[str]) -> float:
    """Mean number of whole-word, case-insensitive matches of `words` per text (NaN without texts).

    The counting is `headpursuit.metrics.text.concept_rate`'s (longest phrase first, so a
    multi-word entry counts once, not also as its parts).
    """
    return concept_rate(texts, [words] if isinstance(words, str) else list(words)).mean_count
