"""Figures (matplotlib, Agg backend: no display needed).

* `score_heatmap`: layers x heads map of head scores, the edited heads outlined (with a legend).
* `metric_vs_k`: an edited metric against k (integer ticks), one curve per alpha, with the
  random-head controls as error bars (median and IQR, or mean +- std) and the unedited baseline
  as a dashed line.
* `matrix_heatmap`: a labelled matrix (rows x columns, e.g. the head-overlap Jaccard or transfer
  matrix of `headpursuit.app.overlap`), each cell annotated with its value.
* `concept_layer_heatmap`: concepts x layers, each concept's score as its share per layer (the head
  atlas, `headpursuit.app.atlas`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def score_grid(table: Any, n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
    """(n_layers, n_heads) array of scores from a table with layer, head, score (NaN if absent)."""
    layers = table["layer"].astype(int).to_numpy()
    heads = table["head"].astype(int).to_numpy()
    n_layers = int(n_layers or (layers.max() + 1))
    n_heads = int(n_heads or (heads.max() + 1))
    grid = np.full((n_layers, n_heads), np.nan)
    grid[layers, heads] = table["score"].astype(float).to_numpy()
    return grid


#: how the edited heads are outlined on a score heat map (the boxes and their legend entry)
EDITED_COLOR, EDITED_LW = "red", 1.5


def score_heatmap_figure(
    table: Any,
    n_layers: int | None = None,
    n_heads: int | None = None,
    *,
    title: str | None = None,
    highlight: Iterable[Sequence[int]] | None = None,
) -> Any:
    """The heat map's figure: head scores (rows: layers, columns: heads), the `highlight` heads
    outlined, with a legend entry that says what the outlines are."""
    grid = score_grid(table, n_layers, n_heads)
    L, H = grid.shape
    fig, ax = plt.subplots(figsize=(min(16, 1.5 + 0.35 * H + 2), min(14, 1.5 + 0.22 * L + 1)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower")
    fig.colorbar(im, ax=ax, label="score")
    edited = [(int(lh[0]), int(lh[1])) for lh in highlight or []]
    for layer, head in edited:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=EDITED_COLOR, lw=EDITED_LW))
    if edited:
        from matplotlib.patches import Patch

        # Below the axes: a legend inside would cover scores.
        ax.legend(
            handles=[Patch(fill=False, edgecolor=EDITED_COLOR, lw=EDITED_LW, label=f"edited heads (k={len(edited)})")],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            fontsize=8,
            frameon=False,
        )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    step_h, step_l = max(1, math.ceil(H / 16)), max(1, math.ceil(L / 16))
    ax.set_xticks(range(0, H, step_h))
    ax.set_yticks(range(0, L, step_l))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def score_heatmap(
    table: Any,
    n_layers: int | None = None,
    n_heads: int | None = None,
    path: str | os.PathLike = "head_scores_heatmap.png",
    *,
    title: str | None = None,
    highlight: Iterable[Sequence[int]] | None = None,
) -> Path:
    """`score_heatmap_figure` written to `path` (PNG)."""
    return _save(score_heatmap_figure(table, n_layers, n_heads, title=title, highlight=highlight), path)


def metric_vs_k(
    df: Any, metric: str, path: str | os.PathLike, *, group: str = "concept", title: str | None = None
) -> Path:
    """`edited.<group>.<metric>` against k, one line per alpha, random heads with error bars,
    baseline line. The x axis has integer ticks (k counts heads).

    `df` has columns k, alpha, `edited.{group}.{metric}` and optionally the random-head controls
    `random.{median,q25,q75}.{group}.{metric}` (drawn as median with the interquartile range, the
    paper's statistic) or `random.{group}.{metric}` / `random.std.{group}.{metric}` (mean +- std,
    when the quartiles are missing; no bar where the std is undefined, one seed), and
    `baseline.{group}.{metric}` (the aggregate DataFrame); `ci.edited.{lo,hi}.{group}.{metric}`, the
    bootstrap interval of the edited value, is drawn as a band (a k with several runs: their means).
    """
    col = f"edited.{group}.{metric}"
    bcol = f"baseline.{group}.{metric}"
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    d = df.dropna(subset=[col]).sort_values("k")
    for i, (alpha, g) in enumerate(d.groupby("alpha", sort=True)):
        g = g.groupby("k", as_index=False).mean(numeric_only=True)
        c = colors[i % len(colors)]
        ax.plot(g["k"], g[col], marker="o", color=c, label=f"top-k heads, alpha={alpha:g}")
        lo, hi = f"ci.edited.lo.{group}.{metric}", f"ci.edited.hi.{group}.{metric}"
        if lo in g and hi in g and g[lo].notna().any():  # the items' bootstrap interval, as a band
            ax.fill_between(g["k"], g[lo], g[hi], color=c, alpha=0.15, lw=0, label=f"interval, alpha={alpha:g}")
        band = random_band(g, group, metric)
        if band is not None:
            centre, lo, hi, what = band
            yerr = np.vstack([(centre - lo).fillna(0).clip(lower=0), (hi - centre).fillna(0).clip(lower=0)])
            ax.errorbar(
                g["k"], centre, yerr=yerr, ls=":", marker="s", ms=3, capsize=3, color=c,
                label=f"random heads ({what}), alpha={alpha:g}",
            )  # fmt: skip
    if bcol in d and d[bcol].notna().any():
        ax.axhline(float(d[bcol].mean()), color="gray", ls="--", lw=1, label="unedited")
    ax.set_xlabel("k (heads edited)")
    ax.set_ylabel(f"{group} {metric}")
    ks = sorted(int(k) for k in d["k"].unique())
    if len(ks) > 1 and ks[0] > 0 and ks[-1] / ks[0] >= 20:
        ax.set_xscale("log")
    integer_k_ticks(ax, ks)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def random_band(g: Any, group: str, metric: str) -> tuple[Any, Any, Any, str] | None:
    """(centre, low, high, label) of the random-head controls per row of `g`: median and quartiles
    when recorded, else mean +- std; None without random-head columns."""
    med, q25, q75 = (f"random.{s}.{group}.{metric}" for s in ("median", "q25", "q75"))
    if all(c in g for c in (med, q25, q75)) and g[med].notna().any():
        return g[med], g[q25], g[q75], "median, IQR"
    mean, std = f"random.{group}.{metric}", f"random.std.{group}.{metric}"
    if mean in g and g[mean].notna().any():
        s = g[std] if std in g else g[mean] * np.nan
        return g[mean], g[mean] - s, g[mean] + s, "mean +- std"
    return None


def integer_k_ticks(ax: Any, ks: Sequence[int]) -> None:
    """Ticks at the swept k values (whole numbers), or integer-only ticks when there are many."""
    from matplotlib.ticker import MaxNLocator, NullLocator

    if 0 < len(ks) <= 12:
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def matrix_heatmap(
    matrix: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    label: str = "value",
    vmin: float = 0.0,
    vmax: float | None = None,
    digits: int = 2,
) -> Path:
    """Heat map of a DataFrame (its index as rows, its columns as columns; the index and column
    names, if set, label the axes), each cell annotated with its value; NaN cells are left blank.
    `vmax` None: max(1, the largest finite value)."""
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = vmax if vmax is not None else max(1.0, float(finite.max()) if finite.size else 1.0)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * max(n_cols, 1) + 1.2, 1.2 + 0.7 * max(n_rows, 1)))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=top, aspect="auto")
    fig.colorbar(im, ax=ax, label=label)
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if math.isfinite(v):
                dark = (v - vmin) / ((top - vmin) or 1.0) < 0.6
                ax.text(
                    j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=8, color="white" if dark else "black"
                )
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels([str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(r) for r in matrix.index])
    if matrix.columns.name:
        ax.set_xlabel(str(matrix.columns.name))
    if matrix.index.name:
        ax.set_ylabel(str(matrix.index.name))
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def concept_layer_heatmap(profile: Any, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Concepts (rows) x layers (columns) of a DataFrame of per-layer concept scores, each row
    shown as the share of that concept's total in each layer (a concept's rows sum to 1; a concept
    no head writes stays blank), so concepts of different sizes compare by where they are written."""
    values = profile.to_numpy(dtype=float)
    totals = values.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, values / np.where(totals > 0, totals, 1.0), np.nan)
    n_rows, n_cols = shares.shape
    fig, ax = plt.subplots(figsize=(min(16, 2.5 + 0.3 * n_cols), 1.2 + 0.4 * max(n_rows, 1)))
    im = ax.imshow(np.ma.masked_invalid(shares), aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
    fig.colorbar(im, ax=ax, label="share of the concept's score")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(r) for r in profile.index])
    step = max(1, math.ceil(n_cols / 16))
    ax.set_xticks(range(0, n_cols, step))
    ax.set_xticklabels([str(c) for c in list(profile.columns)[::step]])
    ax.set_xlabel(str(profile.columns.name or "layer"))
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
