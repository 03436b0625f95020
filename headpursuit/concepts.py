"""Concepts: a named list of words, turned into the token ids a model's unembedding uses for them.

A concept's token set is the *first token* of each word, with and without a leading space, for the
word as written and for its capitalised form (dedup). A word whose first token carries less than
``min_chars`` characters of the word (e.g. ``" "`` or a single letter) would make the concept match
generic pieces, so it is reported as unusable and left out. A first token that is only a short
prefix (fewer than ``min_prefix_chars`` = 4 characters) of a longer word, such as ``"Th"`` of
``"Thailand"`` or ``" And"`` of ``" Andorra"``, counts as such a generic piece too; a short token
that *is* the whole word (``" UK"``) is kept. A leading article ("The Netherlands") is dropped
before tokenising, since " The" would stand for every text.

``single_token_only=True`` keeps out of the token set the words whose spaced form takes more than
one token (the paper's Gemma 3 sentiments: multi-token words made SOMP pick letter heads); they
still count in text (`Concept.count_in_text`) and are listed in ``unusable_words``.

    concept = load_concept("countries", lm.tokenizer)
    concept.token_ids            # LongTensor, sorted unique
    concept.count_in_text("I flew from France to the United States.")   # -> 2
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = ["Concept", "load_concept", "build_concept", "available_concepts", "concept_dir", "read_word_list"]

_ALIASES = {
    "colours": "colors",
    "colour": "colors",
    "color": "colors",
    "country": "countries",
    "number": "numbers",
    "quantities": "quantity",
    "sentiments": "sentiment",
    "toxicity": "toxic",
}


def concept_dir() -> Path:
    """The folder of the shipped concept word lists (headpursuit/data/concepts/<name>.txt)."""
    return Path(str(resources.files("headpursuit") / "data" / "concepts"))


# tests/test_tasks_language.py still imports the old private name


def available_concepts() -> list[str]:
    """Names of the concept word lists shipped in headpursuit/data/concepts."""
    return sorted(p.stem for p in concept_dir().glob("*.txt"))


def read_word_list(path: str | Path) -> list[str]:
    """One word or phrase per line; '#' starts a comment; blank lines ignored; order kept, dedup.
    UTF-8; a leading byte-order mark (some editors write one) is skipped, not read as a word."""
    words: list[str] = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words.append(" ".join(line.split()))
    return list(dict.fromkeys(words))


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


@dataclass
class Concept:
    """A concept for one tokenizer.

    name: the concept's name. words: its words/phrases (usable or not).
    token_ids: LongTensor, sorted unique first-token ids of the usable words.
    word_token_ids: word -> list of its first-token ids (usable words only).
    multi_token_words: usable words whose spaced form takes more than one token (only their first
        token is in ``token_ids``). unusable_words: words with no usable first token.
    word_file: the word-list file the words were read from (a shipped list or the user's), None
        for words given as a list; cache keys hold its content.
    """

    name: str
    words: list[str]
    token_ids: torch.Tensor
    word_token_ids: dict[str, list[int]] = field(default_factory=dict)
    multi_token_words: list[str] = field(default_factory=list)
    unusable_words: list[str] = field(default_factory=list)
    tokenizer_name: str = ""
    word_file: str | None = None

    def __len__(self) -> int:
        return int(self.token_ids.numel())

    def __contains__(self, token_id: int) -> bool:
        return int(token_id) in self.token_id_set

    @cached_property
    def token_id_set(self) -> frozenset[int]:
        return frozenset(int(t) for t in self.token_ids.tolist())

    def mask(self, vocab_size: int) -> torch.Tensor:
        """Bool (vocab_size,) with True at the concept's token ids."""
        m = torch.zeros(vocab_size, dtype=torch.bool)
        ids = self.token_ids[self.token_ids < vocab_size]
        m[ids] = True
        return m

    @cached_property
    def _pattern(self) -> re.Pattern | None:
        # every word counts in text, including those the tokenizer cannot represent by a first token
        if not self.words:
            return None
        # longest first so that "United States of America" wins over "United States"
        alts = sorted({w.strip() for w in self.words if w.strip()}, key=len, reverse=True)
        parts = [r"\s+".join(re.escape(tok) for tok in w.split()) for w in alts]
        return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)

    def count_in_text(self, text: str) -> int:
        """Number of non-overlapping whole-word, case-insensitive matches of the concept's words
        (multi-word phrases match across any whitespace)."""
        pat = self._pattern
        if pat is None or not text:
            return 0
        return sum(1 for _ in pat.finditer(text))

    def find_in_text(self, text: str) -> list[str]:
        """The matched words, in order of appearance."""
        pat = self._pattern
        return [] if pat is None or not text else [m.group(0) for m in pat.finditer(text)]

    def summary(self) -> str:
        return (
            f"concept {self.name!r}: {len(self.words)} words -> {len(self)} token ids "
            f"({len(self.multi_token_words)} multi-token words, {len(self.unusable_words)} unusable"
            + (f": {', '.join(self.unusable_words[:10])}" if self.unusable_words else "")
            + f") for tokenizer {self.tokenizer_name}"
        )


def _capitalised(word: str) -> str:
    return word[:1].upper() + word[1:]


def _first_token(tokenizer: Any, text: str) -> tuple[int | None, int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids and isinstance(ids[0], list):  # batched output
        ids = ids[0]
    if not ids:
        return None, 0
    return int(ids[0]), len(ids)


def _piece(tokenizer: Any, tid: int) -> str:
    return tokenizer.decode([tid], clean_up_tokenization_spaces=False)


def _usable_piece(piece: str, variant: str, min_chars: int, min_prefix_chars: int) -> bool:
    core = piece.strip()
    word = variant.strip()
    if len(core) < min_chars:
        return False
    if not any(ch.isalnum() for ch in core):
        return False  # generic punctuation/whitespace piece
    # the piece must be the beginning of the word it stands for (not a byte fragment)
    if not word.lower().startswith(core.lower()):
        return False
    # a very short prefix of a longer word ("Th" of "Thailand") is a generic piece
    return len(core) == len(word) or len(core) >= min_prefix_chars


def build_concept(
    words: Sequence[str],
    tokenizer: Any,
    name: str = "custom",
    *,
    min_chars: int = 2,
    min_prefix_chars: int = 4,
    single_token_only: bool = False,
) -> Concept:
    """The concept of ``words`` for ``tokenizer`` (see the module docstring for the rules;
    `single_token_only`: only words that are one token with a leading space give token ids)."""
    words = list(dict.fromkeys(" ".join(str(w).split()) for w in words if str(w).strip()))
    if not words:
        raise ValueError(f"Concept {name!r} has no words: give a non-empty word list (one word or phrase per line)")
    all_ids: set[int] = set()
    word_ids: dict[str, list[int]] = {}
    multi: list[str] = []
    unusable: list[str] = []
    for w in words:
        base = re.sub(r"^(?:the|a|an)\s+", "", w, flags=re.IGNORECASE) or w
        variants = list(dict.fromkeys([base, _capitalised(base)]))
        ids: list[int] = []
        spaced_len = 0
        for v in variants:
            for text in (" " + v, v):
                tid, n_tok = _first_token(tokenizer, text)
                if text.startswith(" ") and v == base:
                    spaced_len = n_tok
                if tid is None or tid in ids:
                    continue
                if _usable_piece(_piece(tokenizer, tid), v, min_chars, min_prefix_chars):
                    ids.append(tid)
        if ids and single_token_only and spaced_len > 1:
            unusable.append(w)  # a multi-token word: left out of the dictionary, still counted in text
        elif ids:
            word_ids[w] = ids
            all_ids.update(ids)
            if spaced_len > 1:
                multi.append(w)
        else:
            unusable.append(w)
    tname = _tokenizer_name(tokenizer)
    if not all_ids:
        raise ValueError(
            f"Concept {name!r} is empty for tokenizer {tname!r}: none of its {len(words)} words "
            f"({', '.join(words[:8])}{', ...' if len(words) > 8 else ''}) has a first token with at least "
            f"{min_chars} characters of the word. Fix: add words that this tokenizer encodes as a whole "
            f"word or a longer word piece (in a run config: task.concept=[word,...] or a word-list file), "
            f"or, from Python, pass a lower min_chars= to load_concept / build_concept."
        )
    return Concept(
        name=name,
        words=words,
        token_ids=torch.tensor(sorted(all_ids), dtype=torch.long),
        word_token_ids=word_ids,
        multi_token_words=multi,
        unusable_words=unusable,
        tokenizer_name=tname,
    )


def load_concept(
    name_or_path_or_list: str | Path | Iterable[str] | Concept,
    tokenizer: Any,
    name: str | None = None,
    *,
    min_chars: int = 2,
    min_prefix_chars: int = 4,
    single_token_only: bool = False,
) -> Concept:
    """Load a concept for ``tokenizer``.

    name_or_path_or_list: a shipped concept name ("countries", "colors"/"colours", "numbers",
    "toxic", "sentiment", "quantity"; see :func:`available_concepts`), a path to a word-list file
    (one word or phrase per line, '#' comments), or a list of words. A Concept is returned unchanged.
    """
    if isinstance(name_or_path_or_list, Concept):
        return name_or_path_or_list
    if tokenizer is None:
        raise ValueError("load_concept needs a tokenizer (e.g. lm.tokenizer) to map words to token ids")
    src = name_or_path_or_list
    word_file: Path | None = None
    if isinstance(src, (str, Path)):
        key = str(src).strip()
        shipped = concept_dir() / f"{_ALIASES.get(key.lower(), key.lower())}.txt"
        if isinstance(src, str) and "/" not in key and not key.endswith(".txt") and shipped.exists():
            word_file = shipped
            cname = name or shipped.stem
        elif Path(key).expanduser().is_file():
            word_file = Path(key).expanduser()
            cname = name or word_file.stem
        else:
            raise ValueError(
                f"Unknown concept {key!r}: not a shipped concept ({', '.join(available_concepts())}) and "
                f"not an existing word-list file. Fix: use one of those names, a path to a text file with "
                f"one word per line, or a list of words."
            )
        words = read_word_list(word_file)
    else:
        words = [str(w) for w in src]
        cname = name or "custom"
    concept = build_concept(
        words,
        tokenizer,
        cname,
        min_chars=min_chars,
        min_prefix_chars=min_prefix_chars,
        single_token_only=single_token_only,
    )
    concept.word_file = None if word_file is None else str(word_file)
    return concept
