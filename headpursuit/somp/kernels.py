"""The dense kernels of SOMP: the correlations ``X D^T`` (oneDNN's fp32 GEMM on the CPU when it is
available and agrees with torch.mm, probed once), and the per-step elementwise work (residual
update + selection score) run tile by tile on worker threads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["TILE_BYTES", "Tiler", "correlations", "mm_nt", "onednn_ok", "tile_plan"]


_ONEDNN_OK: bool | None = None


def onednn_ok() -> bool:
    """Whether oneDNN's dense fp32 GEMM (``torch.ops.mkldnn._linear_pointwise``, the kernel
    inductor uses for CPU linears) is available and agrees with torch.mm. On AVX-512 CPUs it is
    2-3x faster than the default BLAS for our shapes; set HEADPURSUIT_NO_ONEDNN=1 to disable."""
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        _ONEDNN_OK = False
        if os.environ.get("HEADPURSUIT_NO_ONEDNN", "") in ("", "0"):
            try:
                g = torch.Generator().manual_seed(0)
                x = torch.randn(37, 70, generator=g)
                y = torch.randn(101, 70, generator=g)
                out = torch.ops.mkldnn._linear_pointwise(x, y, None, "none", [], "")
                _ONEDNN_OK = bool(torch.allclose(out, x @ y.T, rtol=1e-5, atol=1e-4))
            except Exception:
                _ONEDNN_OK = False
    return _ONEDNN_OK


def mm_nt(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y.T for 2-D x (m, k), y (n, k) -> (m, n), contiguous."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and y.dtype == torch.float32
        and x.shape[0] * y.shape[0] >= 1 << 16
        and onednn_ok()
    ):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), y.contiguous(), None, "none", [], "")
    return x @ y.T


def correlations(X: torch.Tensor, D: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """X @ D.T (rows, V), optionally computed over chunks of the vocabulary."""
    V = D.shape[0]
    if chunk is None or chunk >= V:
        return mm_nt(X, D)
    out = torch.empty(X.shape[0], V, dtype=X.dtype, device=X.device)
    for v0 in range(0, V, chunk):
        out[:, v0 : v0 + chunk] = mm_nt(X, D[v0 : v0 + chunk])
    return out


# Elementwise work (residual update + score) is done tile by tile so that each tile of C is read
# from memory once per step and stays in cache between the update and the reduction.
TILE_BYTES = 2 << 20


def tile_plan(nw: int, n: int, V: int, elt: int) -> tuple[int, int]:
    per_head = n * V * elt
    if per_head <= TILE_BYTES:
        return max(1, TILE_BYTES // per_head), V
    vv = max(256, (TILE_BYTES // (n * elt)) // 256 * 256)
    return 1, min(V, vv)


class Tiler:
    """Runs the per-step elementwise work (residual update + score) tile by tile.

    On CPU the tiles are shared among ``torch.get_num_threads()`` Python worker threads that each
    run single-threaded torch ops: many small parallel regions would otherwise pay an OpenMP
    barrier per op (very costly on a busy machine), and each worker keeps its tile in cache
    between the update and the reduction."""

    def __init__(self, n: int, V: int, dtype, device, aggregation: str):
        self.n, self.V, self.aggregation = n, V, aggregation
        self.on_gpu = device.type != "cpu"
        self.workers = 1 if self.on_gpu else max(1, torch.get_num_threads())
        self.dtype, self.device = dtype, device
        self.ones = torch.ones(1, 1, n, dtype=dtype, device=device)
        self._bufs: dict[int, torch.Tensor] = {}
        self._pool: ThreadPoolExecutor | None = None

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _buf(self, w: int, hh: int, vv: int) -> torch.Tensor:
        b = self._bufs.get(w)
        if b is None or b.shape[0] < hh or b.shape[2] < vv:
            b = torch.empty(hh, self.n, vv, dtype=self.dtype, device=self.device)
            self._bufs[w] = b
        return b

    def _run_tiles(self, w: int, tiles, C, a, b, score, in_worker: bool = False):
        # Only a pool worker goes single-threaded (the caller restores the count after the pool):
        # setting it on the calling thread would leave the whole process on one thread afterwards.
        if in_worker:
            torch.set_num_threads(1)
        for h0, h1, v0, v1 in tiles:
            Ct = C[h0:h1, :, v0:v1]
            if a is not None:
                Ct.baddbmm_(a[h0:h1], b[h0:h1, :, v0:v1], alpha=-1.0)
            bt = self._buf(w, h1 - h0, v1 - v0)[: h1 - h0, :, : v1 - v0]
            if self.aggregation == "l1":
                torch.abs(Ct, out=bt)
            else:
                torch.mul(Ct, Ct, out=bt)
            ones = self.ones.expand(h1 - h0, 1, self.n)
            if v0 == 0 and v1 == self.V:
                torch.bmm(ones, bt, out=score[h0:h1].unsqueeze(1))
            else:
                score[h0:h1, v0:v1] = torch.bmm(ones, bt).squeeze(1)

    def __call__(self, C, a, b, score):
        """C <- C - a b^T per head (skipped when a is None); score[h, j] = sum_i |C[h, i, j]|
        (squares for "l2")."""
        nw, n, V = C.shape
        if self.on_gpu:
            self._run_tiles(0, [(0, nw, 0, V)], C, a, b, score)
            return
        hh, vv = tile_plan(nw, n, V, C.element_size())
        tiles = [(h0, min(nw, h0 + hh), v0, min(V, v0 + vv)) for h0 in range(0, nw, hh) for v0 in range(0, V, vv)]
        workers = min(self.workers, len(tiles))
        if workers <= 1:
            self._run_tiles(0, tiles, C, a, b, score)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="somp-tiles")
        per = -(-len(tiles) // workers)
        prev = torch.get_num_threads()
        try:
            futs = [
                self._pool.submit(self._run_tiles, w, tiles[w * per : (w + 1) * per], C, a, b, score, True)
                for w in range(workers)
            ]
            for f in futs:
                f.result()
        finally:
            torch.set_num_threads(prev)
