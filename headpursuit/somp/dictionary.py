"""The SOMP dictionary: unembedding rows (the final norm's gain folded in, restricted to chosen
tokens), unit-normalised atoms and their norms, and the selection weights of raw atoms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEPENDENT_TOL",
    "atom_norms",
    "dictionary_rows",
    "head_dictionary",
    "normalize_atoms",
    "selection_weights",
]

# An atom whose squared distance to the span of the already selected atoms is below this (for
# unit atoms) is treated as linearly dependent and never selected: selecting it would explain
# nothing and make the least-squares problem singular.
DEPENDENT_TOL = 1e-6


def normalize_atoms(atoms: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows scaled to unit norm (norms accumulated in float64). Returns (atoms, usable) where
    ``usable`` is False for all-zero (or non-finite) rows, which are set to zero and must never be
    selected."""
    if atoms.dim() != 2:
        raise ValueError(f"atoms must be 2-D (n_atoms, dim); got shape {tuple(atoms.shape)}")
    dtype = dtype or (atoms.dtype if atoms.dtype in (torch.float32, torch.float64) else torch.float32)
    a = atoms.detach()
    norms = torch.linalg.vector_norm(a, dim=1, dtype=torch.float64)
    usable = torch.isfinite(norms) & (norms > 0)
    scale = torch.where(usable, 1.0 / torch.where(usable, norms, torch.ones_like(norms)), torch.zeros_like(norms))
    out = a.to(dtype) * scale.to(dtype)[:, None]
    if not bool(usable.all()):
        out[~usable] = 0.0
    return out, usable


def dictionary_rows(
    unembedding: torch.Tensor,
    norm_gain: torch.Tensor | None = None,
    token_ids: torch.Tensor | Sequence[int] | None = None,
    *,
    fold_norm_gain: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The raw (not normalised) dictionary rows from an unembedding matrix (vocab, d_model):
    restricted to ``token_ids`` when given, the final norm's gain folded in (``U * gamma``, float64)
    when ``fold_norm_gain`` and a gain is given. Returns (rows, token_ids as long tensor or None)."""
    U = unembedding.detach()
    if U.dim() != 2:
        raise ValueError(f"unembedding must be (vocab, d_model); got shape {tuple(U.shape)}")
    ids = None
    if token_ids is not None:
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().cpu()
        if ids.numel() == 0:
            raise ValueError("token_ids is empty: give at least one token id (or None for the full vocabulary)")
        if int(ids.min()) < 0 or int(ids.max()) >= U.shape[0]:
            raise ValueError(
                f"token_ids must lie in [0, {U.shape[0]}) (the unembedding's vocabulary); "
                f"got range [{int(ids.min())}, {int(ids.max())}]"
            )
        U = U[ids.to(U.device)]
    if fold_norm_gain and norm_gain is not None:
        g = norm_gain.detach().to(device=U.device, dtype=torch.float64).flatten()
        if g.numel() != U.shape[1]:
            raise ValueError(f"final norm gain has {g.numel()} entries but the unembedding has d_model={U.shape[1]}")
        U = U.to(torch.float64) * g[None, :]
    return U, ids


def head_dictionary(
    unembedding: torch.Tensor,
    norm_gain: torch.Tensor | None = None,
    token_ids: torch.Tensor | Sequence[int] | None = None,
    *,
    fold_norm_gain: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The SOMP dictionary from an unembedding matrix (vocab, d_model): the final norm's gain folded
    in (``U * gamma``) when ``fold_norm_gain`` and a gain is given, restricted to ``token_ids``
    when given, rows normalised. Returns (atoms, usable, token_ids as long tensor or None)."""
    U, ids = dictionary_rows(unembedding, norm_gain, token_ids, fold_norm_gain=fold_norm_gain)
    atoms, usable = normalize_atoms(U, dtype)
    return atoms, usable, ids


def atom_norms(rows: torch.Tensor) -> torch.Tensor:
    """float64 (n_atoms,) Euclidean norms of dictionary rows, accumulated in float64 as
    :func:`normalize_atoms` does (0 for non-finite rows, which are never selected)."""
    norms = torch.linalg.vector_norm(rows.detach(), dim=1, dtype=torch.float64)
    return torch.where(torch.isfinite(norms), norms, torch.zeros_like(norms))


def selection_weights(
    norms: torch.Tensor, aggregation: str, variant: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Per-atom factors that turn the selection scores of unit atoms into those of the raw atoms
    (``normalize_atoms=False``): ``||D_j||`` for "l1", ``||D_j||^2`` for "l2". None for "ormp",
    whose score (the correlation with the normalised part of the atom orthogonal to the selection)
    does not depend on the atoms' norms. The fit on the support never does: least squares on
    ``D_S`` and on ``diag(s) D_S`` give the same residual."""
    if variant == "ormp":
        return None
    w = norms.to(torch.float64)
    if aggregation == "l2":
        w = w * w
    return w.to(device=device, dtype=dtype)
