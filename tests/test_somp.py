"""SOMP: exact math against the plain reference (and SPAMS when installed), edge cases, head space."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from headpursuit.somp import (
    HeadSignals,
    SOMPResult,
    available_memory,
    default_memory_budget,
    head_dictionary,
    somp,
    somp_heads,
    somp_reference,
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture
def rand_problem():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(5, 12, 48, generator=g, dtype=torch.float64)
    D = torch.randn(300, 48, generator=g, dtype=torch.float64) * 3.0  # not normalised on purpose
    return H, D


# ------------------------------------------------------------------------------------------
# exact recovery


def test_exact_recovery_batched_supports():
    g = torch.Generator().manual_seed(1)
    V, d, s, heads, n = 2000, 256, 6, 4, 40
    D = _unit(torch.randn(V, d, generator=g))
    supports = [torch.randperm(V, generator=g)[: s - h] for h in range(heads)]  # different sizes
    H = torch.stack([torch.randn(n, sup.numel(), generator=g) @ D[sup] for sup in supports])
    res = somp(H, D, s)
    for h, sup in enumerate(supports):
        m = sup.numel()
        assert set(res.indices[h, :m].tolist()) == set(sup.tolist())
        assert res.explained_variance[h, m - 1] == pytest.approx(1.0, abs=1e-6)
        # residual exhausted: the head stops, remaining steps padded
        assert (res.indices[h, m:] == -1).all()
        # the coefficients reconstruct the signal
        rec = res.coefficients[h, :, :m] @ D[res.indices[h, :m]]
        assert torch.allclose(rec, H[h], atol=1e-4)


# ------------------------------------------------------------------------------------------
# agreement with the plain reference


@pytest.mark.parametrize("aggregation", ["l1", "l2"])
def test_matches_reference_float64(rand_problem, aggregation):
    H, D = rand_problem
    res = somp(H, D, 8, aggregation=aggregation)
    ref = somp_reference(H, D, 8, aggregation=aggregation)
    assert torch.equal(res.indices, ref.indices)
    assert torch.allclose(res.explained_variance, ref.explained_variance, atol=1e-12)
    assert torch.allclose(res.coefficients, ref.coefficients, atol=1e-10)


def test_matches_reference_float32_and_batching(rand_problem):
    H, D = rand_problem
    ref = somp_reference(H, D, 8)  # float64 reference
    for kwargs in ({}, {"head_batch": 2}, {"chunk_size": 77}, {"memory_budget": 1}):
        res = somp(H.float(), D.float(), 8, **kwargs)
        assert torch.equal(res.indices, ref.indices), kwargs
        assert torch.allclose(res.explained_variance, ref.explained_variance, atol=1e-5)
        assert torch.allclose(res.coefficients.double(), ref.coefficients, atol=1e-4)
        assert res.coefficients.dtype == torch.float32


def test_l2_against_plain_loop(rand_problem):
    """l2 aggregation = argmax_j sum_i <R_i, D_j>^2, checked with an independent explicit loop."""
    H, D = rand_problem
    Dn = _unit(D)
    res = somp(H, D, 5, aggregation="l2")
    for h in range(H.shape[0]):
        S, R = [], H[h]
        for _ in range(5):
            sc = ((R @ Dn.T) ** 2).sum(0)
            sc[S] = -1
            S.append(int(sc.argmax()))
            Q, _ = torch.linalg.qr(Dn[S].T)
            R = H[h] - (H[h] @ Q) @ Q.T
        assert res.indices[h].tolist() == S


def test_single_sample_single_step_is_logit_lens_by_abs():
    g = torch.Generator().manual_seed(3)
    D = torch.randn(500, 32, generator=g)
    x = torch.randn(1, 32, generator=g)
    res = somp(x, D, 1)
    logits = x[0] @ _unit(D).T
    assert int(res.indices[0]) == int(logits.abs().argmax())
    assert res.explained_variance.shape == (1,)
    assert float(res.explained_variance[0]) == pytest.approx(float(logits.abs().max() ** 2 / (x**2).sum()), rel=1e-5)


def test_ev_monotone_in_unit_interval_and_gains(rand_problem):
    H, D = rand_problem
    res = somp(H.float(), D.float(), 10)
    ev = res.explained_variance
    assert (ev >= 0).all() and (ev <= 1).all()
    assert (torch.diff(ev, dim=1) >= -1e-12).all()
    assert torch.allclose(res.gains.sum(1), ev[:, -1])
    assert res.k == 10 and isinstance(res, SOMPResult)


def test_tol_stops_heads():
    g = torch.Generator().manual_seed(4)
    H = torch.randn(3, 10, 40, generator=g, dtype=torch.float64)
    D = torch.randn(200, 40, generator=g, dtype=torch.float64)
    full = somp(H, D, 12)
    res = somp(H, D, 12, tol=0.3)
    for h in range(3):
        ev = full.explained_variance[h]
        stop = int((ev >= 0.3).nonzero()[0]) if (ev >= 0.3).any() else 11
        assert res.indices[h, : stop + 1].tolist() == full.indices[h, : stop + 1].tolist()
        assert (res.indices[h, stop + 1 :] == -1).all()
        assert torch.allclose(res.explained_variance[h, stop:], ev[stop].expand(12 - stop))
        assert res.explained_variance[h, stop] >= 0.3
        assert (res.coefficients[h, :, stop + 1 :] == 0).all()


def test_zero_signal_head_and_2d_input(rand_problem):
    H, D = rand_problem
    H = H.clone()
    H[1] = 0
    res = somp(H, D, 4)
    assert (res.indices[1] == -1).all()
    assert (res.explained_variance[1] == 0).all()
    assert (res.coefficients[1] == 0).all()
    ref = somp_reference(H[[0, 2]], D, 4)
    assert torch.equal(res.indices[[0, 2]], ref.indices)
    single = somp(H[0], D, 4)
    assert single.indices.shape == (4,)
    assert single.coefficients.shape == (12, 4)
    assert single.explained_variance.shape == (4,)
    assert torch.equal(single.indices, res.indices[0])


def test_atom_mask_and_zero_atoms(rand_problem):
    H, D = rand_problem
    D = D.clone()
    D[7] = 0  # an all-zero atom must never be chosen (and must not produce NaN)
    mask = torch.ones(D.shape[0], dtype=torch.bool)
    first = somp(H, D, 1).indices[:, 0]
    mask[first] = False
    res = somp(H, D, 3, atom_mask=mask)
    assert not torch.isin(res.indices, first).any()
    assert not (res.indices == 7).any()
    ref = somp_reference(H, D, 3, atom_mask=mask)
    assert torch.equal(res.indices, ref.indices)


def test_duplicate_atoms_are_not_reselected():
    g = torch.Generator().manual_seed(5)
    D = torch.randn(50, 16, generator=g, dtype=torch.float64)
    D = torch.cat([D, D[:10]])  # exact duplicates
    H = torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    res = somp(H, D, 12)
    for h in range(2):
        chosen = [i % 50 if i < 60 else i for i in res.indices[h].tolist() if i >= 0]
        assert len(set(chosen)) == len(chosen)
    assert torch.isfinite(res.coefficients).all()


def test_errors(rand_problem):
    H, D = rand_problem
    with pytest.raises(ValueError, match="k must be >= 1"):
        somp(H, D, 0)
    with pytest.raises(ValueError, match="exceeds the number of usable"):
        somp(H, D, 301)
    with pytest.raises(ValueError, match="aggregation"):
        somp(H, D, 2, aggregation="max")
    with pytest.raises(ValueError, match="atoms must be"):
        somp(H, D[:, :10], 2)
    with pytest.raises(ValueError, match="empty"):
        somp(H[:, :0], D, 2)
    with pytest.raises(ValueError, match="tol"):
        somp(H, D, 2, tol=1.5)


# ------------------------------------------------------------------------------------------
# SPAMS (independent C++ implementation; optional)


def test_matches_spams_ormp():
    spams = pytest.importorskip("spams")
    g = torch.Generator().manual_seed(6)
    nh, n, d, V, k = 6, 16, 64, 400, 8
    H = torch.randn(nh, n, d, generator=g, dtype=torch.float64)
    D = _unit(torch.randn(V, d, generator=g, dtype=torch.float64))
    X = np.asfortranarray(H.reshape(nh * n, d).T.numpy())
    alpha = spams.somp(
        X, np.asfortranarray(D.T.numpy()), np.arange(0, nh * n, n, dtype=np.int32), L=k, eps=0.0, numThreads=1
    ).toarray()
    # spams.somp is order-recursive (ORMP) with squared-correlation aggregation
    res = somp(H, D, k, aggregation="l2", variant="ormp")
    ref = somp_reference(H, D, k, aggregation="l2", variant="ormp")
    assert torch.equal(res.indices, ref.indices)
    for h in range(nh):
        block = alpha[:, h * n : (h + 1) * n]
        assert set(np.flatnonzero(np.abs(block).sum(1))) == set(res.indices[h].tolist())
        np.testing.assert_allclose(block[res.indices[h].numpy()].T, res.coefficients[h].numpy(), atol=1e-8)


# ------------------------------------------------------------------------------------------
# head space


def _head_problem(seed=7, n=9, L=3, Hn=4, dh=8, d=32, V=400):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, Hn, dh, generator=g)
    W = torch.randn(L, d, Hn * dh, generator=g) / d**0.5
    U = torch.randn(V, d, generator=g)
    gain = 0.5 + torch.rand(d, generator=g)
    return z, W, U, gain


def _materialised(z, W):
    n, L, Hn, dh = z.shape
    d = W.shape[1]
    sig = torch.einsum("nlhk,ldhk->lhnd", z.double(), W.double().view(L, d, Hn, dh))
    return sig.reshape(L * Hn, n, d)


@pytest.mark.parametrize("n", [9, 40])  # n < dh*... picks the direct route, n large the projection route
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("restrict", [False, True])
def test_somp_heads_equals_explicit_signals(n, fold, restrict):
    z, W, U, gain = _head_problem(n=n)
    ids = torch.arange(3, 400, 3) if restrict else None
    res = somp_heads(z, W, U, 5, token_ids=ids, norm_gain=gain if fold else None)
    Dref = U.double() * (gain.double() if fold else 1.0)
    if restrict:
        Dref = Dref[ids]
    ref = somp_reference(_materialised(z, W), Dref, 5)
    ref_idx = ids[ref.indices] if restrict else ref.indices
    assert torch.equal(res.indices, ref_idx)
    assert torch.allclose(res.explained_variance, ref.explained_variance, atol=1e-5)
    assert torch.allclose(res.coefficients.double(), ref.coefficients, atol=1e-4)
    assert res.head_ids.tolist()[:5] == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]


def test_somp_heads_routes_agree():
    z, W, U, _ = _head_problem(n=40)
    D, _, _ = head_dictionary(U)
    op = HeadSignals(z, W, torch.float32)
    route = op._route(D.shape[0])
    C1, e1, _ = op.prepare(slice(0, 12), D, None)
    op._route = lambda V: "direct" if route == "project" else "project"
    C2, e2, _ = op.prepare(slice(0, 12), D, 50)
    assert torch.allclose(C1, C2, atol=1e-4)
    assert torch.allclose(e1, e2)
    ref = torch.einsum("hnd,vd->hnv", _materialised(z, W), D.double())
    assert torch.allclose(C1.double(), ref, atol=1e-4)


def test_somp_heads_accepts_activations_and_layers():
    z, W, U, gain = _head_problem()

    class Acts:
        pass

    acts = Acts()
    acts.z, acts.layers = z, [2, 5, 7]
    res = somp_heads(acts, W, U, 3, norm_gain=gain)
    assert res.head_ids[:, 0].unique().tolist() == [2, 5, 7]
    assert res.meta["fold_norm_gain"] is True
    with pytest.raises(ValueError, match="W_O must be"):
        somp_heads(z, W[:2], U, 3)
    with pytest.raises(ValueError, match="dictionary must be"):
        somp_heads(z, W, U[:, :5], 3)
    with pytest.raises(ValueError, match="token_ids must lie"):
        somp_heads(z, W, U, 3, token_ids=[1, 10_000])


# ------------------------------------------------------------------------------------------
# the real model (slow)


@pytest.mark.slow
def test_smollm2_real_activations_match_reference(device):
    from headpursuit.capture import CaptureSample, capture_heads
    from headpursuit.models import load_model

    lm = load_model("smollm2", dtype="float32", device=str(device))  # float32: bfloat16 misses 1e-4
    qs = [
        "In which country is the Eiffel Tower?",
        "What is the capital of Japan?",
        "Name a colour of the sky.",
        "In which country is Machu Picchu?",
    ]
    acts = capture_heads(lm, [CaptureSample(lm.format_prompt(q)) for q in qs], positions="last_prompt", progress=False)
    layers = acts.layers[::6]
    W = torch.stack([lm.output_weight(l).detach().float() for l in layers])
    z = acts.z[:, [acts.layers.index(l) for l in layers]].to(W.device)  # capture and model may differ
    U = lm.unembedding().float()
    gain = lm.final_norm_gain()
    res = somp_heads(z, W, U, 5, norm_gain=gain)
    sig = _materialised(z, W).float()
    sub = list(range(0, sig.shape[0], 4))
    ref = somp_reference(sig[sub], U * gain[None, :], 5)
    assert torch.equal(res.indices[sub], ref.indices)
    assert torch.allclose(res.explained_variance[sub], ref.explained_variance, atol=1e-4)


# ------------------------------------------------------------------------------------------
# memory: blocks of atoms and rows, budget


def test_project_route_blocks_equal_one_product():
    """The correlations built block by block (atoms x rows) equal one product z (D W_h)^T."""
    z, W, U, _ = _head_problem(n=120, dh=16, d=64, V=3000)
    D, _, _ = head_dictionary(U)
    op = HeadSignals(z, W, torch.float32)
    assert op._route(D.shape[0]) == "project"
    atoms, rows = op.project_chunks(D.shape[0], None)
    assert atoms < D.shape[0] or rows < op.n  # the test exercises the blocks
    C, energy, _ = op.prepare(slice(0, op.n_heads), D, None)
    C_small, _, _ = op.prepare(slice(0, op.n_heads), D, 500)  # more, smaller blocks of atoms
    ref = torch.einsum("hnd,vd->hnv", _materialised(z, W), D.double())
    assert torch.allclose(C.double(), ref, atol=1e-4)
    assert torch.allclose(C_small, C, atol=1e-5)
    assert torch.allclose(energy, (_materialised(z, W) ** 2).sum(dim=(1, 2)))


@pytest.mark.parametrize("n", [9, 120])  # direct and project routes
def test_blocked_and_batched_paths_give_the_same_result(n):
    z, W, U, gain = _head_problem(n=n, dh=16, d=64, V=3000)
    whole = somp_heads(z, W, U, 6, norm_gain=gain, memory_budget=1 << 34)
    parts = somp_heads(z, W, U, 6, norm_gain=gain, chunk_size=700, head_batch=5)
    assert whole.meta["head_batch"] == 12 and parts.meta["head_batch"] == 5
    assert torch.equal(whole.indices, parts.indices)
    assert torch.allclose(whole.explained_variance, parts.explained_variance, atol=1e-6, rtol=0)


def test_in_place_compaction_when_heads_stop():
    """Heads reaching tol are dropped from the working set in place; the others go on as before."""
    z, W, U, gain = _head_problem(n=40, dh=16, d=64, V=3000)
    full = somp_heads(z, W, U, 8, norm_gain=gain)
    tol = 0.3  # a quarter of the heads reach it at step 7 (the working set is compacted), some never
    res = somp_heads(z, W, U, 8, norm_gain=gain, tol=tol)
    stopped_early = res.indices[:, -1] < 0
    assert int(stopped_early.sum()) >= 3 and bool((full.explained_variance[:, -1] < tol).any())
    for h in range(res.indices.shape[0]):
        t = int((res.indices[h] >= 0).sum())
        assert torch.equal(res.indices[h, :t], full.indices[h, :t])
        assert torch.allclose(res.explained_variance[h, :t], full.explained_variance[h, :t], atol=1e-9)


def test_default_memory_budget_follows_free_memory(monkeypatch):
    monkeypatch.delenv("HEADPURSUIT_SOMP_BUDGET", raising=False)
    avail = available_memory(torch.device("cpu"))
    assert avail is not None and avail > 0
    budget = default_memory_budget(torch.device("cpu"))
    assert 256 << 20 <= budget <= 6 << 30
    assert budget <= max(256 << 20, 0.3 * avail * 1.1)  # free memory moves a little between calls
    monkeypatch.setenv("HEADPURSUIT_SOMP_BUDGET", str(123 << 20))
    assert default_memory_budget() == 123 << 20


_PEAK_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from headpursuit.somp import somp_heads
n, budget = int(sys.argv[1]), int(sys.argv[2])
L, H, dh, d, V = 4, 16, 32, 256, 8192
g = torch.Generator().manual_seed(0)
z, W, U = torch.randn(n, L, H, dh, generator=g), torch.randn(L, d, H * dh, generator=g), torch.randn(V, d, generator=g)
somp_heads(z[:, :1, :2], W[:1, :, : 2 * dh].reshape(1, d, 2 * dh), U[:100], 1)  # warm-up: threads, allocator
def status(key):
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
base = status("VmRSS:")
res = somp_heads(z, W, U, 3, memory_budget=budget)
print(status("VmHWM:") - base, res.meta["head_batch"], res.meta["route"])
"""


def _peak_extra_bytes(n: int, budget: int) -> tuple[int, int, str]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(n), str(budget)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    extra, hb, route = out.stdout.split()
    return int(extra), int(hb), route


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc (VmHWM reset)")
def test_somp_heads_stays_within_its_budget_as_rows_grow():
    """Peak resident memory of the call, measured in a fresh process: within the budget (+25% and
    the dictionary's copies, ~40 MiB here) at 50 and at 400 rows; before the blocks of rows it
    was about twice the budget from ~100 rows on."""
    budget = 384 << 20
    slack = 64 << 20
    for n in (50, 400):
        extra, hb, route = _peak_extra_bytes(n, budget)
        assert route == "project" and (n == 50 or hb < 64)  # at 400 rows, several batches of heads
        assert extra <= budget * 1.25 + slack, f"n={n}: peak +{extra / 2**20:.0f} MiB for a {budget >> 20} MiB budget"


def test_somp_leaves_the_process_thread_count_as_it_was():
    """A batch small enough for one tile ran on the calling thread with torch's thread count set
    to 1 and never restored: every later evaluation in the process went single-threaded."""
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n_atoms in (8, 50, 5000):
            somp(torch.randn(2, 4, 16), torch.randn(n_atoms, 16), 3)
            assert torch.get_num_threads() == 2, n_atoms
    finally:
        torch.set_num_threads(prev)
