"""The plain SOMP reference: the textbook loop, the independent check of the fast SOMP in the tests
and benchmarks."""

from __future__ import annotations

import torch

from headpursuit.somp.algorithm import SOMPResult
from headpursuit.somp.dictionary import DEPENDENT_TOL, normalize_atoms

__all__ = ["somp_reference"]


def somp_reference(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    k: int,
    *,
    aggregation: str = "l1",
    atom_mask: torch.Tensor | None = None,
    variant: str = "omp",
    normalized: bool = False,
) -> SOMPResult:
    """Textbook SOMP, one head at a time in the signals' space: at every step recompute
    ``R D^T``, pick the atom, refit all coefficients with ``torch.linalg.lstsq``, recompute R.
    Computes in the signals' dtype (pass float64 for a high-precision reference). Slow; for
    tests and benchmarks only. ``normalized=True`` skips normalising atoms that already have unit
    norm (saves one pass over a large dictionary per call)."""
    squeeze = signals.dim() == 2
    H = signals.unsqueeze(0) if squeeze else signals
    dt = H.dtype if H.dtype in (torch.float32, torch.float64) else torch.float32
    H = H.to(dt)
    dev = H.device
    if normalized:
        D, usable = atoms.to(device=dev, dtype=dt), torch.ones(atoms.shape[0], dtype=torch.bool, device=dev)
    else:
        D, usable = normalize_atoms(atoms.to(dev), dt)
    allowed = usable.clone()
    if atom_mask is not None:
        allowed &= torch.as_tensor(atom_mask, dtype=torch.bool).to(dev)
    nh, n, _ = H.shape
    # every tensor on the signals' device (a CPU mask on CUDA signals fails in masked_fill)
    idx = torch.full((nh, k), -1, dtype=torch.long, device=dev)
    coef = torch.zeros(nh, n, k, dtype=dt, device=dev)
    ev = torch.zeros(nh, k, dtype=torch.float64, device=dev)
    energy = (H.double() ** 2).sum(dim=(1, 2))
    for h in range(nh):
        X = H[h]
        e = float((X.double() ** 2).sum())
        if e == 0:
            continue
        R = X
        S: list[int] = []
        for t in range(k):
            corr = R @ D.T
            score = corr.abs().sum(0) if aggregation == "l1" else (corr * corr).sum(0)
            if variant == "ormp" and S:
                Q = torch.linalg.qr(D[S].T).Q  # (dim, t) orthonormal basis of the selection
                perp = 1.0 - ((D @ Q) ** 2).sum(1)
                perp = perp.clamp_min(DEPENDENT_TOL)
                score = score / (perp if aggregation == "l2" else perp.sqrt())
            score = score.masked_fill(~allowed, float("-inf"))
            if S:
                score[S] = float("-inf")
            j = int(score.argmax())
            S.append(j)
            DS = D[S]  # (t+1, dim)
            W = torch.linalg.lstsq(DS.T, X.T).solution  # (t+1, n)
            R = X - W.T @ DS
            idx[h, t] = j
            ev[h, t] = 1.0 - float((R.double() ** 2).sum()) / e
        coef[h] = W.T
    if squeeze:
        return SOMPResult(idx[0], coef[0], ev[0], energy[0])
    return SOMPResult(idx, coef, ev, energy)
