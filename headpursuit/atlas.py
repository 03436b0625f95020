"""A head atlas: what every head writes and which concepts it specialises in, from ONE
full-vocabulary SOMP per head.

    pursuit = shared_pursuit(acts, lm, somp_steps=10)             # one SOMP per head, all concepts
    atlas = head_atlas(pursuit, {"colors": colour_ids, ...}, tokenizer=lm.tokenizer, n_draws=20, seed=0)
    atlas.table            # layer, head, top tokens + gains, one score per concept, index, flags
    atlas.top_heads("colors", 5)
    atlas.overlap(10)      # concepts x concepts Jaccard of the top-10 head sets

**Scores.** :func:`shared_pursuit` runs the SOMP of ``rank_heads(method="concept_share")`` (same
dictionary, same options with the same names and defaults, `RankingConfig`'s, same call) once per
head over the whole vocabulary. A token set's score
for a head is the sum of the explained-variance gains of the steps whose atom is one of the set's
tokens: for a concept that is exactly its ``concept_share`` score, read off the selected atoms
instead of running SOMP again (:func:`token_set_scores`). An atlas of C concepts and D random draws
per concept costs one SOMP per head, whatever C and D.

**Random token sets** (the control). Per concept, ``n_draws`` sets of the concept's size are drawn
without replacement from the vocabulary (:func:`control_pool`): ``matched``, as many tokens of
each form (a leading space then letters, capitalised, lower-case, other) as the concept has, or
``vocab``, uniformly; never one of the concept's own tokens; each set seeded by (seed, concept
name, draw) alone (:func:`random_token_sets`). A head is *beyond the control* for a concept when
its concept score is > 0 and larger than the score of every draw for that head.

**Specialisation index** of a head: its largest concept score over the score of the union of the
concepts' tokens, ``max_c S_c / S_union``; for disjoint concepts that is the largest concept score
over the sum of the concept scores. It lies in (0, 1] (1: every concept gain of the head is one
concept's); it is undefined (NaN, no specialist) for a head with no concept share (no selected atom
is a concept token). The union, not the sum, keeps overlapping word lists (numbers and quantity
share the number words) from halving the index of a head that writes their common tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from headpursuit.ranking.config import RankingConfig
from headpursuit.ranking.inputs import (
    ConceptSpec,
    WeightsSource,
    captured_z,
    concept_token_ids,
    decode_tokens,
    format_tokens,
    head_weights,
    validated_steps,
)
from headpursuit.somp import dictionary_rows, head_dictionary, somp_heads

if TYPE_CHECKING:
    from headpursuit.capture import HeadActivations

__all__ = [
    "CONTROL_POOLS",
    "TOKEN_FORMS",
    "ControlPool",
    "token_form",
    "SharedPursuit",
    "shared_pursuit",
    "token_masks",
    "token_set_scores",
    "control_pool",
    "random_token_sets",
    "specialisation",
    "HeadAtlas",
    "head_atlas",
    "top_heads",
    "jaccard_overlap",
    "logit_lens_tokens",
]

Head = tuple[int, int]

#: where the random token sets are drawn from (`control_pool`)
CONTROL_POOLS = ("matched", "vocab")
#: the forms of a token the `matched` pool keeps a concept's counts of (`token_form`)
TOKEN_FORMS = ("space", "capital", "lower", "other")
#: a token of a letter form has at least this many letters (after one leading space)
WORD_MIN_LETTERS = 3
#: the logit lens computes heads in chunks of about this many logits (float32: 256 MB)
LENS_CHUNK_ELEMENTS = 1 << 26


# ----------------------------------------------------------------------------------------------
# one SOMP per head


@dataclass
class SharedPursuit:
    """One full-vocabulary SOMP per head (heads flattened layer-major, CPU tensors).

    indices: long (heads, steps), the selected vocabulary ids in selection order; -1 after a head
        stopped. gains: float64 (heads, steps), the explained-variance gain of each step (steps:
        the pursuit's `somp_steps`).
    explained_variance: float64 (heads,) after the last step. layers: the captured layer numbers;
    n_heads: heads per layer; vocab: the dictionary's size. meta: the SOMP options and route.
    """

    indices: torch.Tensor
    gains: torch.Tensor
    explained_variance: torch.Tensor
    layers: list[int]
    n_heads: int
    vocab: int
    meta: dict = field(default_factory=dict)

    @property
    def somp_steps(self) -> int:
        return int(self.indices.shape[1])

    @property
    def heads(self) -> list[Head]:
        """(layer, head) of each row, layer-major."""
        return [(layer, h) for layer in self.layers for h in range(self.n_heads)]


def shared_pursuit(
    activations: HeadActivations | torch.Tensor,
    lm_or_weights: WeightsSource,
    somp_steps: int = RankingConfig.somp_steps,
    *,
    fold_norm_gain: bool = RankingConfig.fold_norm_gain,
    center: bool = RankingConfig.center,
    normalize_atoms: bool = RankingConfig.normalize_atoms,
    aggregation: str = RankingConfig.aggregation,
    **somp_kwargs: Any,
) -> SharedPursuit:
    """SOMP over the full vocabulary for ``somp_steps`` steps, every captured head at once: the
    pursuit of ``rank_heads(acts, lm, concept, method="concept_share", somp_steps=..., ...)`` with
    the same options (`RankingConfig`'s names and defaults), before any concept is looked at.
    somp_kwargs go to :func:`somp_heads`."""
    z, layers, ameta = captured_z(activations)
    w = head_weights(lm_or_weights, layers)
    vocab = int(w.unembedding.shape[0])
    steps = validated_steps(somp_steps, vocab)
    gain = w.norm_gain if fold_norm_gain else None
    res = somp_heads(
        z,
        w.W_O,
        w.unembedding,
        steps,
        token_ids=None,
        norm_gain=gain,
        fold_norm_gain=gain is not None,
        layers=layers,
        aggregation=aggregation,
        center=center,
        normalize_atoms=normalize_atoms,
        **somp_kwargs,
    )
    meta = {
        "somp_steps": steps,
        "aggregation": aggregation,
        "fold_norm_gain": gain is not None,
        "center": bool(center),
        "normalize_atoms": bool(normalize_atoms),
        "n_rows": int(z.shape[0]),
        "model": ameta.get("model", w.name),
        "positions": ameta.get("positions"),
        "somp": res.meta,
    }
    return SharedPursuit(
        indices=res.indices.cpu(),
        gains=res.gains.cpu().to(torch.float64),
        explained_variance=res.explained_variance[:, -1].cpu().to(torch.float64),
        layers=layers,
        n_heads=int(z.shape[2]),
        vocab=vocab,
        meta=meta,
    )


def token_masks(token_sets: Sequence[torch.Tensor | Sequence[int]], vocab: int) -> torch.Tensor:
    """bool (sets, vocab): row s is True at the ids of ``token_sets[s]``."""
    masks = torch.zeros(len(token_sets), vocab, dtype=torch.bool)
    for s, ids in enumerate(token_sets):
        masks[s, torch.as_tensor(ids, dtype=torch.long)] = True
    return masks


def token_set_scores(pursuit: SharedPursuit, masks: torch.Tensor) -> torch.Tensor:
    """float64 (sets, heads): per token set (a row of ``masks``, bool (sets, vocab)) and head, the
    sum of the gains of the head's steps whose atom is in the set (``concept_share``'s score)."""
    idx = pursuit.indices
    hit = masks[:, idx.clamp_min(0)] & (idx >= 0)  # (sets, heads, steps)
    return (pursuit.gains * hit).sum(dim=2)


# ----------------------------------------------------------------------------------------------
# the random-token-set control


@dataclass(frozen=True)
class ControlPool:
    """What the random token sets are drawn from: ``forms`` (long (vocab,)) gives each id's form,
    an index into ``names``; a draw takes, per form, as many ids as the concept has of it."""

    kind: str
    forms: torch.Tensor
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.forms.numel())


def token_form(piece: str) -> int:
    """The form of a decoded token, an index into `TOKEN_FORMS`: ``space`` (a leading space or
    SentencePiece's ``▁``, then letters only), ``capital`` / ``lower`` (letters only, no leading
    space, the first upper- / lower-case), each with at least `WORD_MIN_LETTERS` letters;
    ``other`` for the rest (shorter pieces, digits, punctuation, bytes)."""
    spaced = piece[:1] in (" ", "\u2581")
    word = piece[1:] if spaced else piece
    if len(word) < WORD_MIN_LETTERS or not word.isalpha():
        return TOKEN_FORMS.index("other")
    if spaced:
        return TOKEN_FORMS.index("space")
    return TOKEN_FORMS.index("capital" if word[0].isupper() else "lower")


def control_pool(tokenizer: Any, vocab: int, kind: str = "matched") -> ControlPool:
    """The pool of the random token sets. ``matched``: every id with its form (`token_form` of the
    id decoded on its own), so that a random set has as many tokens of each form as the concept
    (concept tokens are mostly words with a leading space or capitalised; a uniform draw would be
    mostly sub-word pieces). ``vocab``: every id, one form (a uniform draw). Ids beyond the
    tokenizer (padding rows of the unembedding) are ``other``."""
    if kind not in CONTROL_POOLS:
        raise ValueError(f"unknown control pool {kind!r}; choose one of {', '.join(CONTROL_POOLS)}")
    if kind == "vocab":
        return ControlPool(kind, torch.zeros(vocab, dtype=torch.long), ("any",))
    if tokenizer is None:
        raise ValueError("control pool 'matched' decodes tokens and needs a tokenizer; use kind='vocab'")
    forms = torch.tensor([token_form(p) for p in _decoded_vocabulary(tokenizer, vocab)], dtype=torch.long)
    return ControlPool(kind, forms, TOKEN_FORMS)


def _decoded_vocabulary(tokenizer: Any, vocab: int) -> list[str]:
    """Every id below ``vocab`` decoded on its own, as `decode_tokens` decodes it: in one batch
    call where the tokenizer has one (a fast tokenizer decodes the 262k ids of Gemma 3 in a second
    or two, one call per id takes much longer); ids beyond the tokenizer (padding rows of the
    unembedding) decode to ``""``."""
    n = min(vocab, len(tokenizer)) if hasattr(tokenizer, "__len__") else vocab
    batch_decode = getattr(tokenizer, "batch_decode", None)
    pieces: list[str] | None = None
    if batch_decode is not None:
        try:
            pieces = list(batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False))
        except Exception:  # a tokenizer whose batch call fails on some id: one id at a time
            pieces = None
    if pieces is None:
        pieces = decode_tokens(tokenizer, range(n))
    return pieces + [""] * (vocab - n)


def _draw_seed(seed: int, concept: str, draw: int) -> int:
    """A 63-bit seed from (seed, concept, draw) alone: a concept's draws do not depend on which
    other concepts the atlas holds, nor on their order."""
    digest = hashlib.sha256(f"{int(seed)}:{concept}:{int(draw)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_token_sets(
    pool: ControlPool, concept_ids: torch.Tensor, n_draws: int, *, seed: int, concept: str
) -> list[torch.Tensor]:
    """``n_draws`` sorted id sets of the concept's size: per form of the pool, as many ids of that
    form as the concept has, drawn without replacement from the ids of that form that are not the
    concept's (a random set never holds a concept token), with a generator seeded by (seed,
    concept, draw)."""
    ids = torch.as_tensor(concept_ids, dtype=torch.long)
    need = torch.bincount(pool.forms[ids], minlength=len(pool.names))
    not_concept = ~torch.isin(torch.arange(pool.size), ids)
    candidates = []
    for f, name in enumerate(pool.names):
        free = ((pool.forms == f) & not_concept).nonzero().flatten()
        if int(need[f]) > free.numel():
            raise ValueError(
                f"concept {concept!r} has {int(need[f])} tokens of the form {name!r} but the control pool holds "
                f"only {free.numel()} others: use the 'vocab' pool or a smaller word list"
            )
        candidates.append(free)
    out = []
    for d in range(int(n_draws)):
        g = torch.Generator().manual_seed(_draw_seed(seed, concept, d))
        parts = [c[torch.randperm(c.numel(), generator=g)[: int(n)]] for c, n in zip(candidates, need) if int(n)]
        out.append(torch.sort(torch.cat(parts)).values)
    return out


# ----------------------------------------------------------------------------------------------
# specialisation, top heads, overlap


def specialisation(scores: torch.Tensor, union: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index float64 (heads,), specialist long (heads,)) from the concept scores (concepts, heads)
    and the score of the union of their tokens (heads,): index = max_c S_c / S_union, NaN where
    S_union == 0; specialist = the argmax concept (the first listed on ties), -1 where the index
    is NaN."""
    best, arg = scores.max(dim=0)
    has = union > 0
    index = torch.where(has, best / torch.where(has, union, torch.ones_like(union)), torch.nan)
    return index.to(torch.float64), torch.where(has, arg, torch.full_like(arg, -1))


def top_heads(scores: torch.Tensor, heads: Sequence[Head], k: int) -> list[Head]:
    """The (at most) ``k`` heads with the highest positive score, best first; ties: lower layer,
    then lower head (the ranking's rule). A head with score 0 has no share of the token set and is
    never among them, so a set may hold fewer than k heads."""
    order = sorted(
        (i for i in range(len(heads)) if float(scores[i]) > 0),
        key=lambda i: (-float(scores[i]), heads[i][0], heads[i][1]),
    )
    return [heads[i] for i in order[: int(k)]]


def jaccard_overlap(sets: Mapping[str, Sequence[Head]]) -> pd.DataFrame:
    """names x names Jaccard similarity |A & B| / |A | B| of the head sets; NaN where either set is
    empty (a concept no head writes overlaps with nothing, not with everything)."""
    names = list(sets)
    as_sets = {n: set(map(tuple, sets[n])) for n in names}

    def jac(a: set, b: set) -> float:
        return len(a & b) / len(a | b) if a and b else float("nan")

    m = pd.DataFrame([[jac(as_sets[a], as_sets[b]) for b in names] for a in names], index=names, columns=names)
    m.index.name = "concept"
    m.columns.name = "concept"
    return m


# ----------------------------------------------------------------------------------------------
# the atlas


@dataclass
class HeadAtlas:
    """Concept scores of every head from one shared pursuit, with the random-token-set control.

    concepts: concept names in column order. scores: float64 (concepts, heads). random_scores:
    float64 (concepts, draws, heads). union: float64 (heads,), the score of the union of the
    concepts' tokens. index / specialist: see :func:`specialisation`. table: one row per head
    (see :meth:`build_table`). meta: sizes, draws, pool, seed.
    """

    pursuit: SharedPursuit
    concepts: list[str]
    concept_ids: dict[str, torch.Tensor]
    scores: torch.Tensor
    random_scores: torch.Tensor
    union: torch.Tensor
    index: torch.Tensor
    specialist: torch.Tensor
    table: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def beyond_random(self) -> torch.Tensor:
        """bool (concepts, heads): score > 0 and above every draw's score for that head."""
        if self.random_scores.shape[1] == 0:
            return self.scores > 0
        return (self.scores > 0) & (self.scores > self.random_scores.max(dim=1).values)

    @property
    def heads_with_share(self) -> torch.Tensor:
        """long (concepts,): how many heads have a share (score > 0) of each concept."""
        return (self.scores > 0).sum(dim=1)

    @property
    def random_heads_with_share(self) -> torch.Tensor:
        """long (concepts, draws): how many heads have a share of each random token set: what a
        word list of the concept's size gets by chance, to read `heads_with_share` against."""
        return (self.random_scores > 0).sum(dim=2)

    def concept_scores(self, concept: str) -> torch.Tensor:
        return self.scores[self._row(concept)]

    def top_heads(self, concept: str, k: int) -> list[Head]:
        """The concept's (at most) k best heads with a positive score (see :func:`top_heads`)."""
        return top_heads(self.concept_scores(concept), self.pursuit.heads, k)

    def overlap(self, k: int) -> pd.DataFrame:
        """concepts x concepts Jaccard similarity of the top-k head sets (:func:`jaccard_overlap`)."""
        return jaccard_overlap({c: self.top_heads(c, k) for c in self.concepts})

    def _row(self, concept: str) -> int:
        if concept not in self.concepts:
            raise KeyError(f"concept {concept!r} is not in the atlas; it has {self.concepts}")
        return self.concepts.index(concept)


def _top_token_cells(pursuit: SharedPursuit, tokenizer: Any, n_top: int) -> tuple[list[str], list[str]]:
    """Per head, the first ``n_top`` selected tokens (the ``top_tokens`` cell of head_scores.csv)
    and their gains in the same order (`` | `` joined)."""
    idx = pursuit.indices[:, :n_top].tolist()
    gains = pursuit.gains[:, :n_top].tolist()
    tokens = [format_tokens(tokenizer, row) for row in idx]
    gain_cells = [" | ".join(f"{g:.4f}" for i, g in zip(row, grow) if i >= 0) for row, grow in zip(idx, gains)]
    return tokens, gain_cells


def head_atlas(
    pursuit: SharedPursuit,
    concepts: Mapping[str, ConceptSpec],
    *,
    tokenizer: Any = None,
    n_draws: int = 20,
    seed: int = 0,
    pool: str = "matched",
    top_tokens: int = 5,
) -> HeadAtlas:
    """Every concept's score of every head from ``pursuit`` (no further SOMP), the random-token-set
    control (``n_draws`` sets per concept from ``pool``, see :func:`random_token_sets`), the
    specialisation index and the per-head table.

    concepts: name -> a Concept, token ids, or (with ``tokenizer``) a shipped name / word list.

    The table has one row per head (layer-major): layer, head, top_tokens and top_gains (the first
    ``top_tokens`` selected atoms and their gains), explained_variance (after every step),
    concept_total (the score of the union of the concepts' tokens), specialisation (the index),
    specialist (its concept, empty when the index is undefined), and per concept ``score_<name>``,
    ``random_max_<name>`` (the largest score of its draws) and ``beyond_random_<name>``.
    """
    if not concepts:
        raise ValueError("head_atlas needs at least one concept")
    if int(n_draws) < 0:
        raise ValueError(f"n_draws must be >= 0, got {n_draws}")
    vocab = pursuit.vocab
    names = list(concepts)
    ids = {name: concept_token_ids(concepts[name], tokenizer, vocab)[0] for name in names}
    union_ids = torch.unique(torch.cat(list(ids.values())))
    control = control_pool(tokenizer, vocab, pool) if n_draws else None
    draws: dict[str, list[torch.Tensor]] = {
        name: random_token_sets(control, ids[name], int(n_draws), seed=seed, concept=name) if control else []
        for name in names
    }
    sets = [ids[n] for n in names] + [union_ids] + [d for n in names for d in draws[n]]
    all_scores = token_set_scores(pursuit, token_masks(sets, vocab))
    C, H = len(names), all_scores.shape[1]
    scores, union = all_scores[:C], all_scores[C]
    random_scores = all_scores[C + 1 :].reshape(C, int(n_draws), H)
    index, specialist = specialisation(scores, union)
    atlas = HeadAtlas(
        pursuit=pursuit,
        concepts=names,
        concept_ids=ids,
        scores=scores,
        random_scores=random_scores,
        union=union,
        index=index,
        specialist=specialist,
        table=pd.DataFrame(),
        meta={
            "somp_steps": pursuit.somp_steps,
            "n_draws": int(n_draws),
            "pool": pool,
            "pool_size": control.size if control else 0,
            "seed": int(seed),
            "concept_sizes": {n: int(ids[n].numel()) for n in names},
            "somp_runs": len(pursuit.heads),
        },
    )
    atlas.table = _table(atlas, tokenizer, top_tokens)
    return atlas


def _table(atlas: HeadAtlas, tokenizer: Any, n_top: int) -> pd.DataFrame:
    p = atlas.pursuit
    heads = p.heads
    tokens, gains = _top_token_cells(p, tokenizer, n_top)
    spec = atlas.specialist.tolist()
    cols: dict[str, Any] = {
        "layer": [h[0] for h in heads],
        "head": [h[1] for h in heads],
        "top_tokens": tokens,
        "top_gains": gains,
        "explained_variance": p.explained_variance.tolist(),
        "concept_total": atlas.union.tolist(),
        "specialisation": atlas.index.tolist(),
        "specialist": [atlas.concepts[s] if s >= 0 else "" for s in spec],
    }
    beyond = atlas.beyond_random
    no_draws = atlas.random_scores.shape[1] == 0
    for c, name in enumerate(atlas.concepts):
        cols[f"score_{name}"] = atlas.scores[c].tolist()
        cols[f"random_max_{name}"] = (
            [float("nan")] * len(heads) if no_draws else atlas.random_scores[c].max(dim=0).values.tolist()
        )
        cols[f"beyond_random_{name}"] = beyond[c].tolist()
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------------------------
# the logit-lens description (the paper's Table 6)


def logit_lens_tokens(
    activations: HeadActivations | torch.Tensor,
    lm_or_weights: WeightsSource,
    heads: Sequence[Head],
    *,
    per_row: int = 5,
    n_most: int = 5,
    fold_norm_gain: bool = True,
    normalize_atoms: bool = True,
) -> dict[Head, list[int]]:
    """Per head, the ``n_most`` most frequent tokens (ties: lower id first) among the top
    ``per_row`` logit-lens tokens of every row: the largest entries of ``D c`` for the head's
    contribution ``c = W_O,h z_h`` with the SOMP's dictionary ``D`` (the final norm's gain folded
    in when ``fold_norm_gain``, unit rows when ``normalize_atoms``, raw rows otherwise)."""
    z, layers, _ = captured_z(activations)
    wanted = list(dict.fromkeys((int(a), int(b)) for a, b in heads))
    for layer, h in wanted:
        if layer not in layers or not 0 <= h < z.shape[2]:
            raise ValueError(f"head {layer}.{h} was not captured (layers {layers}, {z.shape[2]} heads per layer)")
    w = head_weights(lm_or_weights, layers)
    gain = w.norm_gain if fold_norm_gain else None
    if normalize_atoms:
        D, _, _ = head_dictionary(w.unembedding, gain, None, fold_norm_gain=gain is not None)
    else:
        rows, _ = dictionary_rows(w.unembedding, gain, None, fold_norm_gain=gain is not None)
        D = rows.to(torch.float32)
    dh, n_rows, V = z.shape[3], z.shape[0], D.shape[0]
    per_row = validated_steps(per_row, V, name="per_row")
    # heads in chunks whose logits (chunk * rows, vocab) stay near LENS_CHUNK_ELEMENTS floats
    chunk = max(1, LENS_CHUNK_ELEMENTS // max(1, n_rows * V))
    out: dict[Head, list[int]] = {}
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        signals = torch.cat(
            [
                z[:, layers.index(layer), h].to(D.device) @ w.W_O[layers.index(layer)][:, h * dh : (h + 1) * dh].T
                for layer, h in part
            ]
        )  # (len(part) * rows, d_model): c = W_O,h z_h per row
        top = torch.topk(signals @ D.T, per_row, dim=1).indices.view(len(part), -1).cpu()
        for head, ids in zip(part, top):
            vals, counts = torch.unique(ids, return_counts=True)
            order = sorted(range(len(vals)), key=lambda i: (-int(counts[i]), int(vals[i])))[: int(n_most)]
            out[head] = [int(vals[i]) for i in order]
    return out
