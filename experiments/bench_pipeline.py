"""The pipeline's evaluation stage, one edit at a time vs batched edits, side by side in one process.

The shape of one sweep job: SmolLM2 (float32, CPU) on the QA fixture, the top-k ranked heads
flipped (alpha -1) and 10 random-head controls of the same size, evaluated by the pipeline's own
stages (`headpursuit.app.stages`) with the cache off, so every evaluation generates:

* sequential: `evaluate_cached` per edit (`intervention.batched_edits=false`);
* batched: `generate_uncached` (every edit in one `Task.generate_many` pass) and `evaluate_cached`
  scoring each edit's outputs (`intervention.batched_edits=true`, the default).

The rounds are interleaved (sequential, batched, sequential, ...) so that a busy machine slows both
alike; wall and CPU seconds and the load average are printed per round, the metrics of the two
paths are asserted identical, and the stage timings of the job (model load, ranking answers,
capture, rank) are printed once.

    .venv/bin/python experiments/bench_pipeline.py            # 20 questions/group, 10 controls, 2 rounds
    .venv/bin/python experiments/bench_pipeline.py --quick    # 4 questions/group, 3 controls, 1 round
    .venv/bin/python experiments/bench_pipeline.py --sweep    # a 3 k x 2 alpha sweep, 10 controls each
    .venv/bin/python experiments/bench_pipeline.py --loops drop,generate   # also time model.generate

Plain greedy generation runs the loop that drops finished rows from the batch
(`headpursuit.models.greedy`); `--loops generate` times transformers' `model.generate` instead (every
row stays in the batch until the last one ends), the path before that loop.

`--sweep` times the shape of a whole sweep (k = K/2, K, 2K; alpha = -1 and 5): one edit at a time is
6 jobs x (edited + controls) generate passes; batched is one pass per k holding both alphas' edits
(what `intervention.batch_alphas=[-1,5]` does: the alpha-5 job then finds its evaluations cached).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from headpursuit.app.cache import RunCache
from headpursuit.app.schema import ModelConfig
from headpursuit.app.stages import (
    build_task_memo,
    capture_cached,
    concept_token_ids,
    evaluate_cached,
    generate_uncached,
    load_model_memo,
    random_control_edits,
    random_control_sets,
    rank_cached,
    ranking_samples_cached,
)
from headpursuit.heads import select_heads
from headpursuit.models import generation
from headpursuit.ranking import RankingConfig
from headpursuit.tasks import QAConfig


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn(), its wall-clock seconds and its CPU seconds (this process): on a shared machine the CPU
    seconds are the fairer comparison, the wall clock moves with the other processes' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 questions/group, 3 controls, 8 new tokens, 1 round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=20, help="evaluation questions per group")
    ap.add_argument("--n-rank", type=int, default=10)
    ap.add_argument("--random", type=int, default=10, help="random-head controls")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=16, help="QAConfig's default")
    ap.add_argument("--batch-size", default="16", help="task.batch_size (an integer or auto)")
    ap.add_argument("--baseline", action="store_true", help="evaluate the unedited model too (a fresh job)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="a 3 k x 2 alpha sweep (batched: one pass per k)")
    ap.add_argument(
        "--loops",
        default="drop",
        help="greedy loops to time, comma-separated: drop (finished rows leave the batch, the default "
        "path) and/or generate (transformers' model.generate, every row to the end)",
    )
    args = ap.parse_args()
    if args.quick:
        args.n_eval, args.n_rank, args.random, args.max_new_tokens, args.rounds = 4, 4, 3, 8, 1

    torch.set_num_threads(args.threads)
    cache, seed, alpha = RunCache(None), 0, -1.0  # no cache: every evaluation generates
    stage: dict[str, float] = {}
    t0 = time.perf_counter()
    lm, _ = load_model_memo(ModelConfig(name_or_path="smollm2"), "cpu", "float32")
    stage["load_model"] = time.perf_counter() - t0
    batch_size: int | str = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    task_cfg = QAConfig(
        n_rank=args.n_rank, n_eval=args.n_eval, max_new_tokens=args.max_new_tokens, batch_size=batch_size
    )
    (task, stage["task"], _) = timed(lambda: build_task_memo(task_cfg, lm))
    ident = {"bench": asdict(task_cfg)}
    samples, stage["ranking_samples"], _ = timed(lambda: ranking_samples_cached(cache, task, lm, ident))
    (acts, acts_key), stage["capture"], _ = timed(
        lambda: capture_cached(cache, lm, samples, "answer_concept", concept_token_ids(task.concept))
    )
    scores, stage["rank"], _ = timed(
        lambda: rank_cached(cache, acts, acts_key, lm, task.concept, RankingConfig(method="concept_restricted"), seed)
    )
    if torch.get_num_threads() != args.threads:
        # Seen after the rank stage: the thread count it leaves must not slow the evaluation timed below.
        print(f"note: {torch.get_num_threads()} torch threads after the ranking stages; set back to {args.threads}")
        torch.set_num_threads(args.threads)
    L, H = lm.layout.n_layers, lm.layout.n_heads

    def job_edits(k: int, alphas: list[float]) -> tuple[list[dict], list[str]]:
        """The edits of one job of k heads: the ranked heads and every random set, per alpha."""
        heads = select_heads(scores, "ranked", k, L, H, seed)
        sets = random_control_sets(heads, lm.layout, k=k, seeds=list(range(args.random)), pool="all")
        edits: list[dict] = [{}] if args.baseline else []
        labels = ["baseline"] if args.baseline else []
        for a in alphas:
            edits += [{h: a for h in heads}, *random_control_edits(sets, a)]
            labels += [f"k{k} a{a:g} edited"] + [f"k{k} a{a:g} random{draw.seed}" for draw in sets]
        return edits, labels

    # One job: one pass. The sweep: one pass per k holding both alphas (batch_alphas).
    if args.sweep:
        ks, alphas = [max(1, args.k // 2), args.k, 2 * args.k], [alpha, 5.0]
        passes = [job_edits(k, alphas) for k in ks]
        shape = f"{len(ks)} k ({', '.join(map(str, ks))}) x {len(alphas)} alpha sweep"
    else:
        passes = [job_edits(args.k, [alpha])]
        shape = f"one job (k={args.k}, alpha={alpha:g})"
    edits = [e for pass_edits, _ in passes for e in pass_edits]
    labels = [lab for _, pass_labels in passes for lab in pass_labels]
    n_rows = len(edits) * sum(len(task.items("eval", g)) for g in ("concept", "control"))
    print(
        f"{lm.name}, {shape}: {len(edits)} edits ({', '.join(labels[:3])}, ...) x {n_rows // len(edits)} "
        f"questions = {n_rows} generations of {args.max_new_tokens} tokens, task.batch_size={batch_size}, "
        f"{torch.get_num_threads()} threads, {load()}"
    )
    print("job stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stage.items()))

    def sequential() -> list[dict]:
        return [
            evaluate_cached(cache, lm, task, ident, e, label=lab, seed=seed, desc=lab) for e, lab in zip(edits, labels)
        ]

    def batched() -> tuple[list[dict], float, float]:
        results, gen_wall, score_wall = [], 0.0, 0.0
        for pass_edits, pass_labels in passes:
            t = time.perf_counter()
            generated = generate_uncached(cache, lm, task, ident, pass_edits, seed=seed)
            wall, t = time.perf_counter() - t, time.perf_counter()
            results += [
                evaluate_cached(cache, lm, task, ident, e, label=lab, seed=seed, generated=generated)
                for e, lab in zip(pass_edits, pass_labels)
            ]
            swall = time.perf_counter() - t
            gen_wall, score_wall = gen_wall + wall, score_wall + swall
        return results, gen_wall, score_wall

    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    if not loops or set(loops) - {"drop", "generate"}:
        raise SystemExit(f"--loops takes drop and/or generate, got {args.loops!r}")
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(lp, p): [] for lp in loops for p in ("seq", "bat")}
    ref_metrics = None
    for r in range(args.rounds):
        for lp in loops:
            generation.DROP_FINISHED_ROWS = lp == "drop"
            ref, wall, cpu = timed(sequential)
            times[lp, "seq"].append((wall, cpu))
            print(f"round {r} [{lp}]: sequential {wall:.1f} s wall, {cpu:.1f} s CPU, {load()}")
            (out, gen_wall, score_wall), wall, cpu = timed(batched)
            times[lp, "bat"].append((wall, cpu))
            print(
                f"round {r} [{lp}]: batched    {wall:.1f} s wall (generate_edits {gen_wall:.1f} s, "
                f"scoring {score_wall:.1f} s), {cpu:.1f} s CPU, {load()}"
            )
            assert out == ref, "batched edits changed the metrics"
            ref_metrics = ref if ref_metrics is None else ref_metrics
            assert ref == ref_metrics, "the greedy loops disagree on the metrics"
    generation.DROP_FINISHED_ROWS = True

    def best(lp: str, path: str) -> tuple[float, float]:
        return min(t[0] for t in times[lp, path]), min(t[1] for t in times[lp, path])

    print(f"\nbest of {args.rounds}; identical metrics for all {len(edits)} edits on every path")
    for lp in loops:
        (sw, sc), (bw, bc) = best(lp, "seq"), best(lp, "bat")
        print(
            f"[{lp}] sequential {sw:.1f} s wall / {sc:.1f} s CPU, batched {bw:.1f} s wall / {bc:.1f} s CPU: "
            f"{sw / bw:.2f}x faster (wall), {sc / bc:.2f}x (CPU); {len(edits)} generate passes vs {len(passes)}"
        )
    if len(loops) == 2:
        (gw, _), (dw, _) = best("generate", "seq"), best("drop", "bat")
        print(f"batched with finished rows dropped vs one edit at a time with model.generate: {gw / dw:.2f}x (wall)")


if __name__ == "__main__":
    main()
