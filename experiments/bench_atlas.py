"""One head atlas end to end, as a user runs it: `python -m headpursuit.app.atlas` on the shipped
prompts (the atlas config's defaults), on the CPU in float32, W&B off, with a fresh cache (cold:
the model answers, the capture and the SOMP all run) and then again on the same cache (warm: only
the concepts, the control and the outputs are computed).

Prints, per run, the wall-clock seconds of the whole command (Python start, Hydra, model load and
every stage), the stage timings the run records in results.json, the number of activation rows and
SOMP runs, and the load average before and after (on a shared machine the wall clock moves with the
other processes' load; the CPU seconds of the command are printed too).

    .venv/bin/python experiments/bench_atlas.py                          # SmolLM2, cold + warm
    .venv/bin/python experiments/bench_atlas.py --model gemma3_270m
    .venv/bin/python experiments/bench_atlas.py --overrides atlas.positions=answer   # answer rows
    .venv/bin/python experiments/bench_atlas.py --profile               # cProfile of the cold run
    .venv/bin/python experiments/bench_atlas.py --quick                 # 2 prompts per group, 2 random sets

The issue's target (docs/results.md, "Head atlas"): one SmolLM2 atlas under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: --quick: the overrides of a short run (a check that the benchmark runs)
QUICK = ["atlas.n_per_group=2", "atlas.random_draws=2"]


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_atlas(model: str, run_dir: Path, cache: Path, overrides: list[str], profile: Path | None) -> dict:
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += [
        "-m",
        "headpursuit.app.atlas",
        f"model={model}",
        "device=cpu",
        "dtype=float32",
        "logger=none",
        "resume=false",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}",
        *overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before, cpu0, t0 = load(), children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"atlas failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads((run_dir / "results.json").read_text())
    return {"wall": wall, "cpu": cpu, "before": before, "after": load(), "res": res}


def report(label: str, r: dict) -> None:
    res = r["res"]
    prov = res["provenance"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in prov["timings"].items())
    print(
        f"{label}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU (the command, Python start included); "
        f"{r['before']} before, {r['after']} after"
    )
    print(f"  stages (s): {stages}")
    print(
        f"  {prov['n_prompts']} prompts, {prov['n_activation_rows']} rows ({prov['positions']}), "
        f"{len(res['concepts'])} concepts, {res['somp_runs']} SOMP runs (one per head), "
        f"cache hits {prov['cache']['hits']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra atlas config overrides")
    ap.add_argument("--keep", action="store_true", help="keep the run and cache directories (printed)")
    ap.add_argument("--profile", action="store_true", help="cProfile the cold run (top 25 by cumulative time)")
    ap.add_argument("--quick", action="store_true", help=f"a check that it runs, not a timing: {' '.join(QUICK)}")
    args = ap.parse_args()
    if args.quick:
        args.overrides = [*args.overrides, *QUICK]
    root = Path(tempfile.mkdtemp(prefix="bench_atlas_"))
    print(f"{args.model}: {os.cpu_count()} CPUs, {' '.join(args.overrides) or 'defaults'}; {root}")
    prof = root / "cold.prof" if args.profile else None
    try:
        cold = run_atlas(args.model, root / "cold", root / "cache", args.overrides, prof)
        report("cold (empty cache)", cold)
        warm = run_atlas(args.model, root / "warm", root / "cache", args.overrides, None)
        report("warm (answers, activations, SOMP cached)", warm)
        if prof is not None:
            import pstats

            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
