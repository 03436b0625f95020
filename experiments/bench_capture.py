"""Load time of the embedded model (first = dequantise GGUF, second = cached) and extraction
throughput for 50 short prompts, with and without capture hooks, measured side by side.

    .venv/bin/python experiments/bench_capture.py [--model smollm2] [--repeats 3] [--prompts 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from headpursuit import load_model
from headpursuit.capture import capture_heads

QUESTIONS = [f"In which country is the city number {i} of this list?" for i in range(50)]


def _timed_load(model: str, cache: str) -> float:
    code = (
        "import time,os;t=time.perf_counter();from headpursuit import load_model;"
        f"lm=load_model({model!r});print(time.perf_counter()-t, lm.provenance['from_cache'])"
    )
    env = {**os.environ, "HEADPURSUIT_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    secs, from_cache = out.stdout.split()[-2:]
    return float(secs), from_cache == "True"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=len(QUESTIONS), help="how many of the 50 prompts to extract")
    args = ap.parse_args()
    torch.set_num_threads(2)

    cache = tempfile.mkdtemp(prefix="hp-bench-cache-")
    try:
        first, c1 = _timed_load(args.model, cache)
        second, c2 = _timed_load(args.model, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(
        f"load {args.model}: first {first:.1f}s (from_cache={c1}), second {second:.1f}s "
        f"(from_cache={c2}), ratio {first / second:.1f}x  [wall time in a fresh process]"
    )

    lm = load_model(args.model)
    prompts = [lm.format_prompt(q) for q in QUESTIONS[: args.prompts]]

    def plain():
        with torch.inference_mode():
            for i in range(0, len(prompts), args.batch_size):
                lm.model(**lm.encode(prompts[i : i + args.batch_size]), use_cache=False)

    def hooked():
        capture_heads(lm, prompts, positions="all", batch_size=args.batch_size, progress=False)

    plain()  # warm-up
    t_plain, t_hook = [], []
    for _ in range(args.repeats):  # interleaved so both see the same machine state
        t = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        hooked()
        t_hook.append(time.perf_counter() - t)
    bp, bh = min(t_plain), min(t_hook)
    n = len(prompts)
    print(
        f"extraction of {n} prompts (batch {args.batch_size}, all positions, all "
        f"{lm.layout.n_total_heads} heads): no hooks {n / bp:.1f} samples/s, with capture "
        f"{n / bh:.1f} samples/s, overhead {bh / bp:.2f}x"
    )
    print(f"capture_overhead_ratio={bh / bp:.3f}")


if __name__ == "__main__":
    main()
