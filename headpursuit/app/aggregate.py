"""Collect the results.json files of a sweep (or any directory) into tables and plots.

    python -m headpursuit.app.aggregate outputs/multiruns/2025-01-01_12-00-00 [--out DIR] [--no-plots]

Writes into DIR (or --out):

* `runs.csv` -- one row per run: model, task, ranking (its label: the method, or for a ranking
  config file not named after its method the file too, `paper's scoring: concept_restricted`;
  `ranking_method` the method alone), k, alpha, heads mode, status, the edited
  heads, and every metric as `baseline.<group>.<metric>`, `edited.<group>.<metric>`,
  `random.<group>.<metric>` (mean over seeds), `random.<stat>.<group>.<metric>` (stat = std,
  median, q25, q75), and normalised to the unedited model as `normalized.edited.<group>.<metric>`
  and `normalized.random.<stat>.<group>.<metric>` (stat = mean, std, median, q25, q75);
* `k_alpha.csv` / `k_alpha.md` -- paper-style tables: each edited metric by k (rows) and alpha
  (columns), per model / task / ranking method / heads mode, with the unedited value alongside;
  `k_alpha_normalized.csv` / `.md` the same for the normalised metrics (edited / unedited); the
  Markdown cells read `value [lo, hi]` (the run's bootstrap interval; `°`: the change's interval
  includes 0), the CSVs hold the values (runs.csv: every bound, `ci.<part>.lo|hi.<group>.<metric>`);
* `vs_random.csv` / `vs_random.md` -- the ranking method against random heads at the same k and
  alpha: baseline, edited, random mean +- std, median and quartiles, raw and normalised, per group
  and metric, and `random_relaxed` (see below);
* `methods.csv` / `methods.md` -- when the runs hold several ranking methods: each method's edited
  value (raw and normalised) side by side with random heads and the unedited model;
* `effects.csv` / `effects.md` -- one row per run, its headline metric: the change per group with
  its bootstrap interval and p-value against the random sets, the specificity with its interval,
  the random sets' specificity median [q25, q75] and its p-value (the console prints it too);
* `paper_table.csv` / `paper_table.md` -- the paper's table shape, normalised to the unedited
  model: rows SOMP (per ranking method) / LL / "Rand. median [q25, q75]" (the random controls of
  the SOMP runs), columns k; one table per model / task / alpha / group / metric; a `*` after a
  random cell (column `relaxed` in the CSV) marks random sets that borrowed heads from neighbouring
  layers (`random_relaxed`);
* `plots/heatmap__*.png` (layers x heads scores, from each setting's head_scores.csv) and
  `plots/metric_vs_k__*.png` (edited metric vs k per alpha, random-head bands).

Titles and file names name only the settings that have a value (a QA run has no dataset).

`random_relaxed` (runs.csv, vs_random, methods): the layers for which a run's `layer_counts` random
sets borrowed heads from the nearest layers (results.json `random.relaxed_layers`), as
`layer:heads short` pairs, e.g. "0:1"; empty when none did (or the results predate the record).
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

from headpursuit.app.files import write_text_atomic
from headpursuit.app.liveness import running_state
from headpursuit.app.results import (
    HEAD_SCORES_FILE,
    RESULTS_FILE,
    Edit,
    Groups,
    Outcome,
    RandomControls,
    ResultsError,
    RunRecord,
    SeedStats,
)
from headpursuit.stats import GroupIntervals

# dataset: the classification dataset (task.dataset); rank_dataset: where a transfer run's heads
# were ranked (rank_task). Both empty for the other tasks, so their tables are unchanged.
SETTING = ["model", "task", "dataset", "rank_dataset", "ranking", "heads_mode", "where"]
# The statistics over the random seeds, as column prefixes: random.<stat>.<group>.<metric> (the
# mean is random.<group>.<metric>) and normalized.random.<stat>.<group>.<metric>.
STAT_KEYS = SeedStats.STATS
# Ranking methods by the paper's row names: SOMP scores, the logit-lens (LL) baseline.
SOMP_METHODS = ("concept_restricted", "concept_share")
LL_METHODS = ("logit_lens_mean", "logit_lens")
# Run settings a paper-table row is labelled with when they differ between runs of one table.
VARIANT_COLS = ["positions", "rank_groups", "where"]
# What a ranking config file (the Hydra choice `ranking=...`) that is not named after its method
# stands for in labels; another such file is labelled `ranking=<file>`.
PRESET_LABELS = {"paper": "paper's scoring"}


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every results.json under `root` (temp files `.results.json.tmpPID` are not matched)."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(RESULTS_FILE) if ".submitit" not in p.parts)


def _metric_columns(prefix: str, groups: Groups, out: dict) -> None:
    """`<prefix>.<group>.<metric>` columns of `out` from {group: {metric: value}} (NaN: undefined)."""
    for group, metrics in groups.items():
        for name, value in metrics.items():
            out[f"{prefix}.{group}.{name}"] = value


def _stat_columns(prefix: str, stats: SeedStats, out: dict, *, mean: str) -> None:
    """Each statistic over the random seeds as `<prefix>.<stat>.<group>.<metric>` columns, the mean
    as `<prefix>.<mean>...` (`random.<group>.<metric>`: mean="")."""
    for stat in STAT_KEYS:
        name = mean if stat == "mean" else stat
        _metric_columns(f"{prefix}.{name}" if name else prefix, stats.stat(stat), out)


def _interval_columns(prefix: str, groups: GroupIntervals, out: dict) -> None:
    """`ci.<prefix>.lo.<group>.<metric>` and `.hi.` columns of `out`."""
    for group, metrics in groups.items():
        for name, iv in metrics.items():
            out[f"ci.{prefix}.lo.{group}.{name}"] = iv.lo
            out[f"ci.{prefix}.hi.{group}.{name}"] = iv.hi


def effect_columns(outcome: Outcome) -> dict[str, Any]:
    """The uncertainty of a run's effect as runs.csv columns: `ci.<part>.lo|hi.<group>.<metric>`
    (part: baseline, edited, delta = edited - unedited, ratio = edited / unedited), the edited set's
    `p.<group>.<metric>` and `rank.<group>.<metric>` among the `n_random_sets`,
    `specificity.<metric>` with `ci.specificity.lo|hi.<metric>`, the random sets'
    `specificity.random_median|random_q25|random_q75.<metric>` and `specificity.p.<metric>`;
    `specificity_metric` (the task's headline metric) and `n_items.<group>`."""
    out: dict[str, Any] = {}
    ivs, spec, sig = outcome.intervals, outcome.specificity, outcome.significance
    if ivs is not None:
        _interval_columns("baseline", ivs.baseline, out)
        _interval_columns("edited", ivs.edited.value, out)
        _interval_columns("delta", ivs.edited.delta, out)
        _interval_columns("ratio", ivs.edited.ratio, out)
        for name, iv in ivs.edited.specificity.items():
            out[f"ci.specificity.lo.{name}"], out[f"ci.specificity.hi.{name}"] = iv.lo, iv.hi
        out["ci.level"] = ivs.level
        out.update({f"n_items.{g}": n for g, n in ivs.n_items.items()})
    if spec is not None:
        out["specificity_metric"] = spec.metric
        for name, value in spec.edited.items():
            out[f"specificity.{name}"] = value
            out[f"specificity.random_median.{name}"] = spec.random_median.get(name, math.nan)
            out[f"specificity.random_q25.{name}"] = spec.random_q25.get(name, math.nan)
            out[f"specificity.random_q75.{name}"] = spec.random_q75.get(name, math.nan)
    if sig is not None:
        for group, metrics in sig.p.items():
            for name, p in metrics.items():
                out[f"p.{group}.{name}"] = p
                rank = sig.rank.get(group, {}).get(name)
                out[f"rank.{group}.{name}"] = math.nan if rank is None else rank
        out.update({f"specificity.p.{name}": p for name, p in sig.specificity_p.items()})
    if outcome.random is not None:
        out["n_random_sets"] = len(outcome.random.per_seed)
    return out


def metric_columns(outcome: Outcome) -> dict[str, float]:
    """Every metric of a run as its runs.csv column: `baseline.`, `edited.`, `random.` (the mean
    over seeds), `random.<stat>.`, `normalized.edited.` and `normalized.random.<stat>.`."""
    out: dict[str, float] = {}
    _metric_columns("baseline", outcome.baseline.groups, out)
    _metric_columns("edited", outcome.edited.groups, out)
    if outcome.random is not None:
        _stat_columns("random", outcome.random.stats, out, mean="")
    if outcome.normalized is not None:
        _metric_columns("normalized.edited", outcome.normalized.edited, out)
        if outcome.normalized.random is not None:
            _stat_columns("normalized.random", outcome.normalized.random, out, mean="mean")
    return out


def ranking_label(method: Any, preset: Any) -> str:
    """The name a run's ranking goes by in every table, plot title and file name: its method, or,
    when the ranking config file chosen is not the method's own, the file too: `ranking=paper`
    (concept_restricted, centred, raw rows, 50 steps) is "paper's scoring: concept_restricted", apart
    from a plain `ranking=concept_restricted` run."""
    if _missing(preset) or preset == method:
        return str(method)
    return f"{PRESET_LABELS.get(str(preset), f'ranking={preset}')}: {method}"


def _missing(value: Any) -> bool:
    """An empty setting (None / NaN): a run without a dataset, a run that is no transfer."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def present(setting: Mapping[str, Any]) -> dict[str, Any]:
    """The setting's keys that have a value: what titles and file names show (no `dataset=nan`;
    no `where=all`, the edit at every position, as before `intervention.where` existed)."""
    return {k: v for k, v in setting.items() if not _missing(v) and not (k == "where" and v == LEGACY_WHERE)}


def relaxed_label(random: RandomControls | None) -> str:
    """`random_relaxed` of a run: "<layer>:<heads short> ..." from results.json
    `random.relaxed_layers`; "" when no random set borrowed (or the run has no such record)."""
    if random is None or not random.relaxed_layers:
        return ""
    return " ".join(f"{layer}:{b.short}" for layer, b in random.relaxed_layers.items())


def _run_label(path: Path | None, root: Path | None) -> str | None:
    if path is None:
        return None
    return str(path.parent.relative_to(root)) if root is not None else str(path.parent)


# Runs of before `intervention.random_pool` existed drew their random heads from all heads.
LEGACY_RANDOM_POOL = "all"
# Runs of before `intervention.where` existed edited every position.
LEGACY_WHERE = "all"


def result_row(rec: RunRecord, path: Path | None = None, root: Path | None = None) -> dict:
    """One flat row from a run's record. A run without an outcome (failed, interrupted, running)
    shows its setting from its config."""
    out = rec.outcome
    edit = out.edit if out is not None else Edit()
    prov = out.provenance if out is not None else None
    choices = rec.run.choices if rec.run is not None else {}
    rank_groups = rec.config_at("task", "rank_groups")
    method = (out.ranking if out is not None else None) or rec.config_at("ranking", "method")
    config_k = rec.config_at("intervention", "k")
    config_pool = rec.config_at("intervention", "random_pool")
    row: dict[str, Any] = {
        "run": _run_label(path, root),
        "status": rec.status,
        "model": (out.model if out is not None else None) or rec.config_at("model", "name_or_path"),
        "task": (out.task if out is not None else None) or rec.config_at("task", "name"),
        "dataset": (out.dataset if out is not None else None) or rec.config_at("task", "dataset"),
        "rank_dataset": out.transfer.source if out is not None and out.transfer is not None else None,
        # the toxicity classifier (every output says which one scored it)
        "scorer": out.baseline.extra.get("scorer") if out is not None else None,
        # the label (method, and the config file when it is not the method's own); the method alone
        "ranking": ranking_label(method, choices.get("ranking")),
        "ranking_method": method,
        "heads_mode": edit.heads_mode or rec.config_at("intervention", "heads"),
        "k": edit.k if out is not None else config_k,
        "k_frac": edit.k_frac if out is not None else rec.config_at("intervention", "k_frac"),
        "alpha": edit.alpha if out is not None else rec.config_at("intervention", "alpha"),
        "where": rec.config_at("intervention", "where") or LEGACY_WHERE,
        "seed": rec.config_at("seed"),
        "random_pool": (out.random.pool if out is not None and out.random is not None else None)
        or config_pool
        or LEGACY_RANDOM_POOL,
        "random_relaxed": relaxed_label(out.random if out is not None else None),
        "positions": rec.config_at("task", "positions"),
        "rank_groups": "+".join(map(str, rank_groups)) if isinstance(rank_groups, list) else rank_groups,
        "experiment": choices.get("experiment"),
        # the ranking config file chosen (e.g. paper vs concept_restricted: one method, two presets)
        "ranking_preset": choices.get("ranking"),
        "n_heads_total": edit.n_heads_total,
        "heads": " ".join(f"{h.layer}.{h.head}" for h in edit.heads),
        "error": rec.error.message if rec.error is not None else None,
        "stage": rec.error.stage if rec.error is not None else None,
        "activations_from_cache": prov.cache.activations_from_cache if prov is not None else None,
        "seconds": (sum(prov.timings.values()) or None) if prov is not None else None,
    }
    if out is not None:
        row.update(metric_columns(out))
        row.update(effect_columns(out))
    return row


#: run statuses beyond complete / failed: interrupted (SIGTERM/SIGINT, recorded by the job), stale
#: (says running, but its heartbeat stopped: killed), unreadable (results.json does not parse)
NOT_COMPLETE = ("failed", "interrupted", "stale", "running", "unreadable")


def run_status(rec: RunRecord, path: Path, stale_after: float | None = None) -> str:
    """The status a results.json says, with "running" checked against its heartbeat (`stale`)."""
    if rec.status != "running":
        return rec.status
    return running_state(path.parent, rec.to_json(), stale_after=stale_after)


def load_runs(root: str | os.PathLike, *, stale_after: float | None = None) -> pd.DataFrame:
    """One row per results.json under `root` (sorted by setting, k, alpha). A file that does not
    parse (or is not a record this version reads: a newer schema) is a row with status=unreadable
    and its path in `error`, never dropped; a "running" job whose heartbeat stopped is status=stale
    (see `tracking.running_state`). Records of every version (`results.RESULTS_VERSION`) are read."""
    root = Path(root)
    rows = []
    for p in find_results(root):
        base = root if root.is_dir() else p.parent.parent
        try:
            rec, why = RunRecord.read(p), f"unreadable {RESULTS_FILE}: {p}"
        except ResultsError as exc:
            rec, why = None, f"unreadable: {exc}"
        if rec is None:
            row = result_row(RunRecord(status="unreadable"), p, base)
            row.update(status="unreadable", error=why)
        else:
            row = result_row(rec, p, base)
            row["status"] = run_status(rec, p, stale_after)
            if row["status"] == "stale":
                row["error"] = f"status=running but no live process (heartbeat stopped): {p.parent}"
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in ("k", "alpha", "k_frac", "n_heads_total"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values([c for c in SETTING + ["k", "alpha", "run"] if c in df]).reset_index(drop=True)


def metric_names(df: pd.DataFrame, section: str = "edited") -> list[tuple[str, str]]:
    """[(group, metric)] present for a section (`edited`, `normalized.edited`, ...), e.g.
    [("concept", "accuracy"), ...]."""
    out = []
    stats = "|".join(rf"{s}\." for s in STAT_KEYS)
    for c in df.columns:
        m = re.fullmatch(rf"{re.escape(section)}\.(?!{stats})([^.]+)\.(.+)", c)
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


#: the mark after a value whose change's interval includes "no change" (0 for edited - unedited)
NO_CHANGE_MARK = "°"
NO_CHANGE_NOTE = (
    f"{NO_CHANGE_MARK}: the interval of edited - unedited includes 0 (no change) at this level. "
    "[lo, hi]: the paired bootstrap interval over the evaluation items (results.json `intervals`)."
)
# the interval part (runs.csv `ci.<part>`) of a k_alpha section's values
INTERVAL_PART = {"edited": "edited", "normalized.edited": "ratio"}


def interval_cell(value: Any, lo: Any, hi: Any, no_change: bool = False, digits: int = 3) -> str:
    """ "0.250 [0.100, 0.400]" (the interval only where defined), NO_CHANGE_MARK when `no_change`."""
    if pd.isna(value):
        return ""
    text = f"{value:.{digits}f}"
    if pd.notna(lo) and pd.notna(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text + (NO_CHANGE_MARK if no_change else "")


def includes_no_change(row: Mapping[str, Any], group: str, metric: str) -> bool:
    """Whether a run's interval of edited - unedited for `group` / `metric` includes 0."""
    lo = float(row.get(f"ci.delta.lo.{group}.{metric}", math.nan))
    hi = float(row.get(f"ci.delta.hi.{group}.{metric}", math.nan))
    return lo <= 0.0 <= hi  # False when either bound is NaN (no interval)


def k_alpha_tables(
    df: pd.DataFrame, section: str = "edited", *, intervals: bool = False
) -> list[tuple[dict, str, str, pd.DataFrame]]:
    """[(setting, group, metric, table)]: edited metric with k as rows and alpha as columns
    (`section="normalized.edited"`: the same over the unedited model, whose column then reads 1).
    `intervals`: the cells are text, `interval_cell` (value [lo, hi], marked where the change's
    interval includes none), for one run per cell; several runs in a cell show their mean alone."""
    out: list[tuple[dict, str, str, pd.DataFrame]] = []
    done = df[df["status"] == "complete"] if "status" in df else df
    if done.empty:
        return out
    for group, metric in metric_names(done, section):
        col, bcol = f"{section}.{group}.{metric}", f"baseline.{group}.{metric}"
        for key, g in done.groupby(SETTING, dropna=False, sort=True):
            if g[col].isna().all():
                continue
            t = g.pivot_table(index="k", columns="alpha", values=col, aggfunc="mean")
            if intervals:
                t = t.astype(object)
                for (k, alpha), cell in g.groupby(["k", "alpha"]):
                    r = cell.iloc[0]
                    part = INTERVAL_PART.get(section, section)
                    lo, hi = (r.get(f"ci.{part}.{b}.{group}.{metric}") for b in ("lo", "hi"))
                    if len(cell) > 1:
                        lo = hi = float("nan")
                    no_change = len(cell) == 1 and includes_no_change(r, group, metric)
                    t.loc[k, alpha] = interval_cell(cell[col].mean(), lo, hi, no_change)
            t.columns = [f"alpha={a:g}" for a in t.columns]
            if section == "edited" and bcol in g:
                t.insert(0, "unedited", g.groupby("k")[bcol].mean())
            t = t.reset_index()
            out.append((dict(zip(SETTING, key)), group, metric, t))
    return out


# vs_random columns beyond mean/std -> the runs.csv column prefix they are read from
VS_RANDOM_EXTRA = {
    "random_median": "random.median",
    "random_q25": "random.q25",
    "random_q75": "random.q75",
    "edited_normalized": "normalized.edited",
    "random_median_normalized": "normalized.random.median",
    "random_q25_normalized": "normalized.random.q25",
    "random_q75_normalized": "normalized.random.q75",
}


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
            extra = {
                name: r.get(f"{prefix}.{group}.{metric}", float("nan")) for name, prefix in VS_RANDOM_EXTRA.items()
            }
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
                    **extra,
                    **{
                        f"{name}_{b}": r.get(f"ci.{part}.{b}.{group}.{metric}", float("nan"))
                        for name, part in (("edited", "edited"), ("delta", "delta"), ("ratio", "ratio"))
                        for b in ("lo", "hi")
                    },
                    "no_change": includes_no_change(r, group, metric) if f"ci.delta.lo.{group}.{metric}" in r else None,
                    "rank": r.get(f"rank.{group}.{metric}", float("nan")),
                    "p": r.get(f"p.{group}.{metric}", float("nan")),
                    "n_random_sets": r.get("n_random_sets", float("nan")),
                    "random_relaxed": r.get("random_relaxed", ""),
                }
            )
    return pd.DataFrame(rows)


def effects_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per complete run with its headline metric (`specificity_metric`): per group the
    unedited and edited value with the change's interval (`interval_cell`) and the p-value against
    the random sets, then the specificity with its interval, the random sets' median [q25, q75] and
    its p-value. Empty when no run has a headline metric (results.json of before it was recorded)."""
    done = df[df["status"] == "complete"] if "status" in df else df
    if "specificity_metric" not in done:
        return pd.DataFrame()
    rows = []
    for _, r in done.iterrows():
        m = r.get("specificity_metric")
        if _missing(m):
            continue
        row: dict[str, Any] = {c: r.get(c) for c in ["run", "model", "task", "ranking", "k", "alpha"]}
        row["metric"] = m
        for g in ("concept", "control"):
            b, e = r.get(f"baseline.{g}.{m}"), r.get(f"edited.{g}.{m}")
            row[f"{g} n"] = r.get(f"n_items.{g}")
            row[f"{g} unedited"] = b
            row[f"{g} edited - unedited"] = interval_cell(
                e - b if pd.notna(e) and pd.notna(b) else float("nan"),
                r.get(f"ci.delta.lo.{g}.{m}"),
                r.get(f"ci.delta.hi.{g}.{m}"),
                includes_no_change(r, g, m),
            )
            row[f"{g} p"] = r.get(f"p.{g}.{m}")
        row["specificity"] = interval_cell(
            r.get(f"specificity.{m}"), r.get(f"ci.specificity.lo.{m}"), r.get(f"ci.specificity.hi.{m}")
        )
        median = r.get(f"specificity.random_median.{m}")
        row["random specificity"] = (
            f"{median:.3f} [{r.get(f'specificity.random_q25.{m}'):.3f}, {r.get(f'specificity.random_q75.{m}'):.3f}]"
            if pd.notna(median)
            else ""
        )
        row["specificity p"] = r.get(f"specificity.p.{m}")
        row["random sets"] = r.get("n_random_sets")
        rows.append(row)
    return pd.DataFrame(rows)


EFFECTS_INTRO = """# Effects with their uncertainty (the headline metric of each run)

`edited - unedited`: the change with its paired bootstrap interval over the evaluation items
(`n` items per group; results.json `intervals`). `p`: the empirical p-value of the edited heads
against the run's random sets, rank / (1 + N) with rank = 1 + the sets that moved the metric as far
or further in the edit's direction (lower for alpha < 1): with N = 10 sets the smallest p is 1/11 =
0.09, so 10 sets can rank an edit first but cannot show p < 0.05. `specificity`: control retained
minus concept retained (retained = edited / unedited; 1 = concept gone and control untouched), with
its interval; `random specificity`: the random sets' median [q25, q75]; `specificity p`: its
empirical p-value (higher = more specific).
"""


def methods_table(vr: pd.DataFrame) -> pd.DataFrame:
    """Ranking methods side by side: edited value per method, plus random heads and unedited."""
    if vr.empty or vr["ranking"].nunique() < 2:
        return pd.DataFrame()
    keys = ["model", "task", "heads_mode", "k", "alpha", "group", "metric"]
    wide = vr.pivot_table(index=keys, columns="ranking", values="edited", aggfunc="mean")
    extra = vr.groupby(keys).agg(
        unedited=("baseline", "mean"),
        random_heads=("random_mean", "mean"),
        random_relaxed=("random_relaxed", _any_relaxed),
    )
    table = extra.join(wide)
    if vr["edited_normalized"].notna().any():
        norm = vr.pivot_table(index=keys, columns="ranking", values="edited_normalized", aggfunc="mean")
        norm.columns = [f"normalized.{c}" for c in norm.columns]
        table = table.join(norm)
    return table.reset_index()


def _is_relaxed(label: Any) -> bool:
    """Whether a run's random sets borrowed heads (its `random_relaxed` label is not empty)."""
    return isinstance(label, str) and bool(label)


def _any_relaxed(labels: pd.Series) -> bool:
    """Whether any run of a cell has relaxed random sets."""
    return any(_is_relaxed(x) for x in labels)


def method_label(method: str, label: str | None = None) -> str:
    """The paper's row name of a ranking method: `SOMP (concept_restricted)`, `LL (logit_lens_mean)`;
    `label` (`ranking_label`, default: the method) goes in the parentheses."""
    label = label or str(method)
    if method in SOMP_METHODS:
        return f"SOMP ({label})"
    if method in LL_METHODS:
        return f"LL ({label})"
    return label


def _row_order(method: str) -> int:
    return 0 if method in SOMP_METHODS else 1 if method in LL_METHODS else 2


def paper_table_long(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's table in long form, normalised to the unedited model: one row per (model, task,
    alpha, group, metric, table row, k) with `value` (edited / unedited; for the random rows the
    median over seeds) and, for the random rows, `q25` / `q75`.

    Table rows: each ranking method of the ranked runs (SOMP / LL / others by name) and, for the
    SOMP methods, their random controls (same k and alpha; the pool is in the label). Settings in
    VARIANT_COLS that differ between the runs of one method in one table are added to its labels.
    Several runs in one cell (e.g. two seeds of the run) are averaged; `n_runs` counts them.
    """
    keys = ["model", "task", "dataset", "alpha"]
    done = df[df["status"] == "complete"] if "status" in df else df
    if "dataset" not in done:
        done = done.assign(dataset=None)
    if "rank_dataset" in done:  # transfer runs (heads from another dataset) are the overlap command's
        done = done[done["rank_dataset"].isna()]
    if "heads_mode" in done:
        done = done[done["heads_mode"] == "ranked"]
    rows: list[dict] = []
    for group, metric in metric_names(done, "normalized.edited"):
        gm = f"{group}.{metric}"
        for key, g in done.groupby(keys, dropna=False, sort=True):
            # Per method: the settings its runs differ in (two presets of concept_restricted, ...).
            varying = {
                m: [c for c in VARIANT_COLS if c in gm_runs and gm_runs[c].nunique(dropna=False) > 1]
                for m, gm_runs in g.groupby("ranking", dropna=False)
            }
            for _, r in g.iterrows():
                method, label = str(r.get("ranking_method", r["ranking"])), str(r["ranking"])
                variant = ", ".join(f"{c}={r[c]}" for c in varying[r["ranking"]])
                base = {**dict(zip(keys, key)), "group": group, "metric": metric, "k": r["k"]}
                base["n_heads_total"] = r.get("n_heads_total")
                rows.append(
                    {
                        **base,
                        "order": _row_order(method),
                        "row": method_label(method, label) + (f" [{variant}]" if variant else ""),
                        "method": method,
                        "value": r.get(f"normalized.edited.{gm}", float("nan")),
                        "q25": float("nan"),
                        "q75": float("nan"),
                        "lo": r.get(f"ci.ratio.lo.{gm}", float("nan")),
                        "hi": r.get(f"ci.ratio.hi.{gm}", float("nan")),
                        "p": r.get(f"p.{gm}", float("nan")),
                        "no_change": includes_no_change(r, group, metric),
                        "relaxed": False,
                    }
                )
                median = r.get(f"normalized.random.median.{gm}", float("nan"))
                if method in SOMP_METHODS and pd.notna(median):
                    where = ", ".join(x for x in (label, variant, f"pool={r.get('random_pool')}") if x)
                    rows.append(
                        {
                            **base,
                            "order": 3,
                            "row": f"Rand. median [q25, q75] ({where})",
                            "method": method,
                            "value": median,
                            "q25": r.get(f"normalized.random.q25.{gm}", float("nan")),
                            "q75": r.get(f"normalized.random.q75.{gm}", float("nan")),
                            "lo": float("nan"),
                            "hi": float("nan"),
                            "p": float("nan"),
                            "no_change": False,
                            "relaxed": _is_relaxed(r.get("random_relaxed")),
                        }
                    )
    if not rows:
        return pd.DataFrame()
    long = pd.DataFrame(rows)
    cell = keys + ["group", "metric", "order", "row", "method", "k"]
    out = long.groupby(cell, dropna=False, sort=True).agg(
        value=("value", "mean"),
        q25=("q25", "mean"),
        q75=("q75", "mean"),
        # an interval and p-value belong to one run: a cell of several runs shows none
        lo=("lo", lambda v: v.iloc[0] if len(v) == 1 else float("nan")),
        hi=("hi", lambda v: v.iloc[0] if len(v) == 1 else float("nan")),
        p=("p", lambda v: v.iloc[0] if len(v) == 1 else float("nan")),
        no_change=("no_change", lambda v: bool(v.iloc[0]) if len(v) == 1 else False),
        relaxed=("relaxed", "any"),
        n_runs=("value", "size"),
        n_heads_total=("n_heads_total", "first"),
    )
    out = out.reset_index()
    # A table whose every value is undefined (e.g. a metric the baseline has as 0) says nothing.
    defined = out.groupby(keys + ["group", "metric"], dropna=False)["value"].transform(lambda v: v.notna().any())
    return out[defined].reset_index(drop=True)


def _k_label(k: Any, n_total: Any) -> str:
    if pd.notna(n_total) and float(n_total) > 0:
        return f"k={float(k):g} ({100 * float(k) / float(n_total):.1f}%)"
    return f"k={float(k):g}"


#: the mark after a paper-table cell whose random sets borrowed heads, and its footnote
RELAXED_MARK = "*"
RELAXED_NOTE = (
    "\\* random sets relaxed: the layer-count control borrowed heads from neighbouring layers "
    "(a layer held more edited heads than other heads; results.json `random.relaxed_layers`)\n"
)


def _cell(value: Any, q25: Any, q75: Any, digits: int = 2, relaxed: bool = False, **effect: Any) -> str:
    """A random row's "median [q25, q75]", or a method row's "value [lo, hi] p=.." (`effect`: lo, hi,
    p, no_change)."""
    if pd.isna(value):
        return ""
    mark = RELAXED_MARK if relaxed else ""
    if pd.isna(q25) and pd.isna(q75):
        text = interval_cell(value, effect.get("lo"), effect.get("hi"), bool(effect.get("no_change")), digits)
        p = effect.get("p")
        return text + (f" p={p:.2f}" if p is not None and pd.notna(p) else "") + mark
    return f"{value:.{digits}f} [{q25:.{digits}f}, {q75:.{digits}f}]{mark}"


def paper_tables(long: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """[(setting, table)]: per model / task / alpha / group / metric, rows as in
    `paper_table_long`, one column per k, cells "0.83" or "1.02 [0.94, 1.13]" (median [q25, q75]),
    a trailing RELAXED_MARK when the cell's random sets borrowed heads from neighbouring layers."""
    out: list[tuple[dict, pd.DataFrame]] = []
    if long.empty:
        return out
    keys = ["model", "task", "dataset", "alpha", "group", "metric"]
    for key, g in long.groupby(keys, dropna=False, sort=True):
        g = g.sort_values(["order", "row", "k"])
        ks = sorted(g["k"].dropna().unique())
        labels = {k: _k_label(k, g.loc[g["k"] == k, "n_heads_total"].iloc[0]) for k in ks}
        table_rows = []
        for row, rg in g.groupby(["order", "row"], sort=True):
            cells = {
                labels[r.k]: _cell(
                    r.value, r.q25, r.q75, relaxed=bool(r.relaxed), lo=r.lo, hi=r.hi, p=r.p, no_change=r.no_change
                )
                for r in rg.itertuples(index=False)
                if r.k in labels
            }
            table_rows.append({"row": row[1], **{labels[k]: cells.get(labels[k], "") for k in ks}})
        out.append((dict(zip(keys, key)), pd.DataFrame(table_rows)))
    return out


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
    # One heat map per (model, task, dataset, ranking): the scores do not depend on k or alpha. A
    # transfer run's scores are its rank dataset's.
    scored = done.assign(scored_on=done["rank_dataset"].fillna(done["dataset"]))
    heatmap_keys = ["model", "task", "scored_on", "ranking"]
    for key, g in scored.groupby(heatmap_keys, dropna=False, sort=True):
        shown = present(dict(zip(heatmap_keys, key))).values()
        for run in g["run"]:
            csv = root / run / HEAD_SCORES_FILE
            if not csv.exists():
                continue
            table = pd.read_csv(csv)
            rec = RunRecord.read(root / run / RESULTS_FILE)
            outcome = rec.outcome if rec is not None else None
            layout = (outcome.provenance.model.layout if outcome is not None else None) or {}
            made.append(
                plots.score_heatmap(
                    table,
                    layout.get("n_layers"),
                    layout.get("n_heads"),
                    pdir / f"heatmap__{_slug(*shown)}.png",
                    title=" | ".join(map(str, shown)),
                )
            )
            break
    for key, g in done.groupby(SETTING, dropna=False, sort=True):
        if g["k"].nunique() < 2:
            continue
        for group, metric in metric_names(g):
            if g[f"edited.{group}.{metric}"].isna().all():
                continue
            shown = present(dict(zip(SETTING, key))).values()
            path = pdir / f"metric_vs_k__{_slug(*shown)}__{group}.{metric}.png"
            made.append(plots.metric_vs_k(g, metric, path, group=group, title=" | ".join(map(str, shown))))
    return made


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------


def status_counts(df: pd.DataFrame) -> str:
    """The status line of a sweep: "4 runs, 2 complete, 1 failed, 1 interrupted." (others when present)."""
    counts = df["status"].value_counts()
    parts = [f"{len(df)} runs", f"{int(counts.get('complete', 0))} complete", f"{int(counts.get('failed', 0))} failed"]
    parts += [f"{int(counts[s])} {s}" for s in NOT_COMPLETE if s != "failed" and s in counts]
    return ", ".join(parts) + "."


def aggregate(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    plots: bool = True,
    *,
    stale_after: float | None = None,
) -> pd.DataFrame:
    """Read every results.json under `root`; write runs.csv, k_alpha.*, vs_random.*, plots/."""
    root = Path(root)
    out = Path(out) if out else (root if root.is_dir() else root.parent)
    df = load_runs(root, stale_after=stale_after)
    if df.empty:
        raise FileNotFoundError(f"no readable {RESULTS_FILE} under {root}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "runs.csv", df.to_csv(index=False))

    tables = k_alpha_tables(df)
    md = [
        f"# Head Pursuit results: {root}\n",
        status_counts(df) + "\n",
        "\n" + NO_CHANGE_NOTE + "\n",
    ]
    long = []
    for (setting, group, metric, t), (*_, shown) in zip(tables, k_alpha_tables(df, intervals=True)):
        head = ", ".join(f"{k}={v}" for k, v in present(setting).items())
        md.append(
            f"\n## {group} {metric} ({head})\n\nedited {group} {metric} by k (rows) and alpha "
            "(columns); `unedited` is the model without edits.\n\n" + to_markdown(shown)
        )
        long.append(t.assign(**setting, group=group, metric=metric))
    write_text_atomic(out / "k_alpha.md", "".join(md))
    if long:
        write_text_atomic(out / "k_alpha.csv", pd.concat(long, ignore_index=True).to_csv(index=False))

    norm_md, norm_long = ["# Normalised results (edited / unedited)\n", "\n" + NO_CHANGE_NOTE + "\n"], []
    norm_tables = k_alpha_tables(df, "normalized.edited")
    for (setting, group, metric, t), (*_, shown) in zip(
        norm_tables, k_alpha_tables(df, "normalized.edited", intervals=True)
    ):
        head = ", ".join(f"{k}={v}" for k, v in present(setting).items())
        norm_md.append(
            f"\n## {group} {metric}, normalised ({head})\n\nedited / unedited {group} {metric} by k (rows) and "
            "alpha (columns); 1 = no change.\n\n" + to_markdown(shown)
        )
        norm_long.append(t.assign(**setting, group=group, metric=metric))
    if norm_long:
        write_text_atomic(out / "k_alpha_normalized.md", "".join(norm_md))
        write_text_atomic(out / "k_alpha_normalized.csv", pd.concat(norm_long, ignore_index=True).to_csv(index=False))
    write_paper_tables(df, out)

    vr = vs_random_table(df)
    write_text_atomic(out / "vs_random.csv", vr.to_csv(index=False))
    write_text_atomic(
        out / "vs_random.md",
        "# Ranked heads vs random heads (same k, alpha)\n\n"
        "random_mean / random_std: mean and sample std over the random-head seeds "
        "(same k and alpha); random_median / random_q25 / random_q75: their median and quartiles "
        "(linear interpolation); *_normalized: the same over the unedited model "
        "(each seed normalised first). edited_lo / _hi, delta_lo / _hi (edited - unedited), ratio_lo / _hi "
        "(edited / unedited): paired bootstrap intervals over the evaluation items; no_change: the delta "
        "interval includes 0. rank, p: the edited heads among the n_random_sets random sets (rank 1 + the "
        "sets that lowered the metric as much or more, raised for alpha > 1; p = rank / (1 + n), at least "
        "1 / (1 + n)).\n\n" + to_markdown(vr),
    )
    et = effects_table(df)
    if not et.empty:
        write_text_atomic(out / "effects.csv", et.to_csv(index=False))
        write_text_atomic(out / "effects.md", EFFECTS_INTRO + "\n" + NO_CHANGE_NOTE + "\n\n" + to_markdown(et))
    mt = methods_table(vr)
    if not mt.empty:
        write_text_atomic(out / "methods.csv", mt.to_csv(index=False))
        write_text_atomic(out / "methods.md", "# Ranking methods vs random heads (edited value)\n\n" + to_markdown(mt))
    failed = df[df["status"] != "complete"]
    if not failed.empty:
        write_text_atomic(
            out / "failed.md",
            "# Runs not complete\n\nstatus: failed (error.txt), interrupted (SIGTERM/SIGINT, at `stage`), stale "
            "(said running, but its heartbeat stopped: killed), unreadable (results.json does not parse).\n\n"
            + to_markdown(failed[["run", "status", "stage", "error"]]),
        )
    if plots:
        make_plots(df, root if root.is_dir() else root.parent, out)
    return df


PAPER_TABLE_INTRO = """# Paper-shaped tables: metric normalised to the unedited model (edited / unedited)

Rows: `SOMP (<method>)` the top-k heads of a SOMP ranking, `LL (<method>)` the top-k heads of the
logit-lens baseline, `Rand. median [q25, q75] (<method>, pool=<pool>)` the random head sets of that
SOMP run (median and 25th / 75th percentiles over the seeds, each seed normalised first; the
paper's control is pool=layer_counts). `paper's scoring: concept_restricted` is a run of
`ranking=paper` (concept-restricted SOMP, centred, raw rows, 50 steps), apart from a plain
`ranking=concept_restricted` run. Columns: k heads edited (share of all heads). 1 = no change;
below 1 the edit lowered the metric. An empty cell: no run, or an unedited value of 0. A `*` after a
random cell: its sets borrowed heads from neighbouring layers (see the note under that table).

A method's cell: `value [lo, hi] p=..`: the paired bootstrap interval of edited / unedited over the
evaluation items (results.json `intervals`), and the empirical p-value against that run's random
sets (rank / (1 + N); with 10 sets the smallest is 0.09). `°`: the interval of edited - unedited
includes 0 (no change). A cell averaging several runs shows no interval or p-value.
"""


def _dataset_label(dataset: Any) -> str:
    return "" if _missing(dataset) else f" {dataset}"


def _has_relaxed_cell(table: pd.DataFrame) -> bool:
    cells = table.drop(columns="row").astype(str)
    return bool(cells.apply(lambda c: c.str.endswith(RELAXED_MARK)).any().any())


def write_paper_tables(df: pd.DataFrame, out: Path) -> list[tuple[dict, pd.DataFrame]]:
    """paper_table.csv (long, numeric) and paper_table.md (one table per setting); [] if no run has
    normalised metrics (results.json from before they were recorded)."""
    long = paper_table_long(df)
    tables = paper_tables(long)
    if not tables:
        return tables
    write_text_atomic(out / "paper_table.csv", long.drop(columns="order").to_csv(index=False))
    md = [PAPER_TABLE_INTRO]
    for setting, t in tables:
        md.append(
            f"\n## {setting['model']} | {setting['task']}{_dataset_label(setting.get('dataset'))} | "
            f"alpha={_fmt(setting['alpha'], integral=True)} | "
            f"{setting['group']} {setting['metric']} (normalised)\n\n" + to_markdown(t)
        )
        if _has_relaxed_cell(t):
            md.append("\n" + RELAXED_NOTE)
    write_text_atomic(out / "paper_table.md", "".join(md))
    return tables


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headpursuit.app.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a multirun directory (or any directory holding results.json files)")
    ap.add_argument("--out", default=None, help="where to write tables and plots (default: DIR)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--stale-after",
        type=float,
        default=None,
        help="seconds without a heartbeat after which a running job counts as stale "
        "(default: 4 heartbeat intervals, at least 120)",
    )
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        df = aggregate(args.dir, args.out, plots=not args.no_plots, stale_after=args.stale_after)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.dir)
    cols = [
        c for c in ["run", "status", "model", "task", "dataset", "rank_dataset", "ranking", "heads_mode"] if c in df
    ]
    cols += [c for c in ["scorer", "k", "alpha"] if c in df and (c != "scorer" or df[c].notna().any())]
    cols = [c for c in cols if c not in ("dataset", "rank_dataset") or df[c].notna().any()]
    headline = (
        r"(baseline|edited|random|normalized\.edited)\.(concept|control)\."
        r"(accuracy|f1|exact_match|toxic_fraction|mean_toxicity|held_out_word_frequency|cider|concept_rate)"
    )
    cols += [c for c in df.columns if re.fullmatch(headline, c)]
    print(to_markdown(df[cols]))
    effects = effects_table(df)
    if not effects.empty:
        print("Effects (headline metric; [lo, hi]: bootstrap interval; p: vs the random sets):")
        print(to_markdown(effects.drop(columns=["model", "task"])))
    not_complete = df[df["status"] != "complete"]
    if not not_complete.empty:
        print(f"{status_counts(df)} Not complete:\n" + to_markdown(not_complete[["run", "status", "stage", "error"]]))
    paper = ", paper_table.md/.csv" if (out / "paper_table.md").exists() else ""
    effects_files = ", effects.md/.csv" if (out / "effects.md").exists() else ""
    print(
        f"wrote {out}/runs.csv, k_alpha.md/.csv, vs_random.md/.csv{effects_files}{paper}"
        + ("" if args.no_plots else ", plots/")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
