"""Rank attention heads by how much a concept explains what they write.

    scores = rank_heads(acts, lm, concept, method="concept_share", k=10)
    scores.table          # layer, head, score, rank (1 = best), top_tokens, explained_variance
    scores.top(6)         # [(layer, head), ...]

Methods (shared/HEADPURSUIT.md section 1):

* ``concept_share`` -- SOMP over the full vocabulary for k steps per head; the score is the sum of
  the explained-variance gains of the steps whose atom is a concept token.
* ``concept_restricted`` -- SOMP with the dictionary restricted to the concept's tokens; the score
  is the explained variance after k steps (k is capped at the number of concept tokens).
* ``logit_lens`` -- per row, the top ``lens_top`` tokens (by value) of ``D c`` with unit-norm atoms
  ``D``; the score is the fraction of them in the concept, averaged over rows. ``lens_top``
  defaults to ``k``.
* ``random`` -- seeded random scores (the control).

Ties are broken deterministically: higher score first, then lower layer, then lower head.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from headpursuit.somp import SOMPResult, _HeadSignals, head_dictionary, somp, somp_heads

__all__ = ["HeadScores", "rank_heads", "explain_head", "METHODS", "known_methods"]

METHODS = ("concept_share", "concept_restricted", "logit_lens", "random")
COLUMNS = ["layer", "head", "score", "rank", "top_tokens", "explained_variance"]


def known_methods() -> list[str]:
    return list(METHODS)


# ----------------------------------------------------------------------------------------------
# result


@dataclass
class HeadScores:
    """Head scores for one concept and method. ``table`` is sorted by rank (1 = best)."""

    table: pd.DataFrame
    method: str
    meta: dict = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[int, int]]:
        """The k best heads as (layer, head)."""
        if int(k) < 0:
            raise ValueError(f"top(k) needs k >= 0; got {k}")
        t = self.table.sort_values("rank", kind="stable").head(int(k))
        return [(int(a), int(b)) for a, b in zip(t["layer"], t["head"])]

    def score_of(self, layer: int, head: int) -> float:
        row = self.table[(self.table["layer"] == layer) & (self.table["head"] == head)]
        if row.empty:
            raise KeyError(f"no head ({layer}, {head}) in these scores")
        return float(row["score"].iloc[0])

    def as_grid(self, n_layers: int | None = None, n_heads: int | None = None) -> torch.Tensor:
        """Scores as a (layers, heads) tensor (NaN where a head was not scored)."""
        L = int(n_layers if n_layers is not None else self.table["layer"].max() + 1)
        H = int(n_heads if n_heads is not None else self.table["head"].max() + 1)
        grid = torch.full((L, H), float("nan"), dtype=torch.float64)
        for a, b, s in zip(self.table["layer"], self.table["head"], self.table["score"]):
            grid[int(a), int(b)] = float(s)
        return grid

    def to_csv(self, path: str | Path) -> Path:
        """Write the table to ``path`` and method + meta to ``<path>.meta.json`` (both atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        self.table.to_csv(tmp, index=False)
        os.replace(tmp, path)
        mpath = path.with_name(path.name + ".meta.json")
        tmp = mpath.with_name(mpath.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"method": self.method, "meta": self.meta}, default=str, indent=1))
        os.replace(tmp, mpath)
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> "HeadScores":
        path = Path(path)
        table = pd.read_csv(path, keep_default_na=False, na_values={"score": ["", "nan", "NaN"],
                                                                     "explained_variance": ["", "nan", "NaN"]})
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path} is not a head-scores CSV: missing columns {missing} (expected {COLUMNS})")
        table["top_tokens"] = table["top_tokens"].astype(str)
        method, meta = "unknown", {}
        mpath = path.with_name(path.name + ".meta.json")
        if mpath.exists():
            d = json.loads(mpath.read_text())
            method, meta = d.get("method", method), d.get("meta", {})
        return cls(table.sort_values("rank", kind="stable").reset_index(drop=True), method, meta)

    def __repr__(self) -> str:
        return f"HeadScores(method={self.method!r}, heads={len(self.table)}, top={self.top(5)})"


# ----------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Weights:
    W_O: torch.Tensor  # (L_captured, d, H*dh), float32
    unembedding: torch.Tensor  # (V, d)
    norm_gain: torch.Tensor | None
    tokenizer: Any
    name: str


def _get(obj: Any, *names: str):
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if not isinstance(obj, Mapping) and hasattr(obj, n):
            return getattr(obj, n)
    return None


def _activations(activations: Any) -> tuple[torch.Tensor, list[int], dict]:
    if activations is None:
        raise ValueError("activations is None: capture them first (capture_heads(lm, samples))")
    z = getattr(activations, "z", activations)
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"activations must be a HeadActivations or a z tensor (rows, layers, heads, head_dim); got {type(activations).__name__}")
    if z.dim() != 4:
        raise ValueError(f"activations.z must be (rows, layers, heads, head_dim); got shape {tuple(z.shape)}")
    if z.shape[0] == 0 or z.shape[1] == 0 or z.shape[2] == 0:
        raise ValueError(
            f"activations are empty (z shape {tuple(z.shape)}): capture at least one row for at least one "
            "layer (check the samples and the positions mode)"
        )
    layers = list(getattr(activations, "layers", None) or range(z.shape[1]))
    if len(layers) != z.shape[1]:
        raise ValueError(f"activations.layers has {len(layers)} entries but z has {z.shape[1]} layers")
    meta = dict(getattr(activations, "meta", None) or {})
    return z.detach().float().cpu(), [int(l) for l in layers], meta


def _weights(lm_or_weights: Any, layers: Sequence[int], fold_norm_gain: bool) -> _Weights:
    src = lm_or_weights
    if src is None:
        raise ValueError("rank_heads needs the model (a LoadedModel) or its weights (dict with W_O, unembedding)")
    name = str(_get(src, "name") or type(src).__name__)
    if hasattr(src, "output_weight") and hasattr(src, "unembedding") and callable(src.unembedding):
        W = torch.stack([src.output_weight(l).detach().float().cpu() for l in layers])
        U = src.unembedding().detach().float().cpu()
        gain = src.final_norm_gain() if fold_norm_gain else None
        tok = getattr(src, "tokenizer", None)
    else:
        W = _get(src, "W_O", "w_o", "output_weights")
        U = _get(src, "unembedding", "U", "W_U")
        gain = _get(src, "norm_gain", "final_norm_gain") if fold_norm_gain else None
        tok = _get(src, "tokenizer")
        if callable(W):
            W = W()
        if callable(U):
            U = U()
        if callable(gain):
            gain = gain()
        if W is None or U is None:
            raise ValueError(
                "weights must provide W_O (layers, d_model, heads*head_dim) and unembedding (vocab, d_model) "
                "as keys or attributes (or pass a LoadedModel)"
            )
        W = torch.as_tensor(W).detach().float().cpu()
        U = torch.as_tensor(U).detach().float().cpu()
        if W.dim() == 2:
            W = W.unsqueeze(0)
        if W.dim() != 3:
            raise ValueError(f"W_O must be (layers, d_model, heads*head_dim); got shape {tuple(W.shape)}")
        if W.shape[0] > max(layers):
            W = W[list(layers)]
        elif W.shape[0] != len(layers):
            raise ValueError(
                f"W_O has {W.shape[0]} layers but the activations cover layers {list(layers)[:8]}...: give W_O for "
                "all model layers or exactly the captured ones"
            )
    if gain is not None:
        gain = torch.as_tensor(gain).detach().float().cpu()
    return _Weights(W, U, gain, tok, name)


def _concept_ids(concept: Any, tokenizer: Any, vocab: int) -> tuple[torch.Tensor, str]:
    from headpursuit.concepts import Concept, load_concept

    if isinstance(concept, Concept):
        ids, name = concept.token_ids, concept.name
    elif isinstance(concept, torch.Tensor) or (
        isinstance(concept, (list, tuple)) and concept and all(isinstance(x, int) for x in concept)
    ):
        ids, name = torch.as_tensor(concept, dtype=torch.long).flatten(), "token_ids"
    else:
        if tokenizer is None:
            raise ValueError("concept given by name/words but no tokenizer is available: pass a Concept or token ids")
        c = load_concept(concept, tokenizer)
        ids, name = c.token_ids, c.name
    ids = torch.unique(ids.long())
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.numel():
        raise ValueError(
            f"concept {name!r} has token ids outside the vocabulary [0, {vocab}): {bad[:5].tolist()}; "
            "build the concept with this model's tokenizer"
        )
    if ids.numel() == 0:
        raise ValueError(f"concept {name!r} has no token ids; load it with load_concept(name, lm.tokenizer)")
    return ids, name


def _decode(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    out = []
    for i in ids:
        i = int(i)
        if i < 0:
            continue
        if tokenizer is None:
            out.append(f"#{i}")
        else:
            try:
                out.append(tokenizer.decode([i], clean_up_tokenization_spaces=False))
            except Exception:
                out.append(f"#{i}")
    return out


def _fmt_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    return " | ".join(repr(p) for p in _decode(tokenizer, ids))


def _check_k(k: Any, vocab: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            if float(k) != int(k):
                raise ValueError
            k = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"k must be a positive integer (SOMP steps / top tokens); got {k!r}") from None
    if k <= 0:
        raise ValueError(f"k must be >= 1 (SOMP steps / top tokens); got {k}")
    if k > vocab:
        raise ValueError(f"k={k} exceeds the vocabulary size {vocab}; use a smaller k")
    return k


# ----------------------------------------------------------------------------------------------
# ranking


def _table(layers: Sequence[int], n_heads: int, score: torch.Tensor, top: list[str], ev: torch.Tensor) -> pd.DataFrame:
    L = len(layers)
    lay = [int(layers[i // n_heads]) for i in range(L * n_heads)]
    hd = [i % n_heads for i in range(L * n_heads)]
    df = pd.DataFrame({
        "layer": lay,
        "head": hd,
        "score": score.double().numpy(),
        "top_tokens": top,
        "explained_variance": ev.double().numpy(),
    })
    # deterministic ties: score desc, then layer asc, head asc (NaN scores last)
    df = df.sort_values(["score", "layer", "head"], ascending=[False, True, True], kind="stable",
                        na_position="last").reset_index(drop=True)
    df.insert(3, "rank", range(1, len(df) + 1))
    return df[COLUMNS]


def _logit_lens(z, W, D, concept_mask, lens_top, memory_budget, chunk_size):
    """Per head: mean over rows of the fraction of the row's top tokens (by value) in the concept;
    and the most frequent top-1 tokens."""
    op = _HeadSignals(z, W, torch.float32)
    n, V = z.shape[0], D.shape[0]
    from headpursuit.somp import _default_budget

    budget = memory_budget if memory_budget is not None else _default_budget()
    per_head = n * V * 4 * 2 + op.bytes_per_head(V)
    hb = max(1, min(op.n_heads, budget // max(per_head, 1)))
    scores, firsts = [], []
    for h0 in range(0, op.n_heads, hb):
        C, _, _ = op.prepare(slice(h0, min(op.n_heads, h0 + hb)), D, chunk_size)
        top = torch.topk(C, lens_top, dim=2).indices  # (hb, n, lens_top)
        del C
        scores.append(concept_mask[top].float().mean(dim=(1, 2)))
        firsts.append(top[:, :, 0])
    return torch.cat(scores), torch.cat(firsts)  # (heads,), (heads, n)


def rank_heads(
    activations: Any,
    lm_or_weights: Any,
    concept: Any,
    method: str = "concept_share",
    k: int = 10,
    *,
    seed: int = 0,
    fold_norm_gain: bool = True,
    aggregation: str = "l1",
    top_tokens: int = 5,
    lens_top: int | None = None,
    **somp_kwargs,
) -> HeadScores:
    """Score every captured head for ``concept``; see the module docstring for the methods.

    activations: HeadActivations (or a z tensor (rows, layers, heads, head_dim)).
    lm_or_weights: a LoadedModel, or a dict/object with ``W_O`` (layers, d_model, heads*head_dim)
        (all model layers or exactly the captured ones), ``unembedding`` (vocab, d_model), optional
        ``norm_gain`` (d_model,) and ``tokenizer``.
    concept: a Concept, token ids, or a concept name / word list (needs a tokenizer).
    k: SOMP steps (concept_share, concept_restricted) or the default ``lens_top`` (logit_lens).
    fold_norm_gain: fold the final norm's gain into the unembedding (D * gamma) before normalising.
    aggregation: SOMP atom choice, "l1" (default) or "l2". top_tokens: how many selected atoms to
    decode into the ``top_tokens`` column. somp_kwargs go to :func:`somp_heads` (tol,
    memory_budget, chunk_size, variant, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    z, layers, ameta = _activations(activations)
    n, L, Hn, dh = z.shape
    if method == "random" and lm_or_weights is None:
        g = torch.Generator().manual_seed(int(seed))
        score = torch.rand(L * Hn, generator=g, dtype=torch.float64)
        nan = torch.full((L * Hn,), float("nan"), dtype=torch.float64)
        meta = {"method": method, "seed": seed, "n_rows": n, "layers": layers, "n_heads": Hn,
                "concept": getattr(concept, "name", None)}
        return HeadScores(_table(layers, Hn, score, [""] * (L * Hn), nan), method, meta)
    w = _weights(lm_or_weights, layers, fold_norm_gain)
    vocab, d_model = w.unembedding.shape
    if w.W_O.shape[1] != d_model:
        raise ValueError(f"W_O has d_model={w.W_O.shape[1]} but the unembedding has d_model={d_model}; they must come from the same model")
    if w.W_O.shape[2] != Hn * dh:
        raise ValueError(
            f"W_O has {w.W_O.shape[2]} input columns but the activations have {Hn} heads x head_dim {dh} = {Hn * dh}; "
            "capture and weights must come from the same model"
        )
    k = _check_k(k, vocab)
    ids, cname = _concept_ids(concept, w.tokenizer, vocab)
    cmask = torch.zeros(vocab, dtype=torch.bool)
    cmask[ids] = True
    gain = w.norm_gain if fold_norm_gain else None
    meta: dict[str, Any] = {
        "method": method, "k": k, "aggregation": aggregation, "fold_norm_gain": bool(fold_norm_gain and gain is not None),
        "concept": cname, "n_concept_tokens": int(ids.numel()), "n_rows": n, "layers": layers,
        "n_heads": Hn, "model": ameta.get("model", w.name), "positions": ameta.get("positions"),
        "seed": seed, "vocab": vocab,
    }
    ntop = max(0, int(top_tokens))
    nan = torch.full((L * Hn,), float("nan"), dtype=torch.float64)
    if method == "random":
        g = torch.Generator().manual_seed(int(seed))
        score = torch.rand(L * Hn, generator=g, dtype=torch.float64)
        table = _table(layers, Hn, score, [""] * (L * Hn), nan)
    elif method == "logit_lens":
        lt = _check_k(lens_top if lens_top is not None else k, vocab)
        meta["lens_top"] = lt
        D, usable, _ = head_dictionary(w.unembedding, gain, None, fold_norm_gain=gain is not None)
        score, first = _logit_lens(z, w.W_O, D, cmask, lt, somp_kwargs.get("memory_budget"),
                                   somp_kwargs.get("chunk_size"))
        tops = []
        for row in first:
            vals, counts = torch.unique(row, return_counts=True)
            order = sorted(range(len(vals)), key=lambda i: (-int(counts[i]), int(vals[i])))[:ntop]
            tops.append(_fmt_tokens(w.tokenizer, [int(vals[i]) for i in order]))
        table = _table(layers, Hn, score.double(), tops, nan)
    else:
        restricted = method == "concept_restricted"
        kk = k
        if restricted and k > ids.numel():
            warnings.warn(f"concept_restricted: k={k} > {ids.numel()} concept tokens; using k={ids.numel()}")
            kk = int(ids.numel())
        res: SOMPResult = somp_heads(
            z, w.W_O, w.unembedding, kk, token_ids=ids if restricted else None, norm_gain=gain,
            fold_norm_gain=gain is not None, layers=layers, aggregation=aggregation, **somp_kwargs,
        )
        ev_final = res.explained_variance[:, -1]
        if restricted:
            score = ev_final
        else:
            hit = cmask[res.indices.clamp_min(0)] & (res.indices >= 0)
            score = (res.gains * hit).sum(dim=1)
        tops = [_fmt_tokens(w.tokenizer, row[:ntop].tolist()) for row in res.indices]
        table = _table(layers, Hn, score.double(), tops, ev_final)
        meta["k_used"] = kk
        meta["somp"] = res.meta
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return HeadScores(table, method, meta)


def explain_head(
    activations: Any,
    lm: Any,
    layer: int,
    head: int,
    k: int = 10,
    *,
    fold_norm_gain: bool = True,
    aggregation: str = "l1",
) -> pd.DataFrame:
    """The tokens one head writes over the captured rows: full-vocabulary SOMP for k steps.

    Returns a DataFrame with step (1..k), token_id, token, explained_variance, gain.
    """
    z, layers, _ = _activations(activations)
    if layer not in layers:
        raise ValueError(f"layer {layer} was not captured; captured layers: {layers}")
    Hn, dh = z.shape[2], z.shape[3]
    if not (0 <= int(head) < Hn):
        raise ValueError(f"head {head} out of range: the model has {Hn} heads per layer")
    w = _weights(lm, [layer], fold_norm_gain)
    vocab = w.unembedding.shape[0]
    k = _check_k(k, vocab)
    if w.W_O.shape[2] != Hn * dh:
        raise ValueError(f"W_O has {w.W_O.shape[2]} columns but the activations have {Hn}x{dh}")
    Wh = w.W_O[0][:, head * dh:(head + 1) * dh]  # (d, dh)
    signal = z[:, layers.index(layer), head] @ Wh.T  # (n, d)
    gain = w.norm_gain if fold_norm_gain else None
    D, usable, _ = head_dictionary(w.unembedding, gain, None, fold_norm_gain=gain is not None)
    res = somp(signal, D, k, aggregation=aggregation, atom_mask=usable)
    idx = res.indices.tolist()
    ev = res.explained_variance.tolist()
    gains = res.gains.tolist()
    rows = []
    for t in range(k):
        if idx[t] < 0:
            break
        rows.append({"step": t + 1, "token_id": idx[t], "token": _decode(w.tokenizer, [idx[t]])[0],
                     "explained_variance": ev[t], "gain": gains[t]})
    return pd.DataFrame(rows, columns=["step", "token_id", "token", "explained_variance", "gain"])
