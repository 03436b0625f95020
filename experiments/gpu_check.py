"""On a CUDA machine: does the library give the CPU's answers on the GPU, and how fast? (issue 15)

Loads the embedded SmolLM2 twice (CPU float32 = the reference, CUDA in `--dtype`) and compares:

* capture: per-head z of 40 QA fixture questions teacher-forced with their answers (max abs diff),
  and on the device ``batch_size="auto"`` vs 16;
* ranking: `rank_heads` on the CUDA model's activations and weights vs the CPU's (same top-k
  heads, in order and as a set; max abs diff of the scores);
* editing in generate: greedy answers with the CPU ranking's top-k heads flipped (same outputs);
* batched edits: the ranked edit + `--random` random sets of k heads + the baseline `{}`, one edit
  at a time on the CPU vs `generate_with_edits` on the device (same outputs), and on the device one at a
  time vs batched with ``batch_size="auto"`` (the chosen size is printed);

and prints each step's wall-clock time on both devices. Without CUDA it says so and exits 0.
Library only (no Hydra):

    .venv/bin/python experiments/gpu_check.py [--dtype float32] [--n 40] [--k 6] [--random 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T], which: str) -> tuple[T, float]:
    """fn() and its wall-clock seconds; `which` is "cpu" (the reference) or "dev" (the device checked)."""
    sync = which == "dev" and torch.cuda.is_available()
    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    print(f"  {label:<44} {which:>4}: {secs:8.2f} s")
    return out, secs


def same_fraction(a: list[list[str]], b: list[list[str]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32", help="dtype of the CUDA copy (the CPU copy is float32)")
    ap.add_argument("--n", type=int, default=40, help="QA fixture questions")
    ap.add_argument("--k", type=int, default=6, help="heads per edit")
    ap.add_argument("--random", type=int, default=10, help="random edits")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the reference")
    ap.add_argument("--device", default="cuda", help="the device checked ('cpu': a dry run of this script)")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine: nothing to check.")
        return 0

    from headpursuit import CaptureSample, capture_heads, load_concept, load_model, rank_heads
    from headpursuit.intervention import generate_with_edits, scale_heads
    from headpursuit.models.batching import chosen_batch_sizes
    from headpursuit.models.generation import generate_batch
    from headpursuit.tasks.loaders import load_qa_fixture

    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device: {where}, torch {torch.__version__}, CPU reference on {args.threads} threads")
    lms = {
        "cpu": load_model(args.model, dtype="float32", device="cpu"),
        "dev": load_model(args.model, dtype=args.dtype, device=args.device),
    }
    items = [it for it in load_qa_fixture() if it.group == "concept"][: args.n]
    concept = load_concept("countries", lms["cpu"].tokenizer)
    prompts = [lms["cpu"].format_prompt(it.question) for it in items]
    samples = [CaptureSample(prompt=p, answer=it.answers[0]) for p, it in zip(prompts, items)]
    report: dict[str, object] = {}

    print("capture (positions=answer_concept)")
    acts = {
        d: timed(
            "capture_heads",
            lambda d=d: capture_heads(
                lms[d],
                samples,
                positions="answer_concept",
                concept_token_ids=concept.token_ids,
                batch_size=16,
                progress=False,
            ),
            d,
        )[0]
        for d in ("cpu", "dev")
    }
    dz = (acts["dev"].z.float().cpu() - acts["cpu"].z).abs()
    report["capture max |dz|"] = f"{dz.max().item():.3g} (max |z| {acts['cpu'].z.abs().max().item():.3g})"
    auto_acts, _ = timed(
        "capture_heads (batch auto)",
        lambda: capture_heads(
            lms["dev"],
            samples,
            positions="answer_concept",
            concept_token_ids=concept.token_ids,
            batch_size="auto",
            progress=False,
        ),
        "dev",
    )
    report["capture batch auto vs 16 max |dz|"] = f"{(auto_acts.z - acts['dev'].z).abs().max().item():.3g}"

    print("ranking (concept_share)")
    scores = {
        d: timed("rank_heads", lambda d=d: rank_heads(acts[d], lms[d], concept, somp_steps=args.k), d)[0]
        for d in ("cpu", "dev")
    }
    top = {d: scores[d].top(args.k) for d in scores}
    report["ranking same top-k in order"] = top["cpu"] == top["dev"]
    report["ranking top-k overlap"] = f"{len(set(top['cpu']) & set(top['dev']))}/{args.k}"
    merged = scores["cpu"].table.merge(scores["dev"].table, on=["layer", "head"], suffixes=("_cpu", "_dev"))
    if "score_cpu" in merged:
        report["ranking max |d score|"] = f"{(merged['score_cpu'] - merged['score_dev']).abs().max():.3g}"

    ranked = dict.fromkeys(top["cpu"], -1.0)
    print(f"editing in generate (top-{args.k} of the CPU ranking flipped: {top['cpu']})")
    edited = {}
    for d in ("cpu", "dev"):

        def run(d: str = d) -> list[str]:
            with scale_heads(lms[d], ranked):
                out = generate_batch(lms[d], prompts, max_new_tokens=args.max_new_tokens, batch_size=16, progress=False)
            return list(out)  # type: ignore[arg-type]

        edited[d] = timed("scale_heads + generate_batch", run, d)[0]
    report["edited generate same outputs"] = f"{same_fraction([edited['cpu']], [edited['dev']]):.3f}"

    heads = [(layer, h) for layer in range(lms["cpu"].layout.n_layers) for h in range(lms["cpu"].layout.n_heads)]
    edits = [{}, ranked] + [dict.fromkeys(random.Random(s).sample(heads, args.k), -1.0) for s in range(args.random)]
    print(f"batched edits ({len(edits)} edits incl. the baseline x {len(prompts)} prompts)")

    def one_at_a_time(d: str) -> list[list[str]]:
        out = []
        for edit in edits:
            with scale_heads(lms[d], edit):
                out.append(
                    list(
                        generate_batch(
                            lms[d], prompts, max_new_tokens=args.max_new_tokens, batch_size=16, progress=False
                        )
                    )
                )
        return out  # type: ignore[return-value]

    seq_cpu, t_seq_cpu = timed("one edit at a time (batch 16)", lambda: one_at_a_time("cpu"), "cpu")
    seq_gpu, t_seq_gpu = timed("one edit at a time (batch 16)", lambda: one_at_a_time("dev"), "dev")
    batched_gpu, t_batched_gpu = timed(
        "generate_with_edits (batch auto)",
        lambda: generate_with_edits(
            lms["dev"], prompts, edits, max_new_tokens=args.max_new_tokens, batch_size="auto", progress=False
        ),
        "dev",
    )
    batched_gpu_warm, t_batched_warm = timed(
        "generate_with_edits (batch auto, probed)",
        lambda: generate_with_edits(
            lms["dev"], prompts, edits, max_new_tokens=args.max_new_tokens, batch_size="auto", progress=False
        ),
        "dev",
    )
    report["batched device vs one-at-a-time CPU same outputs"] = f"{same_fraction(batched_gpu, seq_cpu):.3f}"
    report["batched device vs one-at-a-time device same outputs"] = f"{same_fraction(batched_gpu, seq_gpu):.3f}"
    report["one-at-a-time device vs CPU same outputs"] = f"{same_fraction(seq_gpu, seq_cpu):.3f}"
    report["batched device run to run same outputs"] = f"{same_fraction(batched_gpu, batched_gpu_warm):.3f}"
    report["auto batch sizes"] = [
        f"{c.kind} prompt<={c.prompt_len} new<={c.new_tokens}: {c.size} (tried up to {c.limit})"
        for c in chosen_batch_sizes(lms["dev"])
    ]
    report["speed-up batched device vs one-at-a-time CPU"] = f"{t_seq_cpu / t_batched_warm:.1f}x"
    report["speed-up batched device vs one-at-a-time device"] = f"{t_seq_gpu / t_batched_warm:.1f}x"

    print("\nagreement and timings")
    for key, value in report.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
