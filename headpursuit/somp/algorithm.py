"""Simultaneous Orthogonal Matching Pursuit (SOMP), fast and batched over heads.

Two entry points:

* :func:`somp` -- plain tensors: ``signals`` (heads, samples, dim) or (samples, dim) and a
  dictionary ``atoms`` (n_atoms, dim).
* :func:`somp_heads` -- head space: captured ``z`` (samples, layers, heads, head_dim) and the
  layers' ``W_O``; each head's signal ``c = W_O[:, h*dh:(h+1)*dh] @ z`` is never materialised
  for all heads at once.

:func:`headpursuit.somp.reference.somp_reference` is the plain textbook loop (per head, d_model
space, ``R D^T`` recomputed and ``torch.linalg.lstsq`` solved at every step), the independent
reference for tests and benchmarks.

The method is the SOMP ranking of Head Pursuit (Basile et al., NeurIPS 2025, arXiv:2510.21518);
what follows is how this implementation computes it. For a batch of heads:

1. ``C = H D^T`` (batch, n, V) is computed once with large matmuls (float32 on CPU).
2. Each step picks, per head, ``j = argmax_j sum_i |C[i, j]|`` (or squared for ``"l2"``) over the
   atoms not yet selected, not masked and not (numerically) in the span of the selected ones.
   The core always works with unit atoms; raw rows (``normalize_atoms=False``) only multiply
   each atom's score by its norm (:func:`selection_weights`), so the default path is untouched.
3. The selected atom is orthonormalised against the previously selected ones by Gram-Schmidt in
   *correlation space*: with ``G_SS = L L^T`` (Cholesky, float64; its inverse is grown one row
   per step), ``p = L[t, :t]``, ``nrm = L[t, t]`` and the atom's Gram row ``g = D_j D^T`` (one
   matmul for the unique atoms selected across the batch in this step),
   ``b_t = (g - p B) / nrm`` is ``q_t D^T`` for the orthonormalised atom ``q_t``;
   ``a_t = <H_i, q_t>`` is computed in float64 from the exact correlations ``H D_j``;
   then ``C <- C - a_t b_t^T`` is the residual's correlation with every atom. On CPU this
   update and the next step's scores run tile by tile (cache-sized) on worker threads.
4. ``||R_t||^2 = ||H||^2 - sum_s ||a_s||^2`` (float64), so the explained variance is exact up to
   float64 rounding; the final least-squares coefficients solve ``W L = A`` (``W G_SS = H D_S^T``).

The big ``C`` carries float32 rounding only into the *choice* of atoms (as any float32 SOMP does);
explained variance and coefficients are computed from float64 small quantities.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from headpursuit.somp.dictionary import (
    DEPENDENT_TOL,
    atom_norms,
    dictionary_rows,
    selection_weights,
)
from headpursuit.somp.dictionary import normalize_atoms as unit_rows  # somp's parameter shadows the name
from headpursuit.somp.kernels import Tiler, correlations, mm_nt
from headpursuit.somp.memory import default_memory_budget

if TYPE_CHECKING:
    from headpursuit.capture import HeadActivations

__all__ = ["HeadSignals", "SOMPResult", "somp", "somp_heads"]


@dataclass
class SOMPResult:
    """What SOMP selected for each head.

    indices: long (heads, k) -- selected atoms in selection order; -1 after a head stopped
        (``tol`` reached, residual exhausted, or an all-zero signal).
    coefficients: (heads, samples, k) -- least-squares coefficients of each sample on the
        selected atoms (same order as ``indices``; 0 for padded steps).
    explained_variance: float64 (heads, k) -- 1 - ||R||^2 / ||H||^2 after each step (repeated
        after a head stopped; 0 for an all-zero signal); with ``center=True`` H is the centred signal.
    signal_energy: float64 (heads,) -- ||H||^2 of each head's samples (centred with ``center=True``).
    head_ids: long (heads, 2) of (layer, head) when produced by :func:`somp_heads`, else None.

    For 2-D input to :func:`somp` the leading heads axis is dropped from every field.
    """

    indices: torch.Tensor
    coefficients: torch.Tensor
    explained_variance: torch.Tensor
    signal_energy: torch.Tensor
    head_ids: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def gains(self) -> torch.Tensor:
        """Explained-variance gain of each step (same shape as ``explained_variance``)."""
        ev = self.explained_variance
        prev = torch.zeros_like(ev[..., :1])
        return torch.diff(ev, dim=-1, prepend=prev)

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])


# ----------------------------------------------------------------------------------------------
# helpers


def _raw_atom_coefficients(coef: torch.Tensor, idx: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Coefficients on the unit atoms -> on the raw atoms (divided by each selected atom's norm)."""
    n = norms.to(device=coef.device, dtype=torch.float64)[idx.clamp_min(0)]
    scale = torch.where(idx >= 0, 1.0 / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))
    return (coef.to(torch.float64) * scale.unsqueeze(-2)).to(coef.dtype)


def _check_k(k: int, n_atoms: int) -> int:
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be a positive integer (number of SOMP steps); got {k!r}") from None
    if k <= 0:
        raise ValueError(f"k must be >= 1 (number of SOMP steps); got {k}")
    if k > n_atoms:
        raise ValueError(
            f"k={k} exceeds the number of usable dictionary atoms ({n_atoms}); lower k or enlarge the dictionary"
        )
    return k


# ----------------------------------------------------------------------------------------------
# signal operators: what the core needs to know about a batch of heads


class _DenseSignals:
    """Explicit signals H (heads, n, dim)."""

    def __init__(self, H: torch.Tensor, dtype: torch.dtype):
        self.H = H
        self.dtype = dtype
        self.n_heads, self.n, self.dim = H.shape

    def bytes_per_head(self, V: int, chunk: int | None = None) -> int:
        return self.n * self.dim * 8  # float64 copy of the batch for exact columns

    def prepare(self, sl: slice, D: torch.Tensor, chunk: int | None):
        Hb = self.H[sl]
        Hc = Hb.to(self.dtype)
        hb = Hc.shape[0]
        V = D.shape[0]
        X = Hc.reshape(hb * self.n, self.dim)
        C = correlations(X, D, chunk).view(hb, self.n, V)
        H64 = Hb.to(torch.float64)
        energy = (H64 * H64).sum(dim=(1, 2))
        return C, energy, _DenseCols(H64)


class _DenseCols:
    def __init__(self, H64: torch.Tensor):
        self.H64 = H64

    def select(self, rows: torch.Tensor) -> _DenseCols:
        return _DenseCols(self.H64[rows])

    def __call__(self, atoms64: torch.Tensor) -> torch.Tensor:
        # atoms64 (hb, dim) -> (hb, n) exact correlations <H_i, D_j>
        return torch.bmm(self.H64, atoms64.unsqueeze(2)).squeeze(2)


class HeadSignals:
    """Signals given implicitly by z (n, L, H, dh) and W_O (L, d, H*dh): c_{l,h} = W_h z_{l,h}.

    The heads are flattened layer-major (``n_heads = L * H``). ``prepare(heads, D, chunk)`` returns,
    for a slice of them, the correlations ``C = c D^T`` (heads, n, V) in ``dtype``, each head's
    energy ``||c||^2`` (float64) and the exact-column operator SOMP needs; ``bytes_per_head(V)`` is
    the extra working memory per head beyond C (for sizing batches).

    center: remove each head's mean over the rows of z (in float64) before anything else; since
    ``c = W_h z`` is linear this centres the signal c."""

    def __init__(self, z: torch.Tensor, W_O: torch.Tensor, dtype: torch.dtype, center: bool = False):
        self.z = z
        self.W = W_O
        self.dtype = dtype
        self.center = center
        self.n, self.L, self.Hn, self.dh = z.shape
        self.dim = W_O.shape[1]
        self.n_heads = self.L * self.Hn

    def _route(self, V: int) -> str:
        direct = self.n * self.dim * V + self.n * self.dh * self.dim
        project = V * self.dim * self.dh + self.n * self.dh * V
        return "direct" if direct <= project else "project"

    def project_chunks(self, V: int, chunk: int | None) -> tuple[int, int]:
        """(atoms, rows) per block of the "project" route: the block's temporaries, ``P = W_h^T D^T``
        (dh, atoms) and ``z P`` (rows, atoms), each stay below 1/8 of the head's C (n, V), so that
        memory stays bounded however many rows there are."""
        target = max(1, self.n * V // 8)
        atoms = min(V, int(chunk) if chunk is not None else max(1024, target // self.dh))
        rows = max(1, min(self.n, target // atoms))
        return atoms, rows

    def bytes_per_head(self, V: int, chunk: int | None = None) -> int:
        elt = torch.finfo(self.dtype).bits // 8
        extra = self.dim * self.dh * 8 * 2 + self.n * self.dh * 8 + self.n * self.dh * elt
        if self._route(V) == "direct":
            extra += self.n * self.dim * elt
        else:
            atoms, rows = self.project_chunks(V, chunk)
            # P as computed and its contiguous copy, plus the block of z P
            extra += 2 * atoms * self.dh * elt + rows * atoms * elt
        return extra

    def _gather(self, sl: slice):
        # index tensors on the CPU work for z and W_O on any device; only this batch of heads is
        # moved to the compute device (in prepare), so z may stay where it was captured
        flat = torch.arange(self.n_heads)[sl]
        li, hi = flat // self.Hn, flat % self.Hn
        Zb = self.z[:, li, hi, :].permute(1, 0, 2)  # (hb, n, dh)
        Wv = self.W.view(self.L, self.dim, self.Hn, self.dh)
        Wb = Wv[li, :, hi, :]  # (hb, d, dh)
        return Zb, Wb

    def prepare(self, sl: slice, D: torch.Tensor, chunk: int | None):
        Zb, Wb = self._gather(sl)
        hb = Zb.shape[0]
        V = D.shape[0]
        dev = D.device
        if self.center:
            Z64 = Zb.to(device=dev, dtype=torch.float64)
            Z64 = Z64 - Z64.mean(dim=1, keepdim=True)
            Zc = Z64.to(self.dtype)
        else:
            Zc = Zb.to(device=dev, dtype=self.dtype)
        Wc = Wb.to(device=dev, dtype=self.dtype)
        if self._route(V) == "direct":
            Hb = torch.matmul(Zc, Wc.transpose(1, 2))  # (hb, n, d)
            C = correlations(Hb.reshape(hb * self.n, self.dim), D, chunk).view(hb, self.n, V)
            del Hb
        else:
            # P = D W_h for all heads of the batch as one GEMM: (v, d) @ (d, hb*dh) per block of
            # the vocabulary, and z P per block of rows, written into C block by block
            C = torch.empty(hb, self.n, V, dtype=self.dtype, device=dev)
            atoms, rows = self.project_chunks(V, chunk)
            WcatT = Wc.transpose(1, 2).reshape(hb * self.dh, self.dim)  # row (h, k) = W_h[:, k]
            for v0 in range(0, V, atoms):
                v1 = min(V, v0 + atoms)
                # (hb, dh, v), made contiguous once so that bmm does not copy it for every block of rows
                P = mm_nt(D[v0:v1], WcatT).view(-1, hb, self.dh).permute(1, 2, 0).contiguous()
                for r0 in range(0, self.n, rows):
                    r1 = min(self.n, r0 + rows)
                    C[:, r0:r1, v0:v1] = torch.bmm(Zc[:, r0:r1], P)
                del P
        del Zc, Wc
        if not self.center:
            Z64 = Zb.to(device=dev, dtype=torch.float64)
        W64 = Wb.to(device=dev, dtype=torch.float64)
        M = torch.bmm(W64.transpose(1, 2), W64)  # (hb, dh, dh) = W_h^T W_h
        energy = (torch.bmm(Z64, M) * Z64).sum(dim=(1, 2)).clamp_min(0.0)
        return C, energy, _HeadCols(Z64, W64)


class _HeadCols:
    def __init__(self, Z64: torch.Tensor, W64: torch.Tensor):
        self.Z64, self.W64 = Z64, W64

    def select(self, rows: torch.Tensor) -> _HeadCols:
        return _HeadCols(self.Z64[rows], self.W64[rows])

    def __call__(self, atoms64: torch.Tensor) -> torch.Tensor:
        u = torch.bmm(self.W64.transpose(1, 2), atoms64.unsqueeze(2))  # (hb, dh, 1) = W_h^T D_j
        return torch.bmm(self.Z64, u).squeeze(2)


# ----------------------------------------------------------------------------------------------
# the core


def _keep_rows_(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``t[keep]`` for ascending ``keep``, computed in place: row i takes row keep[i] >= i, so
    copying in increasing i never overwrites a row still to be read. Returns a view of ``t``."""
    for i, r in enumerate(keep.tolist()):
        if i != r:
            t[i].copy_(t[r])
    return t[: keep.numel()]


def _somp_batch(
    C: torch.Tensor,
    energy: torch.Tensor,
    cols,
    D: torch.Tensor,
    blocked: torch.Tensor | None,
    k: int,
    tol: float | None,
    aggregation: str,
    variant: str = "omp",
    atom_weight: torch.Tensor | None = None,
):
    """SOMP on one batch of heads given C = H D^T (hb, n, V), which is modified in place.

    atom_weight: (V,) multiplies every atom's selection score (see :func:`selection_weights`).
    Returns indices (hb, k) long, coefficients (hb, n, k) float64, explained variance (hb, k) f64.
    """
    hb, n, V = C.shape
    dev = C.device
    cdt = C.dtype
    f64 = torch.float64

    idx_out = torch.full((hb, k), -1, dtype=torch.long, device=dev)
    ev_out = torch.zeros(hb, k, dtype=f64, device=dev)
    coef_out = torch.zeros(hb, n, k, dtype=f64, device=dev)

    # Working set: rows of the batch still active (compacted when many stop).
    rows = torch.arange(hb, device=dev)
    E = energy.to(f64)
    active = E > 0
    # residual energy below this fraction is rounding noise of C: nothing left to explain
    exhausted = min((100.0 * torch.finfo(cdt).eps) ** 2, 1e-8)
    Bq = torch.empty(hb, k, V, dtype=cdt, device=dev)  # b_s = q_s D^T (rows < t are written)
    # inverse of the Cholesky factor L of G_SS (lower triangular; identity rows for unused steps)
    L = torch.eye(k, dtype=f64, device=dev).repeat(hb, 1, 1)
    A = torch.zeros(hb, n, k, dtype=f64, device=dev)  # <H_i, q_s>
    S = torch.full((hb, k), -1, dtype=torch.long, device=dev)
    proj2 = torch.zeros(hb, V, dtype=torch.float32 if cdt != f64 else f64, device=dev)  # ||P_span(q) D_j||^2
    excl = torch.zeros(hb, V, dtype=torch.bool, device=dev)
    if blocked is not None:
        excl |= blocked
    explained = torch.zeros(hb, dtype=f64, device=dev)
    steps_done = torch.zeros(hb, dtype=torch.long, device=dev)
    score = torch.empty(hb, V, dtype=cdt, device=dev)
    tiler = Tiler(n, V, cdt, dev, aggregation)
    try:
        tiler(C, None, None, score)
        state = _BatchState(C, E, cols, score, rows, active, exhausted, Bq, L, A, S, proj2, excl, explained,
                            steps_done, idx_out, ev_out, coef_out, atom_weight)  # fmt: skip
        return _somp_steps(state, D, k, tol, variant, tiler)
    finally:
        tiler.close()


@dataclass
class _BatchState:
    """The working set of one batch of heads during the SOMP steps (see `_somp_batch`)."""

    C: torch.Tensor
    E: torch.Tensor
    cols: Any
    score: torch.Tensor
    rows: torch.Tensor
    active: torch.Tensor
    exhausted: float
    Bq: torch.Tensor
    L: torch.Tensor
    A: torch.Tensor
    S: torch.Tensor
    proj2: torch.Tensor
    excl: torch.Tensor
    explained: torch.Tensor
    steps_done: torch.Tensor
    idx_out: torch.Tensor
    ev_out: torch.Tensor
    coef_out: torch.Tensor
    atom_weight: torch.Tensor | None = None


def _somp_steps(state: _BatchState, D, k, tol, variant, tiler):
    C, E, cols, score, rows, active, exhausted = (state.C, state.E, state.cols, state.score, state.rows,
                                                  state.active, state.exhausted)  # fmt: skip
    Bq, L, A, S, proj2, excl = state.Bq, state.L, state.A, state.S, state.proj2, state.excl
    explained, steps_done, atom_weight = state.explained, state.steps_done, state.atom_weight
    idx_out, ev_out, coef_out = state.idx_out, state.ev_out, state.coef_out
    hb, n, V = C.shape
    dev = C.device
    cdt = C.dtype
    f64 = torch.float64
    aggregation = tiler.aggregation

    def finish(sel: torch.Tensor):
        """Write final results for working-set rows ``sel`` (bool over the working set)."""
        if not bool(sel.any()):
            return
        r = rows[sel]
        # W L = A  <=>  W G_SS = H D_S^T ; columns of unused steps are 0 (A's are 0, L^{-1} identity)
        W = torch.bmm(A[sel], L[sel])
        coef_out[r] = W
        idx_out[r] = S[sel]

    for t in range(k):
        nw = rows.numel()
        if nw == 0:
            break
        # ---- selection
        if variant == "ormp" and t > 0:
            # correlation with the *normalised* component of each atom orthogonal to the selection
            denom = (1.0 - proj2).clamp_min(DEPENDENT_TOL)
            score.div_(denom if aggregation == "l2" else denom.sqrt_())
        if atom_weight is not None:
            # raw (not normalised) atoms: sum_i |<R_i, D_j>| = ||D_j|| sum_i |<R_i, D_j / ||D_j||>|
            score.mul_(atom_weight)
        score.masked_fill_(excl, float("-inf"))
        best, j = score.max(dim=1)
        active = active & torch.isfinite(best) & (best > 0)
        if not bool(active.any()):
            break
        j = torch.where(active, j, torch.zeros_like(j))
        # ---- Gram rows of the unique selected atoms (one matmul)
        uniq, inv = torch.unique(j, return_inverse=True)  # stopped heads carry j=0 (zeroed below)
        G = mm_nt(D[uniq], D)  # (U, V)
        g = G if uniq.numel() == nw and bool((inv == torch.arange(nw, device=dev)).all()) else G[inv]
        del G
        # ---- float64 Cholesky row: p = L[:t,:t]^{-1} G_S,j ; nrm = sqrt(G_jj - |p|^2)
        # (``L`` holds the inverse factor, grown one row per step)
        dj64 = D[j].to(f64)  # (nw, d): the float32 atoms, exactly, in float64
        if t > 0:
            Gsj = torch.bmm(D[S[:, :t].clamp_min(0)].to(f64), dj64.unsqueeze(2))  # (nw, t, 1)
            p = torch.bmm(L[:, :t, :t], Gsj).squeeze(2)  # (nw, t)
        else:
            p = torch.zeros(nw, 0, dtype=f64, device=dev)
        p = p * active[:, None]
        nrm2 = (dj64 * dj64).sum(1) - (p * p).sum(1)
        nrm = torch.where(active, torch.sqrt(nrm2.clamp_min(1e-300)), torch.ones_like(nrm2))
        # ---- exact correlations with the selected atom -> coefficients on q_t
        c0j = cols(dj64)  # (nw, n)
        a = (c0j - torch.bmm(A[:, :, :t], p.unsqueeze(2)).squeeze(2)) / nrm[:, None]
        a = a * active[:, None]
        # ---- b_t = (g - p B) / nrm   (length V, dtype of C)
        if t > 0:
            g.unsqueeze(1).baddbmm_(p.to(cdt).unsqueeze(1), Bq[:, :t, :], alpha=-1.0)
        b = g.mul_((active / nrm).to(cdt)[:, None])
        # ---- record the step
        S[:, t] = torch.where(active, j, torch.full_like(j, -1))
        # new row of L^{-1}: [-(p^T L^{-1}) / nrm, 1 / nrm]  (identity row for stopped heads)
        if t > 0:
            L[:, t, :t] = -torch.bmm(p.unsqueeze(1), L[:, :t, :t]).squeeze(1) / nrm[:, None]
        L[:, t, t] = 1.0 / nrm
        A[:, :, t] = a
        Bq[:, t, :] = b
        explained = explained + (a * a).sum(1)
        steps_done = steps_done + active.long()
        E_safe = torch.where(E > 0, E, torch.ones_like(E))
        ev_t = torch.where(E > 0, (explained / E_safe).clamp(0.0, 1.0), torch.zeros_like(E))
        ev_out[rows, t:] = ev_t[:, None]
        proj2.addcmul_(b, b)
        excl[torch.arange(nw, device=dev), j] |= active
        excl |= proj2 > (1.0 - DEPENDENT_TOL)
        # a residual at rounding level has nothing left to explain: stop (indices -1 from here)
        active = active & (E - explained > exhausted * E)
        if tol is not None:
            active = active & (ev_t < tol)
        if t + 1 == k:
            break
        # ---- compact the working set when many heads stopped
        n_act = int(active.sum())
        if n_act < nw and n_act <= 0.75 * nw:
            finish(~active)
            keep = active.nonzero().squeeze(1)
            rows = rows[keep]
            # the two big tensors are compacted in place: ``C[keep]`` would copy C while the
            # caller still holds it (up to 1.75x C at once)
            C = _keep_rows_(C, keep)
            Bq = _keep_rows_(Bq, keep)
            E, L, A, S = E[keep], L[keep], A[keep], S[keep]
            proj2, excl, explained = proj2[keep], excl[keep], explained[keep]
            steps_done, active = steps_done[keep], active[keep]
            cols = cols.select(keep)
            a, b, score = a[keep], b[keep], score[keep]
            if n_act == 0:
                break
        # ---- residual correlations C <- C - a b^T and next scores
        tiler(C, a.to(cdt).unsqueeze(2), b.unsqueeze(1), score)
    finish(torch.ones(rows.numel(), dtype=torch.bool, device=dev))
    return idx_out, coef_out, ev_out


def _run(
    op,
    D: torch.Tensor,
    blocked: torch.Tensor | None,
    k: int,
    tol,
    aggregation: str,
    chunk_size,
    memory_budget,
    head_batch,
    variant: str = "omp",
    atom_weight: torch.Tensor | None = None,
):
    V = D.shape[0]
    n = op.n
    elt = torch.finfo(op.dtype).bits // 8
    per_head = (
        n * V * elt  # C
        + (k + 4) * V * elt  # B rows, Gram rows, proj2, score
        + V  # exclusion mask
        + op.bytes_per_head(V, chunk_size)
        + n * k * 8 * 3
    )
    budget = memory_budget if memory_budget is not None else default_memory_budget(D.device)
    if head_batch is None:
        head_batch = max(1, int(budget // max(per_head, 1)))
    head_batch = max(1, min(int(head_batch), op.n_heads))
    idx_all, coef_all, ev_all, en_all = [], [], [], []
    for h0 in range(0, op.n_heads, head_batch):
        sl = slice(h0, min(op.n_heads, h0 + head_batch))
        C, energy, cols = op.prepare(sl, D, chunk_size)
        blk = None
        if blocked is not None:
            blk = blocked[sl] if blocked.dim() == 2 else blocked.unsqueeze(0).expand(C.shape[0], V)
        idx, coef, ev = _somp_batch(C, energy, cols, D, blk, k, tol, aggregation, variant, atom_weight)
        del C
        idx_all.append(idx)
        coef_all.append(coef)
        ev_all.append(ev)
        en_all.append(energy.to(torch.float64))
    return (
        torch.cat(idx_all),
        torch.cat(coef_all),
        torch.cat(ev_all),
        torch.cat(en_all),
        {"head_batch": head_batch, "bytes_per_head": per_head},
    )


def _validate_common(k, tol, aggregation, variant="omp"):
    if variant not in ("omp", "ormp"):
        raise ValueError(
            f"variant must be 'omp' (SOMP, default) or 'ormp' (order-recursive, as SPAMS); got {variant!r}"
        )
    if aggregation not in ("l1", "l2"):
        raise ValueError(
            f"aggregation must be 'l1' (sum of |correlations|) or 'l2' (sum of squares); got {aggregation!r}"
        )
    if tol is not None:
        tol = float(tol)
        if not (0.0 < tol <= 1.0):
            raise ValueError(f"tol is a target explained variance in (0, 1]; got {tol}")
    return tol


def _compute_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    if t.dtype == torch.float64:
        return torch.float64
    if t.device.type != "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return t.dtype
    return torch.float32


def somp(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    k: int,
    *,
    tol: float | None = None,
    aggregation: str = "l1",
    atom_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    head_batch: int | None = None,
    dtype: torch.dtype | None = None,
    variant: str = "omp",
    center: bool = False,
    normalize_atoms: bool = True,
) -> SOMPResult:
    """Simultaneous OMP of each head's samples over a shared dictionary.

    signals: (heads, samples, dim) or (samples, dim). atoms: (n_atoms, dim); rows are normalised
    to unit norm here (all-zero rows are never selected). k: number of steps.
    tol: stop a head once its explained variance reaches tol (its remaining indices are -1).
    aggregation: "l1" picks argmax_j sum_i |<R_i, D_j>| (default), "l2" sum_i <R_i, D_j>^2.
    atom_mask: bool (n_atoms,) or (heads, n_atoms); True = atom may be selected.
    chunk_size: atoms per chunk when computing H D^T (bounds temporaries).
    memory_budget: bytes of working memory for one batch of heads (default
    :func:`default_memory_budget` of the signals' device: half the free GPU memory, or 30% of the
    available RAM capped at 6 GiB); head_batch overrides it. dtype: dtype of the big correlation tensor (float32 on CPU).
    variant: "omp" (default, the method of the paper) or "ormp": order-recursive matching pursuit,
    which scores each atom by its correlation with the residual divided by the norm of the atom's
    component orthogonal to the atoms already selected (what ``spams.somp`` computes, with "l2").
    center: remove each head's mean over samples (float64) first; the explained variance is then
    that of the centred signal (see :func:`somp_heads`).
    normalize_atoms: False selects with the raw rows, ``argmax_j sum_i |<R_i, D_j>|`` (their norms
    weight the choice); the least-squares fit, residual and explained variance do not depend on
    the atoms' norms, and the coefficients are those of the raw rows.
    """
    if not isinstance(signals, torch.Tensor) or not isinstance(atoms, torch.Tensor):
        raise ValueError("somp expects torch tensors: signals (heads, samples, dim) and atoms (n_atoms, dim)")
    tol = _validate_common(k, tol, aggregation, variant)
    squeeze = signals.dim() == 2
    H = signals.unsqueeze(0) if squeeze else signals
    if H.dim() != 3:
        raise ValueError(f"signals must be (heads, samples, dim) or (samples, dim); got shape {tuple(signals.shape)}")
    if atoms.dim() != 2 or atoms.shape[1] != H.shape[2]:
        raise ValueError(
            f"atoms must be (n_atoms, dim={H.shape[2]}) to match the signals; got shape {tuple(atoms.shape)}"
        )
    if H.shape[0] == 0 or H.shape[1] == 0:
        raise ValueError(f"signals are empty (shape {tuple(signals.shape)}): need at least one head and one sample")
    cdt = _compute_dtype(H, dtype)
    D, usable = unit_rows(atoms.to(H.device), cdt)
    blocked = ~usable.to(H.device)
    if atom_mask is not None:
        m = torch.as_tensor(atom_mask, dtype=torch.bool, device=H.device)
        if m.dim() == 1 and m.shape[0] == D.shape[0]:
            blocked = blocked | ~m
        elif m.dim() == 2 and m.shape == (H.shape[0], D.shape[0]):
            blocked = blocked.unsqueeze(0) | ~m
        else:
            raise ValueError(
                f"atom_mask must be bool (n_atoms,) or (heads, n_atoms) = ({H.shape[0]}, {D.shape[0]}); "
                f"got shape {tuple(m.shape)}"
            )
    n_allowed = int((~blocked).sum(-1).min()) if blocked.dim() == 2 else int((~blocked).sum())
    k = _check_k(k, n_allowed)
    Hs = H.detach()
    if center:
        Hs = Hs.to(torch.float64)
        Hs = Hs - Hs.mean(dim=1, keepdim=True)
    op = _DenseSignals(Hs, cdt)
    blocked_or_none = blocked if bool(blocked.any()) else None  # None: nothing to mask
    norms = None if normalize_atoms else atom_norms(atoms.to(H.device))
    weight = None if norms is None else selection_weights(norms, aggregation, variant, cdt, H.device)
    idx, coef, ev, energy, meta = _run(
        op, D, blocked_or_none, k, tol, aggregation, chunk_size, memory_budget, head_batch, variant, weight
    )
    if norms is not None:
        coef = _raw_atom_coefficients(coef, idx, norms)
        meta = {**meta, "normalize_atoms": False}
    if center:
        meta = {**meta, "center": True}
    coef = coef.to(H.dtype if H.dtype in (torch.float32, torch.float64) else torch.float32)
    res = SOMPResult(idx, coef, ev, energy, None, meta)
    if squeeze:
        res = SOMPResult(idx[0], coef[0], ev[0], energy[0], None, meta)
    return res


def somp_heads(
    z: torch.Tensor | HeadActivations,
    W_O: torch.Tensor,
    dictionary: torch.Tensor,
    k: int,
    *,
    token_ids: torch.Tensor | Sequence[int] | None = None,
    norm_gain: torch.Tensor | None = None,
    fold_norm_gain: bool | None = None,
    layers: Sequence[int] | None = None,
    tol: float | None = None,
    aggregation: str = "l1",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    head_batch: int | None = None,
    dtype: torch.dtype | None = None,
    variant: str = "omp",
    center: bool = False,
    normalize_atoms: bool = True,
) -> SOMPResult:
    """SOMP for every head from captured ``z`` without materialising the per-head signals.

    z: (n, L, H, dh) tensor or a HeadActivations (its ``.z`` and ``.layers`` are used).
    W_O: (L, d_model, H*dh) -- the output projections of the same L layers as z (in order).
    dictionary: the unembedding (vocab, d_model). With ``norm_gain`` given the final norm's gain is
    folded in (``U * gamma``) unless ``fold_norm_gain=False``; ``token_ids`` restricts the
    dictionary to those vocabulary ids. Rows are normalised unless ``normalize_atoms=False``.

    center: remove each head's mean over the rows before pursuit (z is centred per head in float64;
    ``c = W_h z`` is linear, so this centres c). The explained variance is then the variance of
    (mean + reconstruction) over the variance of the signal: the mean is constant over rows, so
    that is ``sum_i ||rec_i - mean(rec)||^2 / ||H - mean||^2``; the reconstruction of the centred
    rows is their orthogonal projection onto span(D_S), so it has mean 0 and, by Pythagoras,
    ``||rec||^2 = ||H - mean||^2 - ||R||^2``: the ratio is ``1 - ||R||^2 / ||H - mean||^2``,
    what is reported (``signal_energy`` is ``||H - mean||^2``).
    normalize_atoms: False selects with the raw rows (``argmax_j sum_i |<R_i, D_j>|``, so an atom's
    norm weights its choice); fit and explained variance do not depend on the norms; the
    coefficients are those of the raw rows. Ignored by ``variant="ormp"`` (scale-invariant).

    Devices and memory: the work runs on W_O's device; z may live elsewhere (e.g. on the CPU),
    each batch of heads is moved when it is prepared. ``memory_budget`` (bytes; default
    :func:`default_memory_budget` of W_O's device) bounds the working set of one batch of heads at
    any number of rows: the correlations C are built block by block of atoms and rows. The
    dictionary itself (vocab x d_model in the compute dtype) comes on top of it.

    Returns a SOMPResult with the heads axis flattened layer-major (L*H), ``indices`` as
    *vocabulary token ids* (not positions in ``token_ids``), and ``head_ids`` (L*H, 2) giving
    (layer, head) with the real layer numbers (``layers`` or the activations' ``.layers``).
    """
    if hasattr(z, "z"):
        if layers is None:
            layers = list(getattr(z, "layers", None) or [])
        z = z.z
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be (samples, layers, heads, head_dim); got {shape}")
    n, Lz, Hn, dh = z.shape
    if n == 0:
        raise ValueError("z has no rows: capture activations for at least one sample first")
    W_O = W_O.detach()
    if W_O.dim() == 2:
        W_O = W_O.unsqueeze(0)
    if W_O.dim() != 3 or W_O.shape[0] != Lz or W_O.shape[2] != Hn * dh:
        raise ValueError(
            f"W_O must be (layers={Lz}, d_model, heads*head_dim={Hn * dh}) to match z {tuple(z.shape)}; "
            f"got {tuple(W_O.shape)} (pass the W_O of exactly the captured layers, in order)"
        )
    if dictionary.dim() != 2 or dictionary.shape[1] != W_O.shape[1]:
        raise ValueError(f"dictionary must be (vocab, d_model={W_O.shape[1]}); got {tuple(dictionary.shape)}")
    tol = _validate_common(k, tol, aggregation, variant)
    if fold_norm_gain is None:
        fold_norm_gain = norm_gain is not None
    if fold_norm_gain and norm_gain is None:
        raise ValueError("fold_norm_gain=True needs norm_gain (the final norm's gain, e.g. lm.final_norm_gain())")
    dev = W_O.device
    cdt = _compute_dtype(W_O, dtype)
    rows, ids = dictionary_rows(dictionary.to(dev), norm_gain, token_ids, fold_norm_gain=fold_norm_gain)
    D, usable = unit_rows(rows, cdt)
    norms = None if normalize_atoms else atom_norms(rows)
    del rows  # a float64 copy of the dictionary when the gain is folded: not kept through the batches
    k = _check_k(k, int(usable.sum()))
    blocked = None if bool(usable.all()) else ~usable.to(dev)
    # z stays on its device (e.g. captured on the CPU): each batch of heads is moved to W_O's
    # device when it is prepared, so z need not fit there at once
    op = HeadSignals(z.detach(), W_O, cdt, center=center)
    weight = None if norms is None else selection_weights(norms, aggregation, variant, cdt, dev)
    idx, coef, ev, energy, meta = _run(
        op, D, blocked, k, tol, aggregation, chunk_size, memory_budget, head_batch, variant, weight
    )
    if norms is not None:
        coef = _raw_atom_coefficients(coef, idx, norms)
    if ids is not None:
        ids_dev = ids.to(idx.device)
        idx = torch.where(idx >= 0, ids_dev[idx.clamp_min(0)], idx)
    if layers is None or len(layers) != Lz:
        layers = list(range(Lz))
    lay = torch.as_tensor(list(layers), dtype=torch.long)
    head_ids = torch.stack([lay.repeat_interleave(Hn), torch.arange(Hn).repeat(Lz)], dim=1)
    meta = {
        **meta,
        "route": op._route(D.shape[0]),
        "fold_norm_gain": bool(fold_norm_gain),
        "restricted": ids is not None,
        "center": bool(center),
        "normalize_atoms": bool(normalize_atoms),
    }
    return SOMPResult(idx, coef.to(torch.float32), ev, energy, head_ids, meta)
