"""Reproduce the "about 1% of heads" result on the embedded models and write docs/results.md.

    .venv/bin/python experiments/reproduce_embedded.py            # (= make reproduce) full run
    .venv/bin/python experiments/reproduce_embedded.py --quick    # a few minutes, tiny samples

Everything runs through the real pipeline (`python -m headpursuit -m ...`, one Hydra multirun per
model and task), so each setting also has its own results.json / head_scores.csv under
outputs/reproduce/. The sweeps share the pipeline's cache: one activation extraction and one
ranking per (model, method), one baseline evaluation per model, and the random-head controls of a
(k, alpha) are computed once and reused by every ranking method.

What runs:
  * QA countries, SmolLM2-135M-Instruct (270 heads) and Gemma-3-270M (72 heads): k = 1%, 2%, 4% of
    the heads (rounded up), alpha in {-1, 0, 2}, ranking methods concept_share, concept_restricted,
    logit_lens, and random heads (5 seeds) at every (k, alpha). Ranking and evaluation questions
    are disjoint (seeded split of the fixture).
  * Enhancement: alpha = 2 rows of the same sweeps, plus a SmolLM2 sweep at alpha = 4, 8 (k = 1%, 2%;
    concept_share and logit_lens; 3 random seeds); country names in answers to control questions.
  * The concept_share ranking with single-word country names only (task.concept=countries_single_word),
    k = 1%, 2%, 4%, alpha -1 and 0.
  * Random-head controls at the headline setting (SmolLM2, concept_share top 2%, alpha = -1): 10
    uniform draws (the issue's control) and 10 layer-matched draws, per draw.
  * The causal per-head check from experiments/head_sensitivity.py (committed in docs/sensitivity/;
    its 19-minute scan is not re-run here) is included when present.
  * Toxicity (SmolLM2, offline fixture, profanity_check scorer): baseline vs edited vs random heads,
    toxicity and fluency (perplexity of the continuations under the unedited model).
No setting is dropped: every run of the sweeps is in the tables, including failures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headpursuit.app.aggregate import load_runs  # noqa: E402
from headpursuit.app.results import RESULTS_FILE, RunRecord  # noqa: E402

METHODS = ["concept_share", "concept_restricted", "logit_lens"]
ALPHAS = [-1, 0, 2]
FRACS = [0.01, 0.02, 0.04]
MODELS = {  # conf/model option -> total heads
    "smollm2": 270,
    "gemma3_270m": 72,
}
# Evaluation questions per group: 100, issue 21's minimum, at which one question is 1 point and a
# 95% interval spans about +-0.1 (at the 20 questions of the first page it spanned up to half the
# scale). A model's QA grid is 72 evaluations of 200 questions (3 methods x 3 k x 3 alpha edited;
# 3 k x 3 alpha x 5 seeds random), each about 1 min of 2 CPU cores at 64 prompts a batch.
N_EVAL = {"smollm2": 100, "gemma3_270m": 100}
# Prompts per generation batch (task.batch_size), as compare_protocols.py: on 2 loaded cores 64-row
# batches took a fraction of the time per question of the pipeline's 16 (2026-12-05, not a
# side-by-side benchmark: 16-row batches, 7 edits x 100 questions in 7 min; 64-row, 11 x 100 in 45 s).
BATCH_SIZE: int | None = 64
# A section another command writes (`<!-- NAME:start -->` ... `<!-- NAME:end -->`): kept by write_page.
OWNED_BLOCK = re.compile(r"<!-- (?P<name>[\w-]+):start -->.*?<!-- (?P=name):end -->", re.S)
LM_NAMES = {"smollm2": "smollm2", "gemma3_270m": "gemma3-270m"}  # option -> name in results.json


def ks_for(n_heads: int) -> list[int]:
    # Rounded up, so 2% of SmolLM2's 270 heads is 6 (5.4), the paper-style "about 1%" grid.
    return sorted({max(1, math.ceil(f * n_heads - 1e-9)) for f in FRACS})


def run_sweep(out: Path, overrides: list[str], log_path: Path, cache_dir: str | None = None) -> float:
    """One multirun of the pipeline into `out` (cache_dir: the pipeline's cache, None = its default)."""
    cache = [f"cache_dir={cache_dir}"] if cache_dir else []
    cmd = [
        sys.executable,
        "-m",
        "headpursuit",
        "-m",
        *overrides,
        "logger=none",
        f"hydra.sweep.dir={out}",
        "plots=true",
        *cache,
    ]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"  sweep exited {proc.returncode}; see {log_path} (failed runs stay in the tables)")
    print(f"  {secs / 60:.1f} min", flush=True)
    return secs


def pm(mean, std=None, digits=2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    s = f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {std:.{digits}f}"
    return s


def with_ci(r, group: str, metric: str, digits: int = 2) -> str:
    """The edited value with its 95% bootstrap interval (runs.csv `ci.edited.lo|hi.`) and the empirical
    p-value against the run's random sets (`p.`), where the run recorded them."""
    text = pm(r.get(f"edited.{group}.{metric}"), digits=digits)
    lo, hi = r.get(f"ci.edited.lo.{group}.{metric}"), r.get(f"ci.edited.hi.{group}.{metric}")
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    p = r.get(f"p.{group}.{metric}")
    if p is not None and not math.isnan(p):
        text += f" p={p:.2f}"
    return text


def qa_tables(df: pd.DataFrame, model: str) -> tuple[str, dict]:
    """Markdown: per alpha, rows = method / random, cols = k; cells concept acc / control acc."""
    d = df[(df.model == LM_NAMES[model]) & (df.task == "qa_countries")]
    if d.empty:
        return f"_no QA runs for {model}_\n", {}
    n_total = MODELS[model]
    ks = sorted(d.k.dropna().unique().astype(int))
    base = d.iloc[0]
    lines = [
        f"Unedited model: concept accuracy **{pm(base['baseline.concept.accuracy'])}**, control "
        f"accuracy **{pm(base['baseline.control.accuracy'])}** (eval questions per group: "
        f"{int(base.get('n_eval', 0) or 0) or 'see results.json'}).",
        "",
    ]
    headline = {}
    for alpha in ALPHAS:
        da = d[d.alpha == alpha]
        if da.empty:
            continue
        lines.append(
            f"**alpha = {alpha}** — cells: concept accuracy / control accuracy, each with its 95% bootstrap "
            "interval over the questions and its p-value against the run's random sets (random: mean ± std "
            "over seeds)\n"
        )
        header = "| heads | " + " | ".join(f"k={k} ({100 * k / n_total:.1f}%)" for k in ks) + " |"
        lines += [header, "|" + "---|" * (len(ks) + 1)]
        for method in METHODS:
            cells = []
            for k in ks:
                r = da[(da.ranking == method) & (da.k == k)]
                if r.empty:
                    cells.append("n/a")
                    continue
                r = r.iloc[0]
                if r.status != "complete":
                    cells.append(f"failed: {r.error}")
                    continue
                cells.append(f"{with_ci(r, 'concept', 'accuracy')} / {with_ci(r, 'control', 'accuracy')}")
                headline[(method, k, alpha)] = r
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        cells = []
        for k in ks:
            r = da[da.k == k]
            r = r[r["random.concept.accuracy"].notna()] if "random.concept.accuracy" in r else r.iloc[:0]
            if r.empty:
                cells.append("n/a")
                continue
            r = r.iloc[0]
            cells.append(
                f"{pm(r['random.concept.accuracy'], r.get('random.std.concept.accuracy'))} / "
                f"{pm(r['random.control.accuracy'], r.get('random.std.control.accuracy'))}"
            )
        lines.append("| random heads | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n", headline


def complete_qa(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """The complete QA-countries runs of `model` (an option of MODELS)."""
    return df[(df.model == LM_NAMES[model]) & (df.task == "qa_countries") & (df.status == "complete")]


def spec_interval(r, metric: str = "accuracy") -> str:
    """A run's specificity (control retained - concept retained) [its 95% interval]; **bold** where
    the interval excludes 0."""
    value = r.get(f"specificity.{metric}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.2f}"
    lo, hi = r.get(f"ci.specificity.lo.{metric}"), r.get(f"ci.specificity.hi.{metric}")
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.2f}, {hi:.2f}]"
        text = f"**{text}**" if lo > 0 or hi < 0 else text
    return text


def spec_cell(r, metric: str = "accuracy") -> str:
    """spec_interval, then the random sets' median specificity and the p-value against them."""
    text = spec_interval(r, metric)
    if text == "n/a":
        return text
    extra = []
    rm, p = r.get(f"specificity.random_median.{metric}"), r.get(f"specificity.p.{metric}")
    if rm is not None and not math.isnan(rm):
        extra.append(f"random {rm:.2f}")
    if p is not None and not math.isnan(p):
        extra.append(f"p={p:.2f}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def specificity_table(df: pd.DataFrame, model: str) -> str:
    """Per alpha < 1 (suppression), rows = method, cols = k: the specificity of accuracy with its
    interval, the random sets' median specificity and the p-value against them."""
    d = complete_qa(df, model)
    if d.empty or "specificity.accuracy" not in d:
        return ""
    n_total = MODELS[model]
    ks = sorted(d.k.dropna().unique().astype(int))
    lines = [
        "**Specificity** of accuracy (control retained - concept retained, retained = edited / unedited; "
        "higher = more concept-specific) [95% paired bootstrap interval; **bold**: excludes 0] (the random "
        "sets' median specificity; p against them):",
        "",
        "| alpha | heads | " + " | ".join(f"k={k} ({100 * k / n_total:.1f}%)" for k in ks) + " |",
        "|" + "---|" * (len(ks) + 2),
    ]
    for alpha in [a for a in ALPHAS if a < 1]:
        for method in METHODS:
            rows = [d[(d.alpha == alpha) & (d.ranking == method) & (d.k == k)] for k in ks]
            cells = [spec_cell(r.iloc[0]) if not r.empty else "n/a" for r in rows]
            lines.append(f"| {alpha:g} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def enhancement_table(df: pd.DataFrame, model: str) -> str:
    """alpha > 1 rows of every sweep of `model` (main grid: alpha = 2; enhancement sweep: 4, 8)."""
    d = complete_qa(df, model).query("alpha > 1")
    if d.empty or "edited.control.concept_rate" not in d:
        return "_no enhancement runs_\n"
    b = d.iloc[0]
    lines = [
        "Answers to **control** questions (which do not need a country): share that name a country, "
        "country names per answer, and accuracy. Unedited: "
        f"{pm(b['baseline.control.concept_rate'])} / {pm(b['baseline.control.concept_count'])} / "
        f"{pm(b['baseline.control.accuracy'])}. Random: mean ± std over seeds.",
        "",
        "| heads | k | alpha | control answers naming a country | country names per answer | control accuracy |",
        "|---|---|---|---|---|---|",
    ]
    seen = set()
    for method in METHODS + ["random"]:
        for _, r in d.sort_values(["alpha", "k"]).iterrows():
            if method != "random" and r.ranking != method:
                continue
            key = (method, r.k, r.alpha)
            if key in seen:
                continue
            seen.add(key)
            if method == "random":
                cells = [
                    pm(r.get("random.control.concept_rate"), r.get("random.std.control.concept_rate")),
                    pm(r.get("random.control.concept_count"), r.get("random.std.control.concept_count")),
                    pm(r.get("random.control.accuracy"), r.get("random.std.control.accuracy")),
                ]
            else:
                cells = [
                    pm(r["edited.control.concept_rate"]),
                    pm(r["edited.control.concept_count"]),
                    pm(r["edited.control.accuracy"]),
                ]
            lines.append(
                f"| {method if method != 'random' else 'random heads'} | {int(r.k)} | {r.alpha:g} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def toxicity_table(df: pd.DataFrame) -> str:
    d = df[df.task == "toxicity"]
    if d.empty:
        return "_no toxicity runs_\n"
    metrics = [c.split(".", 2)[2] for c in d.columns if c.startswith("edited.concept.")]
    want = [
        m
        for m in ("mean_toxicity", "toxic_fraction", "expected_max_toxicity", "toxicity_probability", "perplexity")
        if m in metrics
    ]
    lines = ["| setting | " + " | ".join(want) + " |", "|" + "---|" * (len(want) + 1)]
    r0 = d.iloc[0]
    lines.append("| unedited | " + " | ".join(pm(r0[f"baseline.concept.{m}"], digits=3) for m in want) + " |")
    for _, r in d.sort_values(["k", "alpha"]).iterrows():
        lines.append(
            f"| {r.ranking} top-{int(r.k)}, alpha={r.alpha:g} | "
            + " | ".join(with_ci(r, "concept", m, digits=3) for m in want)
            + " |"
        )
        lines.append(
            f"| random {int(r.k)} heads, alpha={r.alpha:g} | "
            + " | ".join(pm(r.get(f"random.concept.{m}"), r.get(f"random.std.concept.{m}"), 3) for m in want)
            + " |"
        )
    return "\n".join(lines) + "\n"


def where_heads(sweep: Path, df: pd.DataFrame, model: str, docs: Path) -> str:
    """Layer histogram of the top heads per method, and what the top heads write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = complete_qa(df, model)
    if d.empty:
        return ""
    kmax = int(d.k.max())
    fig, ax = plt.subplots(figsize=(7, 3))
    out_lines = []
    n_layers = None
    for method in METHODS:
        r = d[(d.ranking == method) & (d.k == kmax)]
        if r.empty:
            continue
        scores = pd.read_csv(ROOT / sweep / r.iloc[0].run / "head_scores.csv")
        n_layers = int(scores.layer.max()) + 1
        top = scores.sort_values("rank").head(kmax)
        ax.hist(top.layer, bins=range(n_layers + 1), alpha=0.5, label=method)
        if method == "concept_share":
            out_lines += [
                f"Top {min(kmax, len(top))} heads by `concept_share` on {model} and the "
                "first tokens full-vocabulary SOMP selects for each:\n",
                "| rank | layer.head | score | top tokens |",
                "|---|---|---|---|",
            ]
            for _, h in top.iterrows():
                toks = str(h.get("top_tokens", "")).replace("|", "\\|")
                out_lines.append(f"| {int(h['rank'])} | {int(h.layer)}.{int(h['head'])} | {h.score:.3f} | {toks} |")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"# of top-{kmax} heads")
    ax.set_title(f"{model}: where the top-{kmax} country heads sit")
    ax.legend(fontsize=7)
    fig.tight_layout()
    img = docs / "img" / f"layers_{model}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=110)
    plt.close(fig)
    return f"![layer histogram]({img.relative_to(docs)})\n\n" + "\n".join(out_lines) + "\n"


def copy_plots(sweep: Path, docs: Path, model: str) -> str:
    plots = sorted((ROOT / sweep / "aggregate" / "plots").glob("metric_vs_k__*accuracy*.png"))
    lines = []
    for p in plots[:6]:
        dst = docs / "img" / f"{model}__{p.name}"
        shutil.copyfile(p, dst)
        lines.append(f"![{p.stem}]({dst.relative_to(docs)})")
    heat = sorted((ROOT / sweep / "aggregate" / "plots").glob("heatmap__*concept_share*.png"))
    if heat:
        dst = docs / "img" / f"{model}__heatmap.png"
        shutil.copyfile(heat[0], dst)
        lines.append(f"![heat map]({dst.relative_to(docs)})")
    return "\n".join(lines) + "\n"


def random_controls(sweep: Path, df: pd.DataFrame) -> str:
    """Per-seed random-head controls at the headline setting: every head vs the edited heads' layers."""
    d = df[(df.sweep == sweep.name) & (df.status == "complete")]
    if d.empty:
        return "_no control runs_\n"
    r0 = d.iloc[0]
    lines = [
        f"SmolLM2, `concept_share` top {int(r0.k)} heads flipped (alpha = -1): concept "
        f"{r0['baseline.concept.accuracy']:.2f} -> {r0['edited.concept.accuracy']:.2f}, control "
        f"{r0['baseline.control.accuracy']:.2f} -> {r0['edited.control.accuracy']:.2f} "
        f"(heads {r0.heads}); specificity {spec_interval(r0)}. Random draws of the same number "
        "of heads, same alpha; p: the edited heads against each pool's draws (smallest 1 / (1 + draws)), "
        "for the concept's and the control's fall and for the specificity:",
        "",
        "| random pool | seeds | concept acc. mean ± std | median | min - max | control acc. mean ± std "
        "| median | draws that break every answer | p: concept / control / specificity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    per_seed_lines = []
    for _, r in d.sort_values("random_pool").iterrows():
        rec = RunRecord.read(ROOT / sweep / r.run / RESULTS_FILE)
        random = rec.outcome.random if rec is not None and rec.outcome is not None else None
        if random is None:
            continue
        ps = random.per_seed
        cacc = [p.result.metric("concept", "accuracy") for p in ps]
        broken = [
            p for p in ps if p.result.metric("concept", "accuracy") == 0 and p.result.metric("control", "accuracy") == 0
        ]
        med = random.stats.median
        lines.append(
            f"| {r.random_pool} | {len(ps)} | {pm(r['random.concept.accuracy'], r['random.std.concept.accuracy'])}"
            f" | {pm(med.get('concept', {}).get('accuracy'))} | {min(cacc):.2f} - {max(cacc):.2f} | "
            f"{pm(r['random.control.accuracy'], r['random.std.control.accuracy'])} | "
            f"{pm(med.get('control', {}).get('accuracy'))} | {len(broken)} of {len(ps)}"
            + (f" ({'; '.join(' '.join(f'{a}.{b}' for a, b in p.heads) for p in broken)})" if broken else "")
            + f" | {' / '.join(pm(r.get(c)) for c in ('p.concept.accuracy', 'p.control.accuracy', 'specificity.p.accuracy'))} |"
        )
        per_seed_lines.append(
            f"- `{r.random_pool}`: "
            + "; ".join(
                f"seed {p.seed} [{' '.join(f'{a}.{b}' for a, b in p.heads)}] "
                f"{p.result.metric('concept', 'accuracy'):.2f}/{p.result.metric('control', 'accuracy'):.2f}"
                for p in ps
            )
        )
    return "\n".join(lines + ["", "Per draw (heads, concept/control accuracy):", ""] + per_seed_lines) + "\n"


def sensitivity_section(docs: Path) -> list[str]:
    """The causal per-head check written by experiments/head_sensitivity.py (committed under docs/)."""
    import json

    base = docs / "sensitivity" / "smollm2"
    if not (base / "summary.json").exists():
        return []
    s = json.loads((base / "summary.json").read_text())
    t = pd.read_csv(base / "head_effects.csv")
    n = s["n_samples"]
    out = [
        "## Causal check: flipping one head at a time (SmolLM2)",
        "",
        f"From `python experiments/head_sensitivity.py {s.get('argv', '')}`".rstrip()
        + f" ({(s.get('scan_seconds') or 0) / 60:.0f} min for the scan; not part of this command's run, its outputs are committed in "
        f"`docs/sensitivity/smollm2/`). Each of {s['n_heads_scanned']} heads is flipped alone; the change in "
        f"the mean log-probability of the model's own correct answers (teacher-forced) is measured on "
        f"{n['concept']} country questions (the SOMP ranking split) and {n['control']} control questions "
        "(outside the evaluation split). Negative = the flip hurts those answers.",
        "",
        (
            f"**Across the {s['n_heads_scanned']} heads, the damage a flip does to country answers and to "
            f"control answers is correlated: Pearson r = {s['pearson_r']:.2f}** (driven by the few heads with "
            f"large effects; country damage ≈ {s['slope_through_origin']:.2f} x control damage), **Spearman "
            f"rank correlation {s.get('spearman_r', float('nan')):.2f}** over all heads. The heads whose flip "
            "hurts country answers most are load-bearing for every factual answer; the heads that hurt "
            "country answers with little control damage have small effects one at a time. Note also that "
            "the top `concept_share` heads (red) do little alone, except 23.4: their effect on generation "
            "comes from flipping them together."
            if s.get("pearson_r") is not None
            else ""
        ),
        "",
        "![per-head flip effect](sensitivity/smollm2/sensitivity.png)",
        "",
        "| heads | concept Δ log p | control Δ log p | concept_share rank |",
        "|---|---|---|---|",
    ]
    worst = t.sort_values("delta_concept").head(8)
    for _, r in worst.iterrows():
        out.append(
            f"| {int(r.layer)}.{int(r['head'])} | {r.delta_concept:+.2f} | {r.delta_control:+.2f} | "
            f"{int(r.concept_share_rank)} |"
        )
    out += ["", "(the 8 heads whose flip hurts country answers most)", ""]
    ev = s.get("evaluations") or {}
    if ev:
        out += [
            f"Top-k heads by *causal* specificity (concept damage minus {s.get('control_weight', 2):g} x control "
            "damage, on the samples above: a supervised choice SOMP cannot make, since it never looks at "
            "behaviour) "
            "vs top-k by `concept_share`, flipped, evaluated by generation on the evaluation split:",
            "",
            "| heads | concept acc. | control acc. |",
            "|---|---|---|",
        ]
        for name, e in ev.items():
            out.append(
                f"| {name} ({' '.join(e['heads']) or 'none'}) | {e['concept_accuracy']:.2f} | "
                f"{e['control_accuracy']:.2f} |"
            )
        out.append("")
    return out


def single_word_table(df_all: pd.DataFrame) -> str:
    """concept_share on SmolLM2 with the full countries concept vs single-word country names only."""
    sw = df_all[(df_all.sweep == "smollm2_single_word") & (df_all.status == "complete")]
    full = df_all[(df_all.sweep == "smollm2_qa") & (df_all.ranking == "concept_share") & (df_all.status == "complete")]
    if sw.empty:
        return "_no single-word runs_\n"
    lines = [
        "`concept_share` ranking computed with `task.concept=countries_single_word` (187 single-word names, "
        "no first tokens of multi-word names) vs the full `countries` concept; same ranking and "
        "evaluation questions (unedited: "
        f"{sw.iloc[0]['baseline.concept.accuracy']:.2f} / {sw.iloc[0]['baseline.control.accuracy']:.2f}). "
        "Cells: concept accuracy / control accuracy (top heads).",
        "",
        "| k | alpha | countries | countries_single_word |",
        "|---|---|---|---|",
    ]
    for _, r in sw.sort_values(["alpha", "k"]).iterrows():
        f = full[(full.k == r.k) & (full.alpha == r.alpha)]
        fc = (
            (
                f"{f.iloc[0]['edited.concept.accuracy']:.2f} / {f.iloc[0]['edited.control.accuracy']:.2f} "
                f"({f.iloc[0].heads})"
            )
            if not f.empty
            else "n/a"
        )
        lines.append(
            f"| {int(r.k)} | {r.alpha:g} | {fc} | {r['edited.concept.accuracy']:.2f} / "
            f"{r['edited.control.accuracy']:.2f} ({r.heads}) |"
        )
    return "\n".join(lines) + "\n"


def verdicts(df: pd.DataFrame) -> list[str]:
    """Issue 7's target on SmolLM2 at 2% of the heads, alpha=-1, for the best ranking method."""
    d = df[
        (df.model == "smollm2")
        & (df.task == "qa_countries")
        & (df.alpha == -1)
        & (df.k == ks_for(MODELS["smollm2"])[1])
        & (df.status == "complete")
    ]
    if d.empty:
        return ["_SmolLM2 QA runs missing: no verdict._"]
    d = d.assign(
        drop_c=d["baseline.concept.accuracy"] - d["edited.concept.accuracy"],
        drop_k=d["baseline.control.accuracy"] - d["edited.control.accuracy"],
        rand_move=(d["baseline.concept.accuracy"] - d["random.concept.accuracy"]).abs(),
    )
    best = d.assign(margin=d.drop_c - d.drop_k).sort_values("margin", ascending=False).iloc[0]
    rows = [
        ("concept accuracy falls by >= 70 points", best.drop_c >= 0.70, f"{100 * best.drop_c:.0f} points"),
        ("control accuracy falls by <= 10 points", best.drop_k <= 0.10, f"{100 * best.drop_k:.0f} points"),
        (
            "random heads move concept accuracy by <= 10 points",
            best.rand_move <= 0.10,
            f"{100 * best.rand_move:.0f} points ({int(best.k)} random heads, mean over seeds)",
        ),
    ]
    out = [
        f"SmolLM2, QA countries, top {int(best.k)} heads flipped, best method `{best.ranking}` "
        "(largest concept drop minus control drop):",
        "",
        "| criterion | measured | holds? |",
        "|---|---|---|",
    ]
    out += [f"| {c} | {m} | {'yes' if ok else '**no**'} |" for c, ok, m in rows]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sample sizes (smoke test)")
    ap.add_argument("--models", default="smollm2,gemma3_270m")
    ap.add_argument(
        "--n-eval", type=int, default=None, help=f"eval questions per group (default per model {N_EVAL}; --quick: 4)"
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help=f"task.batch_size (default {BATCH_SIZE}; 0: the pipeline's own)",
    )
    ap.add_argument("--n-rank", type=int, default=None, help="ranking questions (concept group)")
    ap.add_argument("--seeds", type=int, default=5, help="random-head seeds")
    ap.add_argument("--skip-toxicity", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--sweeps", default="outputs/reproduce", help="where the sweep dirs go")
    ap.add_argument("--aggregate-only", action="store_true", help="rebuild the page from existing sweeps")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated sweep names to (re)run; the others are read from disk (e.g. --only smollm2_single_word)",
    )
    ap.add_argument("--cache-dir", default=None, help="the pipeline's cache_dir (default: its own, outputs/cache)")
    ap.add_argument(
        "--print-plan",
        action="store_true",
        help="print the sweeps as JSON (name, Hydra overrides of its multirun, its dir under --sweeps, the flags "
        "that run it alone) and exit",
    )
    args = ap.parse_args()

    docs = Path(args.out).resolve().parent
    sweeps = Path(args.sweeps)
    seeds = "[" + ",".join(str(s) for s in range(args.seeds)) + "]"
    timings: dict[str, float] = {}
    plan = []
    batch = [f"task.batch_size={args.batch_size}"] if args.batch_size else []
    for model in args.models.split(","):
        n_heads = MODELS[model]
        n_eval = args.n_eval or (4 if args.quick else N_EVAL[model])
        n_rank = args.n_rank or (6 if args.quick else 40)
        extra: list[str] = []
        plan.append(
            (
                f"{model}_qa",
                extra
                + [
                    f"model={model}",
                    "task=qa_countries",
                    "ranking=" + ",".join(METHODS),
                    "intervention.k=" + ",".join(map(str, ks_for(n_heads))),
                    "intervention.alpha=" + ",".join(map(str, ALPHAS)),
                    f"intervention.random_seeds={seeds}",
                    f"task.n_eval={n_eval}",
                    f"task.n_rank={n_rank}",
                    *batch,
                ],
            )
        )
    if "smollm2" in args.models.split(","):
        # The headline setting again, with 10 random draws from every head (the control) and
        # 10 from the edited heads' own layers (a layer-matched control). Seeds 0-4 of the uniform
        # pool are the main sweep's, read from the cache.
        n_eval = args.n_eval or (4 if args.quick else N_EVAL["smollm2"])
        n_rank = args.n_rank or (6 if args.quick else 40)
        # The same ranking with a cleaner concept: single-word country names only (no ' United',
        # ' South', ...). Random heads do not depend on the concept: compare with the main grid's.
        plan.insert(
            1,
            (
                "smollm2_single_word",
                [
                    "model=smollm2",
                    "task=qa_countries",
                    "task.concept=countries_single_word",
                    "ranking=concept_share",
                    "intervention.k=" + ",".join(map(str, ks_for(MODELS["smollm2"]))),
                    "intervention.alpha=-1,0",
                    "intervention.random_controls=false",
                    f"task.n_eval={n_eval}",
                    f"task.n_rank={n_rank}",
                    *batch,
                ],
            ),
        )
        plan.insert(
            1,
            (
                "smollm2_enhance",
                [
                    "model=smollm2",
                    "task=qa_countries",
                    "ranking=concept_share,logit_lens",
                    "intervention.k=" + ",".join(map(str, ks_for(MODELS["smollm2"])[:2])),
                    "intervention.alpha=4,8",
                    "intervention.random_seeds=[0,1,2]",
                    f"task.n_eval={n_eval}",
                    f"task.n_rank={n_rank}",
                    *batch,
                ],
            ),
        )
        plan.insert(
            1,
            (
                "smollm2_controls",
                [
                    "model=smollm2",
                    "task=qa_countries",
                    "ranking=concept_share",
                    f"intervention.k={ks_for(MODELS['smollm2'])[1]}",
                    "intervention.alpha=-1",
                    "intervention.random_pool=all,same_layers",
                    "intervention.random_seeds=[" + ",".join(str(s) for s in range(2 * args.seeds)) + "]",
                    f"task.n_eval={n_eval}",
                    f"task.n_rank={n_rank}",
                    *batch,
                ],
            ),
        )
    if not args.skip_toxicity:
        plan.insert(
            1,
            (
                "smollm2_toxicity",
                [
                    "model=smollm2",
                    "task=toxicity",
                    "ranking=concept_share",
                    "intervention.k=6",
                    "intervention.alpha=-1,0",
                    f"intervention.random_seeds={seeds}",
                ]
                + (
                    [f"task.n_eval={args.n_eval or 4}", f"task.n_rank={args.n_rank or 6}"]
                    if args.quick
                    else ["task.n_eval=16", "task.n_continuations=2"]
                ),
            ),
        )

    if args.print_plan:
        plan_json = [{"name": name, "overrides": o, "dir": name, "select": ["--only", name]} for name, o in plan]
        print(json.dumps(plan_json, indent=1))
        return 0
    docs.mkdir(parents=True, exist_ok=True)
    (ROOT / sweeps).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for name, overrides in plan:
        sweep = sweeps / name
        if not args.aggregate_only and (not args.only or name in args.only.split(",")):
            timings[name] = run_sweep(ROOT / sweep, overrides, ROOT / sweeps / f"{name}.log", args.cache_dir)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "headpursuit.app.aggregate",
                str(ROOT / sweep),
                "--out",
                str(ROOT / sweep / "aggregate"),
            ],
            cwd=ROOT,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        # The page is rewritten after every sweep, so a cut-off run still publishes what it has.
        write_page(args, plan, sweeps, docs, timings, t_all)
    return 0


def cell(r, metric: str = "accuracy") -> str:
    """`concept x -> y, control x -> y` of one run."""
    return (
        f"country {r[f'baseline.concept.{metric}']:.2f} -> {r[f'edited.concept.{metric}']:.2f}, "
        f"control {r[f'baseline.control.{metric}']:.2f} -> {r[f'edited.control.{metric}']:.2f}"
    )


def specific_settings(df: pd.DataFrame, model: str) -> list[pd.Series]:
    """The suppression runs (alpha < 1) of `model`'s grid whose specificity interval excludes 0."""
    d = complete_qa(df, model).query("alpha < 1")
    if d.empty or "ci.specificity.lo.accuracy" not in d:
        return []
    hit = d[(d["ci.specificity.lo.accuracy"] > 0) | (d["ci.specificity.hi.accuracy"] < 0)]
    return [r for _, r in hit.sort_values(["alpha", "ranking", "k"]).iterrows()]


def observations(df: pd.DataFrame, df_all: pd.DataFrame, sweeps: Path, models: list[str]) -> list[str]:
    """The page's findings, each computed from the runs (nothing here is a number typed by hand)."""
    out = []
    for model in models:
        hits = specific_settings(df, model)
        listed = "; ".join(
            f"`{r.ranking}` k={int(r.k)} alpha={r.alpha:g}: {spec_interval(r)} ({cell(r)})" for r in hits
        )
        out.append(
            f"- **{model}: where the specificity interval excludes 0** (alpha -1 and 0, every method and k "
            f"of the grid): {listed or 'nowhere'}."
        )
    out.append(
        "- A specificity above 0 says the control group kept more of its accuracy than the country group, "
        "not that countries were removed: where control accuracy *rises* (alpha = 0 can help a model that "
        "restates the question) it is positive with the country answers intact. Read it with the two "
        "accuracies beside it."
    )
    suppress = [r for m in models for r in specific_settings(df, m) if r.alpha == -1 and r["specificity.accuracy"] > 0]
    if suppress:
        kept = max(r["edited.control.accuracy"] / r["baseline.control.accuracy"] for r in suppress)
        out.append(
            f"- **Specific is not clean.** The flips (alpha = -1) whose specificity interval lies above 0 keep "
            f"at most {kept:.2f} of control accuracy. The causal check shows why: the damage a single-head "
            "flip does to country answers and to other factual answers is correlated across heads, and even "
            "heads chosen *by their measured effect* (a supervised choice) break control answers along with "
            "country ones. SOMP's `concept_share` top heads write named entities in general (see their top "
            "tokens), which the control answers need too."
        )
    controls = df_all[(df_all.sweep == "smollm2_controls") & (df_all.status == "complete")]
    if not controls.empty:
        parts = []
        for _, r in controls.sort_values("random_pool").iterrows():
            rec = RunRecord.read(ROOT / sweeps / "smollm2_controls" / r.run / RESULTS_FILE)
            if rec is None or rec.outcome is None or rec.outcome.random is None:
                continue
            base = r["baseline.concept.accuracy"]
            drops = sorted(base - p.result.metric("concept", "accuracy") for p in rec.outcome.random.per_seed)
            pool = "every head" if r.random_pool == "all" else "the edited heads' layers"
            parts.append(
                f"drawn from {pool} they cost {100 * sum(drops) / len(drops):.0f} points of country accuracy on average (median "
                f"{100 * statistics.median(drops):.0f}; {100 * drops[0]:.0f} to {100 * drops[-1]:.0f} over "
                f"{len(drops)} draws)"
            )
        if parts:
            out.append(
                f"- **Random heads are not neutral on SmolLM2.** Flipping {int(controls.iloc[0].k)} random heads "
                f"of its 270: {'; '.join(parts)}. Draws with a layer-0/1 head can break every answer (the table "
                "above). The paper's 7B models have 1024 heads; each of a 135M model's heads carries more."
            )
    d = df[(df.model == "smollm2") & (df.task == "qa_countries") & (df.alpha == -1) & (df.status == "complete")]
    if not d.empty:
        ks = sorted(d.k.unique())
        restricted = d[d.ranking == "concept_restricted"].sort_values("k")
        if not restricted.empty:
            out.append(
                "- `concept_restricted` (SOMP over the concept tokens only) on SmolLM2 at alpha = -1, country / "
                "control accuracy: "
                + ", ".join(
                    f"k={int(r.k)} {r['edited.concept.accuracy']:.2f} / {r['edited.control.accuracy']:.2f}"
                    for _, r in restricted.iterrows()
                )
                + f" (unedited {restricted.iloc[0]['baseline.concept.accuracy']:.2f} / "
                f"{restricted.iloc[0]['baseline.control.accuracy']:.2f}); its top heads: {restricted.iloc[-1].heads}."
            )
        k2 = ks[len(ks) // 2]
        named = d[d.k == k2].sort_values("ranking")
        if "edited.concept.concept_rate" in named:
            out.append(
                f"- Wrong is not the same as country-free: at k={int(k2)}, alpha = -1 on SmolLM2 the share of "
                "country-question answers that still name a country (unedited "
                f"{named.iloc[0]['baseline.concept.concept_rate']:.2f}) and their accuracy: "
                + ", ".join(
                    f"`{r.ranking}` {r['edited.concept.concept_rate']:.2f} (accuracy {r['edited.concept.accuracy']:.2f})"
                    for _, r in named.iterrows()
                )
                + " (`edited.concept.concept_rate` in `docs/results_runs.csv`, every k)."
            )
    enh = df_all[(df_all.task == "qa_countries") & (df_all.alpha > 1) & (df_all.status == "complete")]
    if not enh.empty and "edited.control.concept_rate" in enh:
        base = enh.groupby("model")["baseline.control.concept_rate"].first()
        top = enh.loc[enh["edited.control.concept_rate"].idxmax()]
        most = enh.loc[enh["edited.control.concept_count"].idxmax()]
        out.append(
            "- Enhancement (alpha > 1): the share of control answers that name a country, unedited "
            + ", ".join(f"{m} {v:.2f}" for m, v in base.items())
            + f"; the highest any edit reached is {top['edited.control.concept_rate']:.2f} (`{top.ranking}` "
            f"k={int(top.k)} alpha={top.alpha:g} on {top.model}, control accuracy "
            f"{top['baseline.control.accuracy']:.2f} -> {top['edited.control.accuracy']:.2f}). The most country "
            f"names per control answer: {most['edited.control.concept_count']:.2f} (unedited "
            f"{most['baseline.control.concept_count']:.2f}; `{most.ranking}` k={int(most.k)} alpha={most.alpha:g} on "
            f"{most.model}), with control accuracy {most['baseline.control.accuracy']:.2f} -> "
            f"{most['edited.control.accuracy']:.2f}"
            + (
                ": more names where the answers fall apart."
                if most["edited.control.accuracy"] < 0.5 * most["baseline.control.accuracy"]
                else "."
            )
        )
    return out


def kept_blocks(page: str) -> list[str]:
    """The sections of `page` that other commands own (OWNED_BLOCK), markers included, in order."""
    return [m.group(0) for m in OWNED_BLOCK.finditer(page)]


def write_page(args, plan, sweeps: Path, docs: Path, timings: dict, t_all: float) -> None:
    frames = [load_runs(ROOT / sweeps / name) for name, _ in plan]
    frames = [f.assign(sweep=name) for f, (name, _) in zip(frames, plan) if not f.empty]
    if not frames:
        print("no results found", file=sys.stderr)
        return
    df_all = pd.concat(frames, ignore_index=True)
    df_all.to_csv(docs / "results_runs.csv", index=False)
    # The controls and enhancement sweeps add settings around the main grid; keep them out of the
    # grid tables (they have their own sections).
    df = df_all[~df_all.sweep.isin(["smollm2_controls", "smollm2_enhance", "smollm2_single_word"])]

    # ---- the page --------------------------------------------------------------------------
    import torch
    import transformers

    prov = "4-bit-quantised GGUF checkpoints (SmolLM2 Q4_1, Gemma-3 Q4_K_M) dequantised to float32"
    total = time.perf_counter() - t_all
    md = [
        "# Head Pursuit on the embedded models",
        "",
        (
            "Tables rebuilt (`--aggregate-only` / `--only`) from the sweeps run by `python experiments/reproduce_embedded.py`"
            if args.aggregate_only or args.only
            else f"Generated by `{' '.join(['python', 'experiments/reproduce_embedded.py'] + sys.argv[1:])}`"
        )
        + f" on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, transformers {transformers.__version__}); "
        + (
            f"sweeps took {sum(timings.values()) / 60:.1f} min in all. "
            if timings and not args.only
            # A sweep run in parts (--only, a resumed run) has no one wall-clock time: its jobs' own
            # timings are what it cost (an evaluation cached by an interrupted attempt counts ~0).
            else "job compute time per sweep (sum of the jobs' stage timings, from results.json): "
            + ", ".join(f"`{k}` {v / 60:.1f} min" for k, v in df_all.groupby("sweep")["seconds"].sum().items())
            + ". "
        )
        + f"Models: {prov}. **Quick mode: tiny samples, not a result.**" * bool(args.quick),
        "",
        f"Models are {prov}. Data: the hand-written fixtures shipped in `headpursuit/data/fixtures/` "
        "(ranking and evaluation questions disjoint, seeded split). Every run's full record "
        f"(config, heads, per-seed random controls, provenance) is in `{sweeps}/<sweep>/<job>/results.json`"
        " (not committed); the flat table of all runs is `docs/results_runs.csv`.",
        "",
    ]
    headline_txt = []
    for model in args.models.split(","):
        tables, head = qa_tables(df, model)
        k2 = ks_for(MODELS[model])[1]
        best = None
        for method in METHODS:
            r = head.get((method, k2, -1))
            if r is None:
                continue
            drop_c = r["baseline.concept.accuracy"] - r["edited.concept.accuracy"]
            drop_k = r["baseline.control.accuracy"] - r["edited.control.accuracy"]
            rnd = r["baseline.concept.accuracy"] - r.get("random.concept.accuracy", float("nan"))
            line = (
                f"- {model}, top {k2} heads ({100 * k2 / MODELS[model]:.1f}%) by `{method}`, alpha=-1: "
                f"concept accuracy {r['baseline.concept.accuracy']:.2f} -> {r['edited.concept.accuracy']:.2f} "
                f"({-100 * drop_c:+.0f} points), control {r['baseline.control.accuracy']:.2f} -> "
                f"{r['edited.control.accuracy']:.2f} ({-100 * drop_k:+.0f} points); random {k2} heads "
                f"move concept accuracy by {-100 * rnd:+.0f} points (mean over seeds); specificity "
                f"{spec_cell(r)}."
            )
            if best is None or drop_c - drop_k > best[0]:
                best = (drop_c - drop_k, line)
        if best:
            headline_txt.append(best[1])
        md += [
            f"## QA countries: {model}",
            "",
            tables,
            specificity_table(df, model),
            "### Enhancement (alpha > 1)",
            "",
            enhancement_table(df_all, model),
            "### Where the specialised heads sit, and what they write",
            "",
            where_heads(sweeps / f"{model}_qa", df, model, docs),
            "### Plots",
            "",
            copy_plots(sweeps / f"{model}_qa", docs, model),
        ]
    if not args.skip_toxicity:
        md += [
            "## Toxicity (SmolLM2, offline fixture, `profanity_check` scorer)",
            "",
            "Toxic-prompt group; perplexity is the fluency of the continuations under the unedited model.",
            "",
            toxicity_table(df),
        ]
    md[5:5] = ["", "## Headline (best ranking method per model, top 2% of heads flipped)", ""] + headline_txt + [""]
    if any(name == "smollm2_controls" for name, _ in plan):
        md += [
            "## Random-head controls at the headline setting (SmolLM2)",
            "",
            random_controls(sweeps / "smollm2_controls", df_all),
        ]
    if any(name == "smollm2_single_word" for name, _ in plan):
        md += ["## A cleaner concept: single-word country names (SmolLM2)", "", single_word_table(df_all)]
    md += ["## Targets (issue 7) and whether they hold", ""] + verdicts(df) + [""]
    md += sensitivity_section(docs)
    n_eval = args.n_eval or (4 if args.quick else min(N_EVAL[m] for m in args.models.split(",")))
    md += [
        "## Observations",
        "",
        "- Sample sizes: "
        + "; ".join(f"`{name}`: " + " ".join(o for o in ov if o.startswith("task.n_")) for name, ov in plan)
        + f". With {n_eval} questions a group one question moves an accuracy by {100 / n_eval:.0f} point{'s' * (n_eval < 100)}; "
        "the 95% intervals in the tables say which differences the questions can tell apart.",
        *observations(df, df_all, sweeps, args.models.split(",")),
        "- The countries concept includes first tokens of multi-word names (` United`, ` South`, "
        "` Saint`, ` Republic`, ...), which many heads write for other reasons. The single-word section "
        "above measures the ranking without them (`task.concept=countries_single_word`).",
        "- Gemma-3-270M is a base model without a chat template: it is prompted `Q: ... A:` and "
        "often restates the question, so its unedited control accuracy is low and its control column "
        "says little. Its 72 heads make 1% = 1 head.",
        "",
    ]
    # Blocks other commands own, kept as they are and in their order: every `<!-- NAME:start -->` ...
    # `<!-- NAME:end -->` of the old page (experiments/compare_protocols.py's `protocols`, the head
    # atlas, the recorded runs of later issues).
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    md += [line for block in kept_blocks(old) for line in ("", block, "")]
    Path(args.out).write_text("\n".join(md))
    print(f"wrote {args.out} ({total / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
