"""Causal check of the SOMP ranking on QA countries: what flipping each head ALONE does.

    .venv/bin/python experiments/head_sensitivity.py                    # all heads of SmolLM2 (~15 min)
    .venv/bin/python experiments/head_sensitivity.py --heads 60         # top-60 concept_share heads only
    .venv/bin/python experiments/head_sensitivity.py --evaluate 3,6     # + evaluate the causal top-k

For every head, `headpursuit.effects.head_effects` flips it (alpha=-1) and measures the change in
the mean log-probability of the model's own CORRECT answers, teacher-forced, separately for concept
(country) and control questions. Samples: the concept questions are the SOMP ranking split (the
same 40 questions `concept_share` is computed on); the control questions are taken from control
items OUTSIDE the evaluation split used by `reproduce_embedded.py` (n_eval=20, seed 0), so nothing
here sees the evaluation questions.

`--evaluate` then flips the top-k heads by causal specificity (concept damage minus
`--control-weight` (default 2) times control damage, measured on those samples) and evaluates them on the evaluation split by generation, next to the
top-k `concept_share` heads: a supervised upper reference for what a head choice can achieve on
this model (SOMP, by contrast, never looks at the model's behaviour, only at what heads write).

Writes (into --out, default docs/sensitivity/<model>, committed and read by reproduce_embedded.py): head_effects.csv (layer, head,
delta_concept, delta_control, concept_share score/rank), sensitivity.png (scatter), summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headpursuit import load_model  # noqa: E402
from headpursuit.app.stages import concept_token_ids, evaluate_with_edits  # noqa: E402
from headpursuit.capture import CaptureSample, capture_heads  # noqa: E402
from headpursuit.effects import head_effects  # noqa: E402
from headpursuit.metrics.text import alias_match  # noqa: E402
from headpursuit.ranking import rank_heads  # noqa: E402
from headpursuit.tasks import build_task  # noqa: E402

TASK = {"name": "qa_countries", "n_rank": 40, "n_eval": 20, "seed": 0, "max_new_tokens": 16}
# What --control-weight (w) weighs: how a head's causal specificity is computed from its flip effects.
CONTROL_WEIGHT_HELP = "specificity = -delta_concept + w * delta_control (w > 1 penalises control damage)"


def correct_samples(lm, task, items, n: int, desc: str) -> list[CaptureSample]:
    """The model's own greedy answers to `items`, only the correct ones, at most n."""
    go = task.answer(lm, items, desc=desc)
    out = [
        CaptureSample(prompt=p, answer=o[0])
        for it, p, o in zip(items, go.prompts, go.outputs)
        if alias_match(o[0], it.answers)
    ]
    return out[:n]


def scatter(table, path: Path, model: str, top_cs: list[tuple[int, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    c = ax.scatter(table.delta_control, table.delta_concept, c=table.layer, cmap="viridis", s=14)
    fig.colorbar(c, ax=ax, label="layer")
    for _, r in table.iterrows():
        if (int(r.layer), int(r["head"])) in top_cs:
            ax.scatter([r.delta_control], [r.delta_concept], s=60, facecolors="none", edgecolors="red")
            ax.annotate(
                f"{int(r.layer)}.{int(r['head'])}",
                (r.delta_control, r.delta_concept),
                fontsize=7,
                color="red",
                xytext=(3, 3),
                textcoords="offset points",
            )
    lo = min(table.delta_control.min(), table.delta_concept.min())
    ax.plot([lo, 0], [lo, 0], ls="--", c="grey", lw=0.8)
    # A few load-bearing heads sit far out; symlog keeps the cluster of small effects readable.
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_yscale("symlog", linthresh=0.05)
    ax.set_xlabel("flip alone: change in log p(answer), CONTROL questions")
    ax.set_ylabel("flip alone: change in log p(answer), COUNTRY questions")
    ax.set_title(f"{model}: per-head flip effect (red: top concept_share heads)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=20, help="correct answers per group (concept, control)")
    ap.add_argument("--heads", type=int, default=0, help="only the top-N concept_share heads (0 = all)")
    ap.add_argument("--evaluate", default="", help="comma-separated k: evaluate the causal top-k by generation")
    ap.add_argument("--control-weight", type=float, default=2.0, help=CONTROL_WEIGHT_HELP)
    ap.add_argument("--reuse", action="store_true", help="read head_effects.csv from --out instead of scanning")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n-rank", type=int, default=TASK["n_rank"], help="ranking questions (concept_share, the scan)")
    ap.add_argument("--n-eval", type=int, default=TASK["n_eval"], help="evaluation questions per group")
    args = ap.parse_args()
    task_cfg = {**TASK, "n_rank": args.n_rank, "n_eval": args.n_eval}
    torch.set_num_threads(2)
    out = args.out or ROOT / "docs" / "sensitivity" / args.model
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    lm = load_model(args.model)
    task = build_task(task_cfg, lm)
    # Control items outside the evaluation split, in the task's seeded order.
    held_out = {it.question for it in task.items("eval", "control")}
    spare = build_task({**task_cfg, "n_eval": None}, lm)
    spare_ctrl = [it for it in spare.items("eval", "control") if it.question not in held_out]
    # The ranking answers serve twice: all of them for concept_share, the correct ones for the scan.
    rank_samples = task.ranking_samples(lm)
    concept = [CaptureSample(prompt=r.prompt, answer=r.answer) for r in rank_samples if r.meta["correct"]][: args.n]
    control = correct_samples(lm, task, spare_ctrl[: 2 * args.n + 10], args.n, "control (outside eval)")
    print(f"samples: {len(concept)} concept, {len(control)} control (correct unedited answers)", flush=True)

    # concept_share exactly as the pipeline computes it (same ranking samples, positions, k).
    cids = concept_token_ids(task.concept)
    acts = capture_heads(lm, rank_samples, positions="answer_concept", concept_token_ids=cids, progress=False)
    cs = rank_heads(acts, lm, task.concept, method="concept_share", somp_steps=10)
    ranked = [(int(a), int(b)) for a, b in cs.top(len(cs.table))]
    heads = ranked[: args.heads] if args.heads else None

    if args.reuse:
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        t = pd.read_csv(out / "head_effects.csv")
        baseline, n_samples = old.get("baseline_logprob"), old.get("n_samples")
        scan_seconds = old.get("scan_seconds")
    else:
        ts = time.perf_counter()
        eff = head_effects(lm, {"concept": concept, "control": control}, alpha=-1.0, heads=heads, batch_size=20)
        scan_seconds = round(time.perf_counter() - ts, 1)
        t = eff.table.merge(
            cs.table[["layer", "head", "score", "rank"]].rename(
                columns={"score": "concept_share_score", "rank": "concept_share_rank"}
            ),
            on=["layer", "head"],
        )
        baseline, n_samples = eff.baseline, eff.meta["n_samples"]
    # Concept damage minus w x control damage: w = 1 would favour heads that break everything a
    # little more for countries (the load-bearing layer-1 heads); w = 2 asks for specificity.
    t["specificity"] = -t.delta_concept + args.control_weight * t.delta_control
    t = t.sort_values("specificity", ascending=False).reset_index(drop=True)
    t.to_csv(out / "head_effects.csv", index=False)
    top_cs = ranked[:6]
    scatter(t, out / "sensitivity.png", lm.name, top_cs)

    x, y = t.delta_control.to_numpy(), t.delta_concept.to_numpy()
    summary = {
        "argv": " ".join(a for a in sys.argv[1:] if a != "--reuse"),
        "model": lm.name,
        "provenance": lm.provenance,
        "n_samples": n_samples,
        "baseline_logprob": baseline,
        "n_heads_scanned": len(t),
        "scan_seconds": scan_seconds,
        "control_weight": args.control_weight,
        # How much the heads that matter for country answers are the ones that matter for any answer.
        "pearson_r": float(np.corrcoef(x, y)[0, 1]),
        # Pearson is dominated by the few heads with large effects; ranks are not.
        "spearman_r": float(t.delta_control.corr(t.delta_concept, method="spearman")),
        "slope_through_origin": float((x * y).sum() / (x * x).sum()),
        "concept_share_top6": [f"{a}.{b}" for a, b in top_cs],
        "evaluations": {},
    }
    if args.evaluate:

        def flip(hs):
            r = evaluate_with_edits(lm, task, {h: -1.0 for h in hs})
            return {
                "heads": [f"{a}.{b}" for a, b in hs],
                "concept_accuracy": r["concept"]["accuracy"],
                "control_accuracy": r["control"]["accuracy"],
            }

        summary["evaluations"]["unedited"] = flip([])
        for k in [int(x) for x in args.evaluate.split(",") if x]:
            causal = [(int(r.layer), int(r["head"])) for _, r in t.head(k).iterrows()]
            summary["evaluations"][f"causal_top{k}"] = flip(causal)
            summary["evaluations"][f"concept_share_top{k}"] = flip(ranked[:k])
            print(
                k, summary["evaluations"][f"causal_top{k}"], summary["evaluations"][f"concept_share_top{k}"], flush=True
            )
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(t.head(12).to_string(), flush=True)
    print(f"wrote {out} in {summary['seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
