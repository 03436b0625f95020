"""The paper's head-selection protocol beside ours, on the embedded models (issue 12).

    .venv/bin/python experiments/compare_protocols.py                 # both models, all sweeps
    .venv/bin/python experiments/compare_protocols.py --only smollm2  # one model
    .venv/bin/python experiments/compare_protocols.py --aggregate-only

For each embedded model (SmolLM2-135M-Instruct, Gemma-3-270M) and QA countries, through the real
pipeline (`python -m headpursuit -m protocol=...`, one multirun each):

  * paper:      protocol=paper, ranking=paper (SOMP restricted to the concept tokens,
                k=50 steps, centred, raw rows), task.positions=prompt_mean, ranking questions of both
                groups (task.rank_groups=[concept,control]), 10 random sets with the edited set's
                per-layer counts (random_pool=layer_counts), with our prompt (task.prompt_preset=ours,
                as these sweeps were first run; the paper's prompt is protocol=paper's own);
  * paper LL:   the same with ranking=logit_lens_mean (the paper's logit-lens baseline);
  * paper, concept-only ranking questions: task.rank_groups=[concept] (the paper does not say);
  * ours:       protocol=paper_controls: concept_share (full-vocabulary SOMP) at answer_concept
                positions, same k list and random protocol;

k = 1%, 2%, 4% of the heads, alpha = -1, at least 100 evaluation questions per group. Every metric
is normalised to the unedited model (edited / unedited; random: median [25th, 75th percentile]
over the 10 sets). Specificity = control retained minus concept retained (normalised), with its 95%
paired bootstrap interval over the questions (results.json `intervals`); "vs random" subtracts the
random sets' median specificity, and p is the empirical p-value against the 10 sets (at least 1/11). The section it writes goes between the
`protocols` markers of docs/results.md (reproduce_embedded.py keeps that block when it rewrites
the page).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from reproduce_embedded import run_sweep  # noqa: E402

from headpursuit.app.results import RESULTS_FILE, Outcome, ResultsError, RunRecord  # noqa: E402

OUT = ROOT / "outputs" / "protocols"
DOC = ROOT / "docs" / "results.md"
START, END = "<!-- protocols:start -->", "<!-- protocols:end -->"
MODELS = {"smollm2": 270, "gemma3_270m": 72}
N_EVAL = 100
N_RANK: int | None = None  # ranking questions per group; None: the experiment files' own
FRACS = "0.01,0.02,0.04"
GROUPS = ("concept", "control")


# " (run from commit X)": set by --from-commit when the runs were made in a frozen worktree
FROM_COMMIT = ""
# how the runs were made, where the page should say it (--run-note): one sentence after the timings
RUN_NOTE = ""


def set_n_eval(n: int, n_rank: int | None = None) -> None:
    global N_EVAL, N_RANK
    N_EVAL, N_RANK = n, n_rank


def sweeps(model: str) -> dict[str, list[str]]:
    """name -> Hydra overrides of one multirun (k_frac replaces the protocols' own k axis)."""
    common = [f"model={model}", f"task.n_eval={N_EVAL}", f"intervention.k_frac={FRACS}", "task.batch_size=64"]
    common += [f"task.n_rank={N_RANK}"] if N_RANK is not None else []
    paper = ["protocol=paper", "task.prompt_preset=ours"]  # our prompt, as docs/results.md's runs
    return {
        "paper": [*paper, "ranking=paper", *common],
        "paper_ll": [*paper, "ranking=logit_lens_mean", *common, "intervention.random_controls=false"],
        "paper_concept_only": [
            *paper,
            "ranking=paper",
            *common,
            "task.rank_groups=[concept]",
            "intervention.random_controls=false",
        ],
        "ours": ["protocol=paper_controls", *common],
    }


def uniform_fallback(model: str, k_fracs: list[float]) -> list[str]:
    """The paper's selection where its layer-count control cannot be drawn (a layer holds more
    than half its heads in the edited set): the same runs with uniform random sets instead."""
    overrides = [o for o in sweeps(model)["paper"] if not o.startswith("intervention.k_frac=")]
    return [*overrides, "intervention.k_frac=" + ",".join(str(f) for f in k_fracs), "intervention.random_pool=all"]


def undrawable_k_fracs(sweep_dir: Path) -> list[float]:
    """k_frac of the runs that failed because the layer-count random sets cannot be drawn."""
    out = []
    for rec in runs(sweep_dir):
        msg = (rec.error.message or "") if rec.error is not None else ""
        if rec.status == "failed" and "random_pool" in msg and "layer" in msg:
            out.append(float(rec.config_at("intervention", "k_frac")))
    return sorted(out)


LABELS = {
    "paper": "paper: SOMP restricted, prompt mean",
    "paper_ll": "paper: LL mean logit",
    "paper_concept_only": "paper, concept-only ranking questions",
    "ours": "ours: concept_share, answer_concept",
}


# ------------------------------------------------------------------------------------------
# Reading the runs
# ------------------------------------------------------------------------------------------


def runs(sweep_dir: Path) -> list[RunRecord]:
    out = []
    for p in sorted(sweep_dir.rglob(RESULTS_FILE)):
        try:
            rec = RunRecord.read(p)
        except ResultsError as exc:
            rec = None
            print(f"  {exc}")
        if rec is None:
            print(f"  unreadable: {p}")
            continue
        out.append(rec)
    return out


def ratio(x: float | None, base: float | None) -> float:
    if x is None or base is None or base == 0 or (isinstance(x, float) and math.isnan(x)):
        return float("nan")
    return x / base


def quartiles(vals: list[float]) -> tuple[float, float, float]:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return (float("nan"),) * 3
    if len(vals) == 1:
        return vals[0], vals[0], vals[0]
    q = statistics.quantiles(vals, n=4, method="inclusive")
    return q[1], q[0], q[2]


def summary(outcome: Outcome, metric: str) -> dict:
    """Normalised edited values and the random sets' median [q25, q75] per group, plus specificity."""
    base = outcome.baseline
    seeds = outcome.random.per_seed if outcome.random is not None else []
    out: dict = {"k": outcome.edit.k, "heads": " ".join(f"{a}.{b}" for a, b in outcome.edit.pairs)}
    ivs, sig = outcome.intervals, outcome.significance
    nan_iv = (float("nan"), float("nan"))
    for g in GROUPS:
        out[f"edited.{g}"] = ratio(outcome.edited.metric(g, metric), base.metric(g, metric))
        out[f"base.{g}"] = base.metric(g, metric)
        iv = ivs.edited.ratio.get(g, {}).get(metric) if ivs is not None else None
        out[f"ci.{g}"] = (iv.lo, iv.hi) if iv is not None else nan_iv
        out[f"p.{g}"] = sig.p.get(g, {}).get(metric, float("nan")) if sig is not None else float("nan")
        out[f"random.{g}"] = quartiles([ratio(s.result.metric(g, metric), base.metric(g, metric)) for s in seeds])
    # the random sets that differ: with few heads per layer the layer-count draws repeat
    out["n_sets"] = len(seeds)
    out["n_distinct"] = len({tuple(s.heads) for s in seeds})
    out["n_asked"] = len(outcome.random.seeds) if outcome.random is not None else 0
    # layers whose edited heads outnumber the others: their sets borrow heads from nearby layers
    out["borrowed"] = sorted((outcome.random.relaxed_layers or {}) if outcome.random is not None else {})
    out["spec"] = out["edited.control"] - out["edited.concept"]
    iv = ivs.edited.specificity.get(metric) if ivs is not None else None
    out["ci.spec"] = (iv.lo, iv.hi) if iv is not None else nan_iv
    out["p.spec"] = sig.specificity_p.get(metric, float("nan")) if sig is not None else float("nan")
    # The random sets' specificity: the median of each set's own (results.json `specificity`).
    spec = outcome.specificity
    median = spec.random_median.get(metric) if spec is not None and seeds else None
    rc, rk = out["random.concept"][0], out["random.control"][0]
    out["spec_random"] = median if median is not None else rk - rc
    out["n_eval"] = base.n
    return out


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def ci(value: float, bounds: tuple[float, float], digits: int = 2) -> str:
    """ "0.53 [0.41, 0.66]" (the value alone where the interval is undefined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    lo, hi = bounds
    return fmt(value, digits) + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def excludes_zero(bounds: tuple[float, float]) -> bool:
    lo, hi = bounds
    return not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)


def random_sets_note(row: dict) -> str:
    """ " (3 sets: all there are)" where the pool held fewer distinct sets than asked (issue 21: all
    of them are used, and the smallest p is then 1/(1 + N)); " (8 distinct of 10)" in older runs,
    whose sets could repeat."""
    if row.get("n_distinct", 0) < row.get("n_sets", 0):
        return f" ({row['n_distinct']} distinct of {row['n_sets']})"
    if 0 < row.get("n_sets", 0) < row.get("n_asked", 0):
        return f" ({row['n_sets']} sets: all there are)"
    if row.get("borrowed"):
        return f" (layer {', '.join(map(str, row['borrowed']))}: heads borrowed from nearby layers)"
    return ""


def iqr(t: tuple[float, float, float], pool: str | None = None) -> str:
    note = f" ({pool})" if pool else ""
    return "n/a" if math.isnan(t[0]) else f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]{note}"


# ------------------------------------------------------------------------------------------
# The page section
# ------------------------------------------------------------------------------------------


def model_section(model: str, metric: str) -> tuple[str, dict]:
    by_sweep = {
        name: {
            r.outcome.edit.k: summary(r.outcome, metric)
            for r in runs(OUT / model / name)
            if r.status == "complete" and r.outcome is not None
        }
        for name in [*sweeps(model), "paper_uniform"]
    }
    # Where the paper's layer-count control could not be drawn, its uniform-control rerun stands in
    # (marked "uniform" in the random row).
    for k, row in by_sweep.pop("paper_uniform").items():
        by_sweep["paper"].setdefault(k, {**row, "pool": "uniform"})
    ks = sorted({k for rows in by_sweep.values() for k in rows})
    if not ks:
        return f"_{model}: not measured in this run (the script's `--only {model}` runs its sweeps)._\n", {}
    any_row = next(iter(next(r for r in by_sweep.values() if r).values()))
    n_total = MODELS[model]
    lines = [f"### {model} ({n_total} heads), metric: {metric}", ""]
    lines.append(
        f"Unedited: concept {fmt(any_row['base.concept'])}, control {fmt(any_row['base.control'])}. "
        "Cells: edited / unedited [95% paired bootstrap interval over the questions], concept questions | "
        "control questions; p: the empirical p-value against the run's random sets (rank / (1 + N), at least "
        "1/11 with 10 sets)."
    )
    lines.append("")
    lines.append("| selection | " + " | ".join(f"k={k} ({100 * k / n_total:.1f}%)" for k in ks) + " |")
    lines.append("|---|" + "---|" * len(ks))
    for name in ("paper", "paper_ll", "paper_concept_only", "ours"):
        rows = by_sweep.get(name, {})
        cells = [
            (
                f"{ci(rows[k]['edited.concept'], rows[k]['ci.concept'])} \\| "
                f"{ci(rows[k]['edited.control'], rows[k]['ci.control'])}"
                + (
                    f" (p {fmt(rows[k]['p.concept'])} \\| {fmt(rows[k]['p.control'])})"
                    if name in ("paper", "ours")
                    else ""
                )
            )
            if k in rows
            else "n/a"
            for k in ks
        ]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        if name in ("paper", "ours"):
            cells = [
                f"{iqr(rows[k]['random.concept'])} \\| {iqr(rows[k]['random.control'], rows[k].get('pool'))}"
                + random_sets_note(rows[k])
                if k in rows
                else "n/a"
                for k in ks
            ]
            lines.append(f"| Rand. median [IQR], layer counts of {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Specificity (control retained − concept retained; higher = more concept-specific) with its 95% "
        "interval, minus the random sets' median specificity, and its p-value against them "
        "(**bold**: the interval excludes 0):",
        "",
    ]
    lines.append("| selection | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("|---|" + "---|" * len(ks))
    verdict = {}
    for name in ("paper", "paper_ll", "paper_concept_only", "ours"):
        rows = by_sweep.get(name, {})
        cells = []
        for k in ks:
            if k not in rows:
                cells.append("n/a")
                continue
            r = rows[k]
            rel = r["spec"] - r["spec_random"] if not math.isnan(r["spec_random"]) else float("nan")
            text = ci(r["spec"], r["ci.spec"])
            text = f"**{text}**" if excludes_zero(r["ci.spec"]) else text
            if not math.isnan(rel):
                text += f" (vs random {fmt(rel)}; p {fmt(r['p.spec'])})"
            cells.append(text)
            if excludes_zero(r["ci.spec"]):
                verdict.setdefault(f"{name}_excludes_zero", []).append(k)
            verdict.setdefault(name, []).append(r["spec"])
            if not math.isnan(rel):
                verdict.setdefault(f"{name}_vs_random", []).append(rel)
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    heads = [
        f"{LABELS[n]}: " + "; ".join(f"k={k}: {r['heads']}" for k, r in sorted(by_sweep[n].items()))
        for n in ("paper", "paper_ll", "ours")
        if by_sweep.get(n)
    ]
    lines += ["", "Edited heads (layer.head): " + " — ".join(heads), ""]
    means = {n: sum(v) / len(v) for n, v in verdict.items() if v and not n.endswith("_excludes_zero")}
    means.update({n: v for n, v in verdict.items() if n.endswith("_excludes_zero")})
    return "\n".join(lines) + "\n", means


def paper_shaped(model: str) -> str:
    """The paper's table layout (rows SOMP / LL / Rand. median [q25, q75], columns k) of every run of
    `model`, accuracy and F1 per group, from the aggregate's own `paper_table_long`."""
    from headpursuit.app.aggregate import load_runs, paper_table_long, paper_tables, to_markdown

    df = load_runs(OUT / model)
    if df.empty:
        return ""
    parts = [
        f"#### {model}: the paper's table layout (edited / unedited; Rand.: median [q25, q75] of the random sets)",
        "",
    ]
    for setting, table in paper_tables(paper_table_long(df)):
        if setting["metric"] in ("accuracy", "f1"):
            parts += [f"{setting['group']} questions, {setting['metric']}:", "", to_markdown(table)]
    return "\n".join(parts) + "\n"


def sweeps_on_disk() -> dict[str, list[str]]:
    """Per model, the sweeps of `sweeps` whose directory exists under OUT (what the page reports)."""
    return {model: [name for name in sweeps(model) if (OUT / model / name).is_dir()] for model in MODELS}


def not_run_note() -> str:
    """One sentence per model naming the sweeps that were not run (their rows read n/a)."""
    missing = {model: [n for n in sweeps(model) if n not in ran] for model, ran in sweeps_on_disk().items()}
    notes = [f"{model}: {', '.join(f'`{n}`' for n in names)}" for model, names in missing.items() if names]
    if not notes:
        return ""
    return "Not in this run (rows n/a; the script's `--only MODEL --sweep NAME` runs one): " + "; ".join(notes) + "."


def section(seconds: dict[str, float]) -> str:
    parts = [
        START,
        "## The paper's protocol vs ours (issues 12 and 21)",
        "",
        f"Made by `python experiments/compare_protocols.py --n-eval {N_EVAL}"
        + (f" --n-rank {N_RANK}" if N_RANK is not None else "")
        + f"`{FROM_COMMIT} on "
        f"{time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, CPU only). Sweeps: `protocol=paper task.prompt_preset=ours` (ranking=paper and "
        "ranking=logit_lens_mean; task.rank_groups=[concept] as the variant) and "
        f"`protocol=paper_controls`, k_frac = {FRACS}, {N_EVAL} evaluation questions per group, alpha = -1, "
        "10 random head sets per run with the edited set's per-layer counts, disjoint from it and from each "
        "other; where a layer has too few other heads a set borrows from the nearest layers, and where "
        "fewer than 10 such sets exist all of them are used (both said in the random row; with N sets the "
        "smallest p is 1/(1 + N)). Runs whose sets could not be drawn at all (code of before issue 19, which lets a set borrow) are "
        "repeated with 10 uniform random sets, marked (uniform). "
        "Wall-clock minutes per sweep: "
        + ", ".join(f"`{k}` {v / 60:.1f}" for k, v in sorted(seconds.items()))
        + "."
        + (f" {RUN_NOTE}" if RUN_NOTE else ""),
        "",
        not_run_note(),
        "",
    ]
    for metric in ("accuracy", "f1"):
        verdicts = {}
        for model in MODELS:
            text, verdict = model_section(model, metric)
            if "not measured" in text and metric == "f1":
                continue
            parts.append(text)
            verdicts[model] = verdict
        for model, v in verdicts.items():
            if "paper" in v and "ours" in v:
                better = "the paper's" if v["paper"] > v["ours"] else "ours"
                line = (
                    f"- {model}, {metric}: mean specificity over k: paper {v['paper']:.2f}, ours "
                    f"{v['ours']:.2f}, LL {v.get('paper_ll', float('nan')):.2f} -> **{better}** is more "
                    f"specific by {abs(v['paper'] - v['ours']):.2f}"
                )
                if "paper_vs_random" in v and "ours_vs_random" in v:
                    pr, our = v["paper_vs_random"], v["ours_vs_random"]
                    line += (
                        f"; relative to their random sets: paper {pr:.2f}, ours {our:.2f} -> "
                        f"**{'the paper' if pr > our else 'ours'}** by {abs(pr - our):.2f}"
                    )
                zero = "; ".join(
                    f"{who}: k = {', '.join(map(str, v.get(f'{who}_excludes_zero', []))) or 'none'}"
                    for who in ("paper", "ours")
                )
                parts.append(line + f"; specificity interval excludes 0 at {zero}.")
        parts.append("")
    for model in MODELS:
        parts.append(paper_shaped(model))
    parts.append(END)
    return "\n".join(parts) + "\n"


def write_section(text: str) -> None:
    page = DOC.read_text() if DOC.exists() else ""
    if START in page and END in page:
        page = page[: page.index(START)] + text + page[page.index(END) + len(END) + 1 :]
    else:
        page = page.rstrip("\n") + "\n\n" + text
    DOC.write_text(page)


def main(argv: list[str] | None = None) -> int:
    global FROM_COMMIT, RUN_NOTE, OUT, DOC
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(MODELS), help="run one model's sweeps")
    ap.add_argument("--sweep", choices=list(sweeps("smollm2")), action="append", help="run only these sweeps")
    ap.add_argument("--aggregate-only", action="store_true", help="rebuild the section from outputs/protocols")
    ap.add_argument("--n-eval", type=int, default=N_EVAL, help=f"evaluation questions per group (default {N_EVAL})")
    ap.add_argument("--n-rank", type=int, default=None, help="ranking questions per group (default: the experiments')")
    ap.add_argument("--from-commit", default="", help="the commit the runs were made from (said in the page)")
    ap.add_argument("--run-note", default="", help="how the runs were made (said after the timings)")
    ap.add_argument("--out", type=Path, default=DOC, help="the page whose protocols section is (re)written")
    ap.add_argument("--sweeps", type=Path, default=OUT, help="where the sweep dirs go")
    ap.add_argument("--cache-dir", default=None, help="the pipeline's cache_dir (default: its own, outputs/cache)")
    ap.add_argument(
        "--print-plan",
        action="store_true",
        help="print the sweeps as JSON (name, Hydra overrides of its multirun, its dir under --sweeps, the flags "
        "that run it alone) and exit",
    )
    args = ap.parse_args(argv)
    set_n_eval(args.n_eval, args.n_rank)
    FROM_COMMIT = f" (run from commit {args.from_commit})" if args.from_commit else ""
    RUN_NOTE = args.run_note
    OUT, DOC = args.sweeps.resolve(), args.out.resolve()
    if args.print_plan:
        plan = [
            {
                "name": f"{model}/{name}",
                "overrides": overrides,
                "dir": f"{model}/{name}",
                "select": ["--only", model, "--sweep", name],
            }
            for model in MODELS
            for name, overrides in sweeps(model).items()
        ]
        print(json.dumps(plan, indent=1))
        return 0
    timing_file = OUT / "wall_seconds.json"
    seconds = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if not args.aggregate_only:
        for model in [args.only] if args.only else list(MODELS):
            for name, overrides in sweeps(model).items():
                if args.sweep and name not in args.sweep:
                    continue
                out = OUT / model / name
                out.mkdir(parents=True, exist_ok=True)
                seconds[f"{model}/{name}"] = run_sweep(out, overrides, out / "sweep.log", args.cache_dir)
                if name == "paper" and (fracs := undrawable_k_fracs(out)):
                    fb = OUT / model / "paper_uniform"
                    fb.mkdir(parents=True, exist_ok=True)
                    seconds[f"{model}/paper_uniform"] = run_sweep(
                        fb, uniform_fallback(model, fracs), fb / "sweep.log", args.cache_dir
                    )
                timing_file.write_text(json.dumps(seconds, indent=2))
                write_section(section(seconds))
    write_section(section(seconds))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
