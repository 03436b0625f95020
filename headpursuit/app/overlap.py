"""The paper's head-overlap analysis (Head Pursuit, Figure 4) from a sweep's runs.

    python -m headpursuit.app.overlap outputs/multiruns/<date_time> [--k 32] [--metric exact_match]
    headpursuit-overlap outputs/multiruns/<date_time>

Reads every complete run under DIR (results.json + head_scores.csv, as `app.aggregate` finds them):
a run's *target* is the dataset it was evaluated on (results ``dataset``, else the task name) and its
*source* the dataset its heads were ranked on (``transfer.source`` of a run with ``rank_task``, else
the target). Writes into DIR (or --out):

* ``jaccard.csv`` / ``jaccard.png``: the Jaccard similarity |A & B| / |A | B| of the top-k head sets
  of every two source datasets, each from that dataset's own ranking (head_scores.csv, by rank);
* ``transfer.csv`` / ``transfer.png``: the metric on the target dataset (rows) with the top-k heads of
  the source dataset (columns) edited, normalised to the unedited model (edited / unedited; empty
  where the unedited value is 0 or there is no run; the mean where several runs share a cell).

k is --k, else the runs' k (one value; with several, --k picks one). The transfer matrix uses the
runs with that k. Runs of several (model, ranking method, alpha) settings get one set of files each,
named ``jaccard__<model>__<ranking>__alpha<alpha>.csv`` and so on. The heat maps need matplotlib
(the ``pipeline`` extra); without it the CSV files are written and a message says the plots were
skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from headpursuit.app.aggregate import find_results
from headpursuit.app.files import write_csv_atomic
from headpursuit.app.results import HEAD_SCORES_FILE, Evaluation, ResultsError, RunRecord
from headpursuit.intervention import Head

__all__ = [
    "DATASET_ORDER",
    "OverlapRun",
    "load_overlap_runs",
    "top_k_heads",
    "jaccard",
    "jaccard_matrix",
    "transfer_matrix",
    "normalized_value",
    "overlap",
    "main",
]

#: the paper's six classification datasets, in the order the matrices list them (others follow, sorted)
DATASET_ORDER = ("mnist", "svhn", "gtsrb", "eurosat", "resisc45", "dtd")


@dataclass
class OverlapRun:
    """What the overlap analysis reads from one complete run."""

    path: Path  # its run directory
    model: str
    ranking: str
    alpha: float
    k: int
    source: str  # the dataset the heads were ranked on
    target: str  # the dataset the run was evaluated on
    heads: list[Head]  # the edited heads (the run's top-k)
    baseline: Evaluation = field(default_factory=Evaluation)
    edited: Evaluation = field(default_factory=Evaluation)

    @property
    def setting(self) -> tuple[str, str, float]:
        return (self.model, self.ranking, self.alpha)


def _dataset_of(rec: RunRecord, task_key: str) -> str | None:
    """The dataset of the run's `task` or `rank_task` config (its `dataset`, else its `name`)."""
    return rec.config_at(task_key, "dataset") or rec.config_at(task_key, "name")


def load_overlap_runs(root: str | os.PathLike) -> list[OverlapRun]:
    """Every complete run under `root` with edited heads (sorted by run path); a results.json this
    version cannot read (a newer schema) is left out, with a message."""
    runs = []
    for p in find_results(root):
        try:
            rec = RunRecord.read(p)
        except ResultsError as exc:
            print(f"overlap: left out: {exc}", file=sys.stderr)
            continue
        if rec is None or rec.status != "complete" or rec.outcome is None or not rec.outcome.edit.heads:
            continue
        out = rec.outcome
        target = rec.config_at("task", "dataset") or out.dataset or rec.config_at("task", "name") or str(out.task)
        transfer = out.transfer
        ranked_elsewhere = _dataset_of(rec, "rank_task") if rec.config_at("rank_task") else None
        source = (transfer.source if transfer is not None else None) or ranked_elsewhere or target
        runs.append(
            OverlapRun(
                path=p.parent,
                model=str(out.model),
                ranking=str(out.ranking),
                alpha=float("nan") if out.edit.alpha is None else out.edit.alpha,
                k=int(out.edit.k if out.edit.k is not None else len(out.edit.heads)),
                source=str(source),
                target=str((transfer.target if transfer is not None else None) or target),
                heads=out.edit.pairs,
                baseline=out.baseline,
                edited=out.edited,
            )
        )
    return runs


def ordered(datasets: Iterable[str]) -> list[str]:
    """The paper's datasets in `DATASET_ORDER`, then any others sorted."""
    names = set(datasets)
    return [d for d in DATASET_ORDER if d in names] + sorted(names - set(DATASET_ORDER))


def top_k_heads(run: OverlapRun, k: int) -> set[Head]:
    """The `k` best heads of the run's ranking (its head_scores.csv, by rank); the run's edited
    heads when k is theirs and the file is missing."""
    csv = run.path / HEAD_SCORES_FILE
    if csv.is_file():
        table = pd.read_csv(csv)
        order = "rank" if "rank" in table else "score"
        table = table.sort_values(order, ascending=order == "rank", kind="stable").head(int(k))
        return {(int(a), int(b)) for a, b in zip(table["layer"], table["head"])}
    if k == len(run.heads):
        return set(run.heads)
    raise FileNotFoundError(f"{csv}: no head scores, and the run edited {len(run.heads)} heads, not k={k}")


def jaccard(a: set[Head], b: set[Head]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def jaccard_matrix(runs: Sequence[OverlapRun], k: int) -> pd.DataFrame:
    """Datasets x datasets Jaccard similarity of each source dataset's top-k heads (from the first
    run, by path, ranked on it: every run ranked on a dataset with one setting has the same scores)."""
    first: dict[str, OverlapRun] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        first.setdefault(r.source, r)
    names = ordered(first)
    sets = {d: top_k_heads(first[d], k) for d in names}
    m = pd.DataFrame([[jaccard(sets[a], sets[b]) for b in names] for a in names], index=names, columns=names)
    m.index.name = "dataset"
    m.columns.name = "dataset"
    return m


def normalized_value(result: Evaluation, baseline: Evaluation, group: str, metric: str) -> float:
    """edited / unedited for one metric (NaN where either is missing or not finite, or unedited is 0),
    as results.json `normalized` has it."""
    x, b = result.metric(group, metric), baseline.metric(group, metric)
    return x / b if math.isfinite(b) and b != 0.0 and math.isfinite(x) else float("nan")


def transfer_matrix(
    runs: Sequence[OverlapRun], k: int, metric: str = "exact_match", group: str = "concept"
) -> pd.DataFrame:
    """Targets (rows) x sources (columns): the normalised `group` `metric` of the runs with `k` heads
    (the mean over runs sharing a cell, NaN where none)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        if r.k == k:
            cells.setdefault((r.target, r.source), []).append(normalized_value(r.edited, r.baseline, group, metric))
    targets = ordered(t for t, _ in cells)
    sources = ordered(s for _, s in cells)

    def cell(t: str, s: str) -> float:
        vals = [v for v in cells.get((t, s), []) if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else float("nan")

    m = pd.DataFrame([[cell(t, s) for s in sources] for t in targets], index=targets, columns=sources)
    m.index.name = "target"
    m.columns.name = "source"
    return m


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "__".join(str(p) for p in parts)).strip("-")


def _choose_k(runs: Sequence[OverlapRun], k: int | None) -> int:
    if k is not None:
        if not any(r.k == k for r in runs):
            raise ValueError(f"no run edited k={k} heads (runs: k in {sorted({r.k for r in runs})}); pass one of those")
        return int(k)
    ks = sorted({r.k for r in runs})
    if len(ks) > 1:
        raise ValueError(f"the runs edit k in {ks} heads: pick one with --k (e.g. --k {ks[-1]})")
    return ks[0]


def _heatmaps(
    jac: pd.DataFrame, tr: pd.DataFrame, out: Path, suffix: str, title: str, k: int, metric: str
) -> list[Path]:
    try:
        from headpursuit.app import plots
    except ImportError as exc:  # matplotlib is the pipeline extra's
        print(f"overlap: heat maps skipped ({exc}); pip install 'headpursuit[pipeline]' for them", file=sys.stderr)
        return []
    return [
        plots.matrix_heatmap(
            jac, out / f"jaccard{suffix}.png", title=f"{title}: Jaccard of top-{k} heads", label="Jaccard", vmax=1.0
        ),
        plots.matrix_heatmap(
            tr,
            out / f"transfer{suffix}.png",
            title=f"{title}: {metric}, heads from source (k={k}), edited / unedited",
            label=f"normalised {metric}",
        ),
    ]


def overlap(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    k: int | None = None,
    metric: str = "exact_match",
    group: str = "concept",
    plots: bool = True,
) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Jaccard and transfer matrices per (model, ranking, alpha) setting of the runs under `root`,
    written into `out` (default `root`). Returns {setting: {"k", "jaccard", "transfer", "files"}}."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    runs = load_overlap_runs(root)
    if not runs:
        raise FileNotFoundError(f"no complete run (results.json with status complete) under {root}")
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    settings = sorted({r.setting for r in runs})
    done: dict[tuple[str, str, float], dict[str, Any]] = {}
    for setting in settings:
        group_runs = [r for r in runs if r.setting == setting]
        kk = _choose_k(group_runs, k)
        suffix = "" if len(settings) == 1 else "__" + _slug(setting[0], setting[1], f"alpha{setting[2]:g}")
        jac = jaccard_matrix(group_runs, kk)
        tr = transfer_matrix(group_runs, kk, metric, group)
        files = [write_csv_atomic(jac.reset_index(), out / f"jaccard{suffix}.csv")]
        files.append(write_csv_atomic(tr.reset_index(), out / f"transfer{suffix}.csv"))
        if plots:
            title = f"{setting[0]} | {setting[1]} | alpha={setting[2]:g}"
            files += _heatmaps(jac, tr, out, suffix, title, kk, metric)
        done[setting] = {"k": kk, "jaccard": jac, "transfer": tr, "files": files}
    return done


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headpursuit.app.overlap", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a multirun directory (or any directory holding results.json files)")
    ap.add_argument("--k", type=int, default=None, help="top-k heads (default: the runs' k, when they share one)")
    ap.add_argument("--metric", default="exact_match", help="the transfer matrix's metric (default: exact_match)")
    ap.add_argument("--group", default="concept", help="the metric's group (default: concept)")
    ap.add_argument("--out", default=None, help="where to write the files (default: DIR)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        done = overlap(args.dir, args.out, k=args.k, metric=args.metric, group=args.group, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for (model, ranking, alpha), d in done.items():
        print(f"## {model} | {ranking} | alpha={alpha:g} | k={d['k']}")
        print("Jaccard of top-k heads:\n" + d["jaccard"].round(3).to_string())
        print(f"transfer ({args.group} {args.metric}, edited / unedited; rows: target, columns: source):")
        print(d["transfer"].round(3).to_string())
        print("wrote " + ", ".join(str(p) for p in d["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
