"""Deterministic torch: the same inputs give the same numbers in every run, on CPU and on CUDA.

    previous = set_deterministic()      # before the first CUDA operation, for cuBLAS
    ...
    previous.restore()                  # or: with deterministic(): ...

Ranking is deterministic without it (float32, ties broken by (score, layer, head), random sets
from their seeds). This is for the rest of the run, generation included: torch's deterministic
algorithms, cuDNN without benchmarking, no TF32 (a TF32 matmul on a GPU rounds differently from a
float32 one on the CPU), and ``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS needs for deterministic
GEMMs and reads when it creates its handle (so set it before the first CUDA matmul).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["DeterminismSettings", "set_deterministic", "deterministic", "CUBLAS_WORKSPACE"]

# The workspace size cuBLAS documents for reproducible results (":16:8" uses less memory, is slower).
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class DeterminismSettings:
    """torch's global settings that decide determinism, as read by :meth:`current`."""

    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cuda_matmul_tf32: bool
    cudnn_tf32: bool
    cublas_workspace: str | None

    @classmethod
    def current(cls) -> DeterminismSettings:
        return cls(
            algorithms=torch.are_deterministic_algorithms_enabled(),
            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            cuda_matmul_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            cudnn_tf32=bool(torch.backends.cudnn.allow_tf32),
            cublas_workspace=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    def restore(self) -> None:
        """Put these settings back in force."""
        torch.use_deterministic_algorithms(self.algorithms, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = self.cuda_matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


def set_deterministic(enabled: bool = True, *, warn_only: bool = True) -> DeterminismSettings:
    """Turn torch's deterministic mode on (or off with ``enabled=False``); returns the settings
    that were in force, to :meth:`~DeterminismSettings.restore` them.

    On: ``torch.use_deterministic_algorithms(True, warn_only=warn_only)`` (``warn_only`` warns
    instead of raising for an operation without a deterministic implementation), cuDNN
    deterministic without benchmarking, TF32 off for matmuls and cuDNN, and
    ``CUBLAS_WORKSPACE_CONFIG`` set (unless already set). Off: deterministic algorithms and cuDNN's
    deterministic flag off; the TF32, benchmark and cuBLAS settings are left as they are."""
    previous = DeterminismSettings.current()
    torch.use_deterministic_algorithms(bool(enabled), warn_only=warn_only)
    torch.backends.cudnn.deterministic = bool(enabled)
    if enabled:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return previous


@contextmanager
def deterministic(enabled: bool = True, *, warn_only: bool = True) -> Iterator[DeterminismSettings]:
    """:func:`set_deterministic` for the block; the previous settings are restored on exit."""
    previous = set_deterministic(enabled, warn_only=warn_only)
    try:
        yield previous
    finally:
        previous.restore()
