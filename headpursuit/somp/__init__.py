"""Simultaneous Orthogonal Matching Pursuit (SOMP), fast and batched over heads.

    res = somp(signals, atoms, k)                    # plain tensors: (heads, samples, dim), (n_atoms, dim)
    res = somp_heads(acts, W_O, unembedding, k)      # head space: z and W_O, signals never materialised
    ref = somp_reference(signals, atoms, k)          # the textbook loop (tests, benchmarks)

One room per job:

    algorithm.py   somp, somp_heads, SOMPResult, HeadSignals: the batched pursuit (its math in the docstring)
    dictionary.py  the atoms: unembedding rows, the final norm's gain, unit rows and norms, selection weights
    kernels.py     the correlation GEMM (oneDNN probe, mm_nt) and the tiled per-step update (Tiler)
    memory.py      available_memory, default_memory_budget: how many heads one batch may hold
    reference.py   somp_reference: the plain loop, the independent check
"""

from __future__ import annotations

from headpursuit.somp.algorithm import HeadSignals, SOMPResult, somp, somp_heads
from headpursuit.somp.dictionary import atom_norms, dictionary_rows, head_dictionary, normalize_atoms, selection_weights
from headpursuit.somp.memory import available_memory, default_memory_budget
from headpursuit.somp.reference import somp_reference

__all__ = [
    "SOMPResult",
    "somp",
    "somp_heads",
    "somp_reference",
    "normalize_atoms",
    "head_dictionary",
    "dictionary_rows",
    "atom_norms",
    "selection_weights",
    "HeadSignals",
    "default_memory_budget",
    "available_memory",
]
