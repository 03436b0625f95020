"""Benchmark: fast SOMP (headpursuit.somp.somp_heads) against its peers, every peer on the same heads.

Peers: ``fast`` (somp_heads), ``reference`` (headpursuit.somp.somp_reference: the plain loop, per head
in d_model space, ``torch.linalg.lstsq`` at every step), and, when SPAMS is installed, ``spams``
(``spams.somp``, C++, order-recursive with squared correlations) against ``ormp``
(somp_heads(variant="ormp", aggregation="l2")) on the same dictionary (SPAMS keeps a V x V Gram
matrix, so both use the first --spams-vocab tokens).

Every measurement runs in a fresh process (``--worker``) that loads the problem, warms up, resets
its memory high-water mark (/proc/self/clear_refs) and reports the seconds of the call and its peak
resident memory above the baseline (VmHWM - VmRSS). Measurements are interleaved in rounds
(fast, reference, ormp, spams, fast, reference, ...), each printed with the 1-minute load average,
so a busy machine shows in the numbers rather than in one peer's. Nothing is extrapolated: a peer
that is too slow for all heads is compared on a subset, and then every peer runs on that subset.

(a) SmolLM2-135M-Instruct, real activations: the first 46 concept questions of
    headpursuit/data/fixtures/qa_countries.jsonl at the last prompt token; full vocabulary
    (49,152), k=10; --heads all 270 heads (default) or N heads evenly spaced.
(b) --rows-scan 46,200,800: somp_heads alone with SmolLM2's W_O and unembedding and N random rows
    per head, within --budget-mib: time and peak memory as the rows grow.
(c) --7b: synthetic 7B shape, 1024 heads (32 x 32), head_dim 128, d_model 4096, vocab 32,000, n=256;
    fast alone on all 1024 heads, then fast and reference on the same --heads-7b heads.

    .venv/bin/python experiments/bench_somp.py [--quick] [--rounds 2] [--heads 270] [--rows-scan 46,200]
        [--7b] [--no-spams]

--quick: 1 round on 27 heads, no 7B. The last line printed is ``speedup_vs_reference=<ratio>``
(median over rounds of reference / fast seconds on the same SmolLM2 heads).

Recorded runs (2 CPU cores, AMD EPYC Zen 5, shared with other jobs; load averages as printed):

    .venv/bin/python experiments/bench_somp.py --quick --rows-scan 46,200,400 --budget-mib 512
    (load average 8-9.6 on the 2 cores throughout, so every absolute time is inflated ~4x; 6.2 min)
      (a) 27 heads evenly spaced, n=46: fast 11.31 s (peak +0.44 GiB), reference 84.16 s (+0.03 GiB)
          -> 7.4x; identical selections on 27/27 heads, max |EV diff| 3.6e-09. SPAMS not installed.
      (b) 27 heads, budget 512 MiB: n=46 10.4 s, peak 0.88x the budget; n=200 33.9 s, 1.07x;
          n=400 65.4 s, 0.84x. The time per row stays ~165-225 ms: each SOMP step updates and
          scores the n x V correlations, so the cost is linear in the rows whatever the blocking;
          the blocks of rows bound the memory (before them the peak was ~2x the budget from ~100
          rows on) at the same speed.
    Earlier figures in this file (35-38x, SPAMS "26.8-36.3 s per 270 heads") timed the peers on
    different heads and extrapolated; on a quiet machine the issue (15) measured 5-6x against the
    loop and 4-5.6x against SPAMS on all 270 heads at 8k atoms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headpursuit.somp import head_dictionary, somp_heads, somp_reference  # noqa: E402

FALLBACK_PLACES = [
    "the Eiffel Tower",
    "the Statue of Liberty",
    "the Great Wall",
    "the Colosseum",
    "the Taj Mahal",
    "Machu Picchu",
    "the Kremlin",
    "Big Ben",
    "the Sydney Opera House",
    "Mount Fuji",
    "the Brandenburg Gate",
    "the Acropolis",
    "Petra",
    "the Pyramids of Giza",
    "Angkor Wat",
    "Christ the Redeemer",
    "Chichen Itza",
    "the Leaning Tower of Pisa",
    "the Sagrada Familia",
    "Stonehenge",
    "Table Mountain",
    "Niagara Falls",
    "the CN Tower",
    "the Alhambra",
    "Neuschwanstein",
    "the Matterhorn",
    "Uluru",
    "Kilimanjaro",
    "the Blue Mosque",
    "the Forbidden City",
    "Edinburgh Castle",
    "the Little Mermaid statue",
    "the Atomium",
    "the Parthenon",
    "Lake Titicaca",
    "Mount Everest",
    "Hagia Sophia",
    "the Burj Khalifa",
    "Ha Long Bay",
    "the Louvre",
    "the Vatican Museums",
    "the Cliffs of Moher",
    "Bora Bora",
    "the Galapagos Islands",
    "the Serengeti",
    "the Dead Sea",
]


# ----------------------------------------------------------------------------------------------
# one measurement, in a fresh process


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


_BASELINE = {"rss": 0}


def _reset_peak() -> None:
    """Start the measured call: VmHWM reset to the current resident size, which is remembered."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process
        pass
    _BASELINE["rss"] = _status_bytes("VmRSS:")


def _heads_view(z: torch.Tensor, W: torch.Tensor, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen heads (flat, layer-major) as their own "layers" of one head each: z (n, h, 1, dh),
    W_O (h, d, dh). somp_heads does per head exactly what it does in the full layout."""
    n, L, H, dh = z.shape
    li = torch.tensor(heads) // H
    hi = torch.tensor(heads) % H
    zs = z[:, li, hi, :].unsqueeze(2).contiguous()
    Ws = W.view(L, W.shape[1], H, dh)[li, :, hi, :].contiguous()
    return zs, Ws


def synthetic_7b(seed: int = 0) -> dict:
    L, H, dh, d, V, n = 32, 32, 128, 4096, 32000, 256
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(V, d, generator=g)
    # Heads write mostly within the span of a few tokens (plus noise), like real heads: the
    # selections then have clear winners and float32 vs float64 rounding cannot flip them.
    W = torch.empty(L, d, H * dh)
    for layer in range(L):
        toks = torch.randint(0, V, (H, 16), generator=g)
        mix = torch.randn(H, 16, dh, generator=g) / 4
        Wl = torch.einsum("htd,htk->hdk", U[toks], mix) + 0.1 * torch.randn(H, d, dh, generator=g) / d**0.5 * 8
        W[layer] = Wl.permute(1, 0, 2).reshape(d, H * dh)
    z = torch.randn(n, L, H, dh, generator=g)
    return {"z": z, "W": W, "U": U, "gain": None}


def _run_peer(peer: str, p: dict, heads: list[int], opts: dict) -> tuple[float, torch.Tensor, torch.Tensor]:
    zs, Ws = _heads_view(p["z"], p["W"], heads)
    U, gain, k = p["U"], p["gain"], opts["k"]
    budget = opts.get("budget")
    if peer in ("fast", "ormp"):
        kw = {"aggregation": "l1"} if peer == "fast" else {"aggregation": "l2", "variant": "ormp"}
        if peer == "ormp":
            kw["token_ids"] = torch.arange(min(opts["spams_vocab"], U.shape[0]))
        somp_heads(zs[:, :1], Ws[:1], U, 2, norm_gain=gain, **kw)  # warm-up (allocator, threads, BLAS)
        _reset_peak()
        t = time.perf_counter()
        r = somp_heads(zs, Ws, U, k, norm_gain=gain, memory_budget=budget, **kw)
        return time.perf_counter() - t, r.indices, r.explained_variance
    D, _, _ = head_dictionary(U, gain)
    sig = lambda i: zs[:, i, 0] @ Ws[i].T  # noqa: E731 - one head's signals (n, d_model)
    if peer == "reference":
        somp_reference(sig(0)[:2], D, 1, normalized=True)  # warm-up
        _reset_peak()
        t = time.perf_counter()
        out = [somp_reference(sig(i), D, k, normalized=True) for i in range(len(heads))]
        sec = time.perf_counter() - t
        return sec, torch.stack([o.indices for o in out]), torch.stack([o.explained_variance for o in out])
    if peer == "spams":
        import numpy as np
        import spams

        n = zs.shape[0]
        Dn = D[: opts["spams_vocab"]].double()
        Dn = Dn / Dn.norm(dim=1, keepdim=True)
        X = np.asfortranarray(
            torch.stack([sig(i) for i in range(len(heads))]).double().reshape(-1, D.shape[1]).T.numpy()
        )
        Df = np.asfortranarray(Dn.T.numpy())
        groups = np.arange(0, len(heads) * n, n, dtype=np.int32)
        _reset_peak()
        t = time.perf_counter()
        alpha = spams.somp(X, Df, groups, L=k, eps=0.0, numThreads=torch.get_num_threads())
        sec = time.perf_counter() - t
        alpha = alpha.tocsc()
        idx = torch.full((len(heads), k), -1, dtype=torch.long)
        for i in range(len(heads)):
            sel = np.flatnonzero(np.asarray(abs(alpha[:, i * n : (i + 1) * n]).sum(axis=1)).ravel())
            idx[i, : len(sel)] = torch.as_tensor(sel[:k])  # a set: SPAMS does not say the order
        return sec, idx, torch.zeros(len(heads), k, dtype=torch.float64)
    raise ValueError(f"unknown peer {peer!r}")


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    opts = json.loads(args.opts)
    p = synthetic_7b() if args.problem == "synthetic_7b" else torch.load(args.problem)
    heads = opts["heads"]
    sec, idx, ev = _run_peer(args.worker, p, heads, opts)
    peak = _status_bytes("VmHWM:")
    torch.save({"seconds": sec, "indices": idx, "ev": ev}, args.out)
    print(json.dumps({"seconds": sec, "peak_gib": peak / 2**30, "extra_gib": (peak - _BASELINE["rss"]) / 2**30}))


def measure(peer: str, problem: str, opts: dict, threads: int) -> dict:
    """Run ``peer`` in a fresh process; seconds, peak memory above its baseline, selections."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        script = [sys.executable, __file__, "--worker", peer, "--problem", problem, "--out", str(out)]
        script += ["--threads", str(threads), "--opts", json.dumps(opts)]
        load = os.getloadavg()[0]
        proc = subprocess.run(script, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{peer} failed:\n{proc.stderr[-3000:]}")
        res = torch.load(out)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**info, **res, "load": load}


# ----------------------------------------------------------------------------------------------
# the benchmarks


def questions(n: int) -> tuple[list[str], str]:
    path = ROOT / "headpursuit" / "data" / "fixtures" / "qa_countries.jsonl"
    if path.exists():
        qs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        qs = [q["question"] for q in qs if q.get("group") == "concept"][:n]
        if len(qs) == n:
            return qs, str(path.relative_to(ROOT))
    return [f"In which country is {p}?" for p in FALLBACK_PLACES[:n]], "built-in fallback list"


def spread(n_total: int, n: int | None) -> list[int]:
    """n heads evenly spaced over the flat (layer-major) heads; all of them for None."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return torch.linspace(0, n_total - 1, n).round().long().tolist()


def agreement(a: torch.Tensor, b: torch.Tensor, as_sets: bool = False) -> str:
    if as_sets:
        same = sum(set(x) == set(y) for x, y in zip(a.tolist(), b.tolist()))
        return f"same atom sets on {same}/{a.shape[0]} heads"
    same = int((a == b).all(dim=1).sum())
    return f"identical selections (all steps, in order) on {same}/{a.shape[0]} heads"


def interleaved(peers: list[str], problem: str, opts: dict, rounds: int, threads: int) -> dict[str, list[dict]]:
    """``rounds`` rounds of every peer in turn, each in a fresh process; prints every measurement."""
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    for r in range(rounds):
        for peer in peers:
            m = measure(peer, problem, opts, threads)
            runs[peer].append(m)
            print(
                f"  round {r + 1} {peer:>9}: {m['seconds']:8.2f} s on {len(opts['heads'])} heads; "
                f"peak +{m['extra_gib']:.2f} GiB (RSS {m['peak_gib']:.2f} GiB); load average {m['load']:.2f}",
                flush=True,
            )
    return runs


def ratios(runs: dict[str, list[dict]], slow: str, fast: str) -> list[float]:
    return [s["seconds"] / f["seconds"] for s, f in zip(runs[slow], runs[fast])]


def bench_smollm2(args, tmp: Path) -> float:
    from headpursuit.capture import CaptureSample, capture_heads
    from headpursuit.models import load_model

    print("=== (a) SmolLM2-135M-Instruct, real activations ===", flush=True)
    lm = load_model("smollm2", device="cpu")
    qs, src = questions(args.n_questions)
    acts = capture_heads(lm, [CaptureSample(lm.format_prompt(q)) for q in qs], positions=args.positions, progress=False)
    z = acts.z.float()
    W = torch.stack([lm.output_weight(layer).detach().float() for layer in acts.layers])
    U = lm.unembedding().detach().float()
    gain = lm.final_norm_gain()
    problem = tmp / "smollm2.pt"
    torch.save({"z": z, "W": W, "U": U, "gain": None if gain is None else gain.detach().float()}, problem)
    n, L, H, dh = z.shape
    heads = spread(L * H, args.heads)
    opts = {"k": args.k, "heads": heads, "spams_vocab": args.spams_vocab}
    print(
        f"questions: {len(qs)} from {src}; positions={args.positions}; rows n={n}; {len(heads)} of {L * H} heads "
        f"(every peer on the same ones), head_dim {dh}, d_model {W.shape[1]}, vocab {U.shape[0]}, k={args.k}; "
        f"final-norm gain folded; {args.threads} threads; {args.rounds} interleaved rounds",
        flush=True,
    )
    peers = ["fast", "reference"]
    if args.spams:
        try:
            import spams  # noqa: F401

            peers += ["ormp", "spams"]
        except ImportError:
            print("SPAMS: not installed (pip install spams-bin); skipped", flush=True)
    runs = interleaved(peers, str(problem), opts, args.rounds, args.threads)
    r = ratios(runs, "reference", "fast")
    print(
        f"reference / fast: {', '.join(f'{x:.1f}x' for x in r)} (median {statistics.median(r):.1f}x); "
        f"fast vs reference: {agreement(runs['fast'][0]['indices'], runs['reference'][0]['indices'])}; "
        f"max |EV diff| {(runs['fast'][0]['ev'] - runs['reference'][0]['ev']).abs().max().item():.1e}",
        flush=True,
    )
    if "spams" in runs:
        rs = ratios(runs, "spams", "ormp")
        print(
            f"spams / ormp (first {args.spams_vocab} tokens): {', '.join(f'{x:.1f}x' for x in rs)} "
            f"(median {statistics.median(rs):.1f}x); "
            f"{agreement(runs['ormp'][0]['indices'], runs['spams'][0]['indices'], as_sets=True)}",
            flush=True,
        )
    if args.rows_scan:
        rows_scan(args, tmp, W, U, gain, z, heads)
    return statistics.median(r)


def rows_scan(args, tmp: Path, W, U, gain, z_real: torch.Tensor, heads: list[int]) -> None:
    budget = int(args.budget_mib) << 20
    print(
        f"=== (b) rows scan: somp_heads on {len(heads)} heads, SmolLM2 weights, random rows at the scale of "
        f"the real ones, budget {args.budget_mib} MiB ===",
        flush=True,
    )
    _, L, H, dh = z_real.shape
    scale = z_real.std().item()
    for n in [int(x) for x in args.rows_scan.split(",")]:
        g = torch.Generator().manual_seed(n)
        z = torch.randn(n, L, H, dh, generator=g) * scale
        problem = tmp / f"rows{n}.pt"
        torch.save({"z": z, "W": W, "U": U, "gain": None if gain is None else gain.detach().float()}, problem)
        m = measure("fast", str(problem), {"k": args.k, "heads": heads, "budget": budget}, args.threads)
        print(
            f"  n={n:5d}: {m['seconds']:7.2f} s ({m['seconds'] / n * 1000:.1f} ms per row); peak "
            f"+{m['extra_gib'] * 1024:.0f} MiB = {m['extra_gib'] * 2**30 / budget:.2f}x the budget; "
            f"load average {m['load']:.2f}",
            flush=True,
        )
        problem.unlink()


def bench_7b(args) -> None:
    print("=== (c) synthetic 7B shape (1024 heads, head_dim 128, d_model 4096, vocab 32,000, n=256) ===", flush=True)
    budget = int(args.budget_mib) << 20
    everything = {"k": args.k, "heads": list(range(1024)), "budget": budget}
    m = measure("fast", "synthetic_7b", everything, args.threads)
    print(
        f"  fast alone, all 1024 heads: {m['seconds']:.1f} s; peak +{m['extra_gib']:.2f} GiB within a "
        f"{args.budget_mib} MiB budget; load average {m['load']:.2f}",
        flush=True,
    )
    opts = {"k": args.k, "heads": spread(1024, args.heads_7b), "budget": budget}
    runs = interleaved(["fast", "reference"], "synthetic_7b", opts, args.rounds, args.threads)
    r = ratios(runs, "reference", "fast")
    print(
        f"  reference / fast on the same {len(opts['heads'])} heads: {', '.join(f'{x:.1f}x' for x in r)}; "
        f"{agreement(runs['fast'][0]['indices'], runs['reference'][0]['indices'])}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every peer")
    ap.add_argument("--n-questions", type=int, default=46)
    ap.add_argument("--positions", default="last_prompt", help="capture positions (last_prompt | answer ...)")
    ap.add_argument("--heads", type=int, default=None, help="SmolLM2: heads every peer runs on (default all 270)")
    ap.add_argument("--spams", action=argparse.BooleanOptionalAction, default=True, help="also SPAMS when installed")
    ap.add_argument("--spams-vocab", type=int, default=8192, help="dictionary size for SPAMS vs ormp")
    ap.add_argument("--rows-scan", default="", help="comma-separated row counts for the rows scan (b)")
    ap.add_argument("--budget-mib", type=int, default=6144, help="memory budget of somp_heads in (b) and (c)")
    ap.add_argument("--7b", dest="b7", action="store_true", help="run the synthetic 7B shape (c)")
    ap.add_argument("--heads-7b", type=int, default=8, help="7B: heads fast and reference both run on")
    ap.add_argument("--quick", action="store_true", help="1 round on 27 heads, no 7B")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--problem", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.rounds, args.heads, args.b7 = 1, args.heads or 27, False
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        speed = bench_smollm2(args, Path(tmp))
    if args.b7:
        bench_7b(args)
    print(f"speedup_vs_reference={speed:.1f}")


if __name__ == "__main__":
    main()
