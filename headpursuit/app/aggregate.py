"""Collect the results.json files of a sweep (or any directory) into tables and plots.

    python -m headpursuit.app.aggregate outputs/multiruns/2025-01-01_12-00-00 [--out DIR] [--no-plots]

Writes into DIR (or --out):

* `runs.csv` -- one row per run: model, task, ranking, k, alpha, heads mode, status, the edited
  heads, and every metric as `baseline.<group>.<metric>`, `edited.<group>.<metric>`,
  `random.<group>.<metric>` (mean over seeds) and `random.std.<group>.<metric>`;
* `k_alpha.csv` / `k_alpha.md` -- paper-style tables: each edited metric by k (rows) and alpha
  (columns), per model / task / ranking method / heads mode, with the unedited value alongside;
* `vs_random.csv` / `vs_random.md` -- the ranking method against random heads at the same k and
  alpha: baseline, edited, random mean +- std, per group and metric;
* `methods.csv` / `methods.md` -- when the runs hold several ranking methods: each method's edited
  value side by side with random heads and the unedited model;
* `plots/heatmap__*.png` (layers x heads scores, from each setting's head_scores.csv) and
  `plots/metric_vs_k__*.png` (edited metric vs k per alpha, random-head bands).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from headpursuit.app.tracking import HEAD_SCORES_FILE, RESULTS_FILE, read_json, write_text_atomic

SETTING = ["model", "task", "ranking", "heads_mode"]
SECTIONS = ("baseline", "edited", "random")
# Keys of a results section that hold no per-group metrics.
NOT_METRIC_GROUPS = ("n", "examples", "per_seed", "seeds", "n_seeds", "heads")


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every results.json under `root` (temp files `.results.json.tmpPID` are not matched)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(RESULTS_FILE) if ".submitit" not in p.parts)


def _metrics(prefix: str, node: Any, out: dict) -> None:
    if not isinstance(node, Mapping):
        return
    for g, metrics in node.items():
        if g in ("std", "median"):
            _metrics(f"{prefix}.{g}", metrics, out)
            continue
        if g in NOT_METRIC_GROUPS or not isinstance(metrics, Mapping):
            continue
        for name, v in metrics.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) or v is None:
                out[f"{prefix}.{g}.{name}"] = float("nan") if v is None else float(v)


def result_row(res: Mapping[str, Any], path: Path | None = None, root: Path | None = None) -> dict:
    """One flat row from a results.json dict."""
    cfg = res.get("config") or {}
    iv = cfg.get("intervention") or {}
    choices = (res.get("run") or {}).get("choices") or {}
    prov = res.get("provenance") or {}
    row: dict[str, Any] = {
        "run": str(path.parent.relative_to(root))
        if path is not None and root is not None
        else (str(path.parent) if path is not None else None),
        "status": res.get("status"),
        "model": res.get("model") or (cfg.get("model") or {}).get("name_or_path"),
        "task": res.get("task") or (cfg.get("task") or {}).get("name"),
        "ranking": res.get("ranking") or (cfg.get("ranking") or {}).get("method"),
        "heads_mode": res.get("heads_mode") or iv.get("heads", "ranked"),
        "k": res.get("k", iv.get("k")),
        "k_frac": res.get("k_frac", iv.get("k_frac")),
        "alpha": res.get("alpha", iv.get("alpha")),
        "seed": cfg.get("seed"),
        "random_pool": (res.get("random") or {}).get("pool", iv.get("random_pool", "all")),
        "experiment": choices.get("experiment"),
        "n_heads_total": res.get("n_heads_total"),
        "heads": " ".join(f"{h['layer']}.{h['head']}" for h in res.get("heads") or []),
        "error": (res.get("error") or {}).get("message"),
        "activations_from_cache": (prov.get("cache") or {}).get("activations_from_cache"),
        "seconds": sum((prov.get("timings") or {}).values()) or None,
    }
    for s in SECTIONS:
        _metrics(s, res.get(s), row)
    return row


def load_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per results.json under `root` (sorted by setting, k, alpha)."""
    root = Path(root)
    rows = []
    for p in find_results(root):
        res = read_json(p)
        if res is None:
            continue
        rows.append(result_row(res, p, root if root.is_dir() else p.parent.parent))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in ("k", "alpha", "k_frac", "n_heads_total"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values([c for c in SETTING + ["k", "alpha", "run"] if c in df]).reset_index(drop=True)


def metric_names(df: pd.DataFrame, section: str = "edited") -> list[tuple[str, str]]:
    """[(group, metric)] present for a section, e.g. [("concept", "accuracy"), ...]."""
    out = []
    for c in df.columns:
        m = re.fullmatch(rf"{section}\.(?!std\.|median\.)([^.]+)\.(.+)", c)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 3, integral: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:g}" if integral else f"{v:.{digits}f}"
    return str(v)


_INTEGRAL_COLS = {"k", "alpha", "seed", "n_heads_total", "k_frac"}


def _integral(s: pd.Series) -> bool:
    """A numeric column whose values are all whole numbers (k, alpha=-1, counts)."""
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return False
    v = s.dropna()
    return bool(len(v)) and bool(((v - v.round()).abs() < 1e-12).all())


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` dependency)."""
    if df.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in df.columns]
    integral = [str(c) in _INTEGRAL_COLS and _integral(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in df.itertuples(index=False):
        cells = [_fmt(v, digits, i).replace("|", "\\|") for v, i in zip(r, integral)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def k_alpha_tables(df: pd.DataFrame) -> list[tuple[dict, str, str, pd.DataFrame]]:
    """[(setting, group, metric, table)]: edited metric with k as rows and alpha as columns."""
    out: list[tuple[dict, str, str, pd.DataFrame]] = []
    done = df[df["status"] == "complete"] if "status" in df else df
    if done.empty:
        return out
    for group, metric in metric_names(done):
        col, bcol = f"edited.{group}.{metric}", f"baseline.{group}.{metric}"
        for key, g in done.groupby(SETTING, dropna=False, sort=True):
            if g[col].isna().all():
                continue
            t = g.pivot_table(index="k", columns="alpha", values=col, aggfunc="mean")
            t.columns = [f"alpha={a:g}" for a in t.columns]
            if bcol in g:
                t.insert(0, "unedited", g.groupby("k")[bcol].mean())
            t = t.reset_index()
            out.append((dict(zip(SETTING, key)), group, metric, t))
    return out


def vs_random_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: setting, k, alpha, group, metric, baseline, edited, random mean/std, deltas."""
    rows = []
    done = df[df["status"] == "complete"] if "status" in df else df
    for _, r in done.iterrows():
        for group, metric in metric_names(done):
            e = r.get(f"edited.{group}.{metric}")
            if e is None or (isinstance(e, float) and math.isnan(e)):
                continue
            b = r.get(f"baseline.{group}.{metric}", float("nan"))
            rm = r.get(f"random.{group}.{metric}", float("nan"))
            rs = r.get(f"random.std.{group}.{metric}", float("nan"))
            rows.append(
                {
                    **{c: r[c] for c in SETTING},
                    "k": r["k"],
                    "alpha": r["alpha"],
                    "group": group,
                    "metric": metric,
                    "baseline": b,
                    "edited": e,
                    "random_mean": rm,
                    "random_std": rs,
                    "edited_minus_baseline": e - b,
                    "random_minus_baseline": rm - b,
                }
            )
    return pd.DataFrame(rows)


def methods_table(vr: pd.DataFrame) -> pd.DataFrame:
    """Ranking methods side by side: edited value per method, plus random heads and unedited."""
    if vr.empty or vr["ranking"].nunique() < 2:
        return pd.DataFrame()
    keys = ["model", "task", "heads_mode", "k", "alpha", "group", "metric"]
    wide = vr.pivot_table(index=keys, columns="ranking", values="edited", aggfunc="mean")
    extra = vr.groupby(keys).agg(unedited=("baseline", "mean"), random_heads=("random_mean", "mean"))
    return extra.join(wide).reset_index()


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", "__".join(str(p) for p in parts)).strip("-")


def make_plots(df: pd.DataFrame, root: Path, out: Path) -> list[Path]:
    from headpursuit.app import plots  # matplotlib only when plots are made

    made: list[Path] = []
    pdir = out / "plots"
    done = df[df["status"] == "complete"] if "status" in df else df
    if done.empty:
        return made
    # One heat map per (model, task, ranking): the scores do not depend on k or alpha.
    for key, g in done.groupby(["model", "task", "ranking"], dropna=False, sort=True):
        for run in g["run"]:
            csv = root / run / HEAD_SCORES_FILE
            if not csv.exists():
                continue
            table = pd.read_csv(csv)
            res = read_json(root / run / RESULTS_FILE) or {}
            layout = ((res.get("provenance") or {}).get("model") or {}).get("layout") or {}
            made.append(
                plots.score_heatmap(
                    table,
                    layout.get("n_layers"),
                    layout.get("n_heads"),
                    pdir / f"heatmap__{_slug(*key)}.png",
                    title=" | ".join(map(str, key)),
                )
            )
            break
    for key, g in done.groupby(SETTING, dropna=False, sort=True):
        if g["k"].nunique() < 2:
            continue
        for group, metric in metric_names(g):
            if g[f"edited.{group}.{metric}"].isna().all():
                continue
            path = pdir / f"metric_vs_k__{_slug(*key)}__{group}.{metric}.png"
            made.append(plots.metric_vs_k(g, metric, path, group=group, title=" | ".join(map(str, key))))
    return made


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------


def aggregate(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True) -> pd.DataFrame:
    """Read every results.json under `root`; write runs.csv, k_alpha.*, vs_random.*, plots/."""
    root = Path(root)
    out = Path(out) if out else (root if root.is_dir() else root.parent)
    df = load_runs(root)
    if df.empty:
        raise FileNotFoundError(f"no readable {RESULTS_FILE} under {root}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "runs.csv", df.to_csv(index=False))

    tables = k_alpha_tables(df)
    md = [
        f"# Head Pursuit results: {root}\n",
        f"{len(df)} runs, "
        f"{int((df['status'] == 'complete').sum())} complete, "
        f"{int((df['status'] == 'failed').sum())} failed.\n",
    ]
    long = []
    for setting, group, metric, t in tables:
        head = ", ".join(f"{k}={v}" for k, v in setting.items())
        md.append(
            f"\n## {group} {metric} ({head})\n\nedited {group} {metric} by k (rows) and alpha "
            "(columns); `unedited` is the model without edits.\n\n" + to_markdown(t)
        )
        long.append(t.assign(**setting, group=group, metric=metric))
    write_text_atomic(out / "k_alpha.md", "".join(md))
    if long:
        write_text_atomic(out / "k_alpha.csv", pd.concat(long, ignore_index=True).to_csv(index=False))

    vr = vs_random_table(df)
    write_text_atomic(out / "vs_random.csv", vr.to_csv(index=False))
    write_text_atomic(
        out / "vs_random.md",
        "# Ranked heads vs random heads (same k, alpha)\n\n"
        "random_mean / random_std: mean and sample std over the random-head seeds "
        "(same k and alpha).\n\n" + to_markdown(vr),
    )
    mt = methods_table(vr)
    if not mt.empty:
        write_text_atomic(out / "methods.csv", mt.to_csv(index=False))
        write_text_atomic(out / "methods.md", "# Ranking methods vs random heads (edited value)\n\n" + to_markdown(mt))
    failed = df[df["status"] != "complete"]
    if not failed.empty:
        write_text_atomic(
            out / "failed.md", "# Runs not complete\n\n" + to_markdown(failed[["run", "status", "error"]])
        )
    if plots:
        make_plots(df, root if root.is_dir() else root.parent, out)
    return df


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headpursuit.app.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a multirun directory (or any directory holding results.json files)")
    ap.add_argument("--out", default=None, help="where to write tables and plots (default: DIR)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        df = aggregate(args.dir, args.out, plots=not args.no_plots)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    cols = [c for c in ["run", "status", "model", "task", "ranking", "heads_mode", "k", "alpha"] if c in df]
    headline = r"(baseline|edited|random)\.(concept|control)\.(accuracy|mean_toxicity|concept_rate)"
    cols += [c for c in df.columns if re.fullmatch(headline, c)]
    print(to_markdown(df[cols]))
    print(f"wrote {out}/runs.csv, k_alpha.md/.csv, vs_random.md/.csv" + ("" if args.no_plots else ", plots/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
