"""Many head edits over the same prompts: one generate pass per edit vs all edits batched together.

11 edits (one ranked-like edit of 6 heads at alpha -1 and 10 random sets of 6 heads, the shape of a
job with its random controls) over 40 QA fixture prompts with SmolLM2 in float32 on the CPU, in one
process. Sequential = `scale_heads` + `generate_batch` per edit (the pipeline today); batched =
`generate_with_edits` (rows = (prompt, edit) pairs). The outputs are asserted equal; the rounds are
interleaved so that a busy machine slows both alike.

    .venv/bin/python experiments/bench_batched_edits.py [--threads 2] [--rounds 1] \
        [--seq-batch 16] [--batch-sizes 16,32,64,128]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from headpursuit import load_model
from headpursuit.intervention import generate_with_edits, scale_heads
from headpursuit.models.generation import generate_batch
from headpursuit.tasks.loaders import load_qa_fixture

RANKED_LIKE = [(20, 3), (22, 1), (23, 5), (25, 0), (27, 4), (29, 2)]


def edits_for(lm, n_random: int, k: int = 6) -> list[dict]:
    heads = [(layer, h) for layer in range(lm.layout.n_layers) for h in range(lm.layout.n_heads)]
    edits = [dict.fromkeys(RANKED_LIKE, -1.0)]
    for seed in range(n_random):
        edits.append(dict.fromkeys(random.Random(seed).sample(heads, k), -1.0))
    return edits


def sequential(lm, prompts, edits, max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """One generate pass per edit: the path that batched edits replace."""

    def one_pass(edit: dict) -> list[str]:
        with scale_heads(lm, edit):
            return generate_batch(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)

    return [one_pass(edit) for edit in edits]


def timed(fn):
    """fn(), its wall-clock seconds and its CPU seconds (this process): on a shared machine the CPU
    seconds are the fairer comparison, the wall clock moves with the other processes' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--random", type=int, default=10, help="random edits besides the ranked-like one")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="the QA task's default")
    ap.add_argument("--seq-batch", type=int, default=16, help="batch size of the one-edit-at-a-time path (QA default)")
    ap.add_argument("--batch-sizes", default="16,32,64,128", help="rows per batch of the batched path")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", dtype="float32", device="cpu")
    prompts = [lm.format_prompt(it.question) for it in load_qa_fixture()[: args.prompts]]
    edits = edits_for(lm, args.random)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    print(
        f"{lm.name}, {len(edits)} edits x {len(prompts)} prompts = {len(edits) * len(prompts)} rows, "
        f"{args.max_new_tokens} new tokens, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )
    seq_times: list[tuple[float, float]] = []
    batched_times: dict[int, list[tuple[float, float]]] = {s: [] for s in sizes}
    for r in range(args.rounds):
        ref, secs, cpu = timed(lambda: sequential(lm, prompts, edits, args.max_new_tokens, args.seq_batch))
        seq_times.append((secs, cpu))
        print(
            f"round {r}: sequential (batch {args.seq_batch}) {secs:.1f} s wall, {cpu:.1f} s CPU, "
            f"load {os.getloadavg()[0]:.2f}"
        )
        for size in sizes:
            out, secs, cpu = timed(
                lambda size=size: generate_with_edits(
                    lm, prompts, edits, max_new_tokens=args.max_new_tokens, batch_size=size, progress=False
                )
            )
            batched_times[size].append((secs, cpu))
            same = sum(o == e for oe, re_ in zip(out, ref) for o, e in zip(oe, re_))
            print(
                f"round {r}: batched (batch {size} rows) {secs:.1f} s wall, {cpu:.1f} s CPU, "
                f"same outputs {same}/{len(edits) * len(prompts)}, load {os.getloadavg()[0]:.2f}"
            )
            assert out == ref, f"batched outputs differ from sequential at batch {size}"
    seq_wall, seq_cpu = min(t[0] for t in seq_times), min(t[1] for t in seq_times)
    print(f"\nsequential: {seq_wall:.1f} s wall, {seq_cpu:.1f} s CPU (best of {args.rounds})")
    for size, times in batched_times.items():
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        print(
            f"batched {size:>4} rows: {wall:.1f} s wall = {wall / seq_wall:.2f}x, "
            f"{cpu:.1f} s CPU = {cpu / seq_cpu:.2f}x the sequential time"
        )


if __name__ == "__main__":
    main()
