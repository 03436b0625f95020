"""aggregate: results.json files -> DataFrame, paper-style tables (CSV/Markdown) and plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from headpursuit.app import aggregate as A
from headpursuit.app.tracking import read_json, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def _fake_run(d: Path, k: int, alpha: float, acc: float, *, ranking="concept_share", status="complete"):
    d.mkdir(parents=True)
    res = {
        "status": status,
        "model": "smollm2",
        "task": "qa_countries",
        "ranking": ranking,
        "k": k,
        "k_frac": None,
        "alpha": alpha,
        "heads_mode": "ranked",
        "n_heads_total": 12,
        "heads": [{"layer": 1, "head": h, "score": 0.5, "rank": h + 1} for h in range(k)],
        "config": {"seed": 0, "intervention": {"k": k, "alpha": alpha}},
        "run": {"choices": {"experiment": None}},
        "baseline": {
            "concept": {"accuracy": 0.8, "concept_rate": 0.9},
            "control": {"accuracy": 0.5},
            "n": {"concept": 4},
            "examples": [{"prompt": "q", "output": "a"}],
        },
        "edited": {"concept": {"accuracy": acc, "concept_rate": None}, "control": {"accuracy": 0.5}},
        "random": {
            "concept": {"accuracy": 0.75},
            "control": {"accuracy": 0.5},
            "std": {"concept": {"accuracy": 0.05}, "control": {"accuracy": 0.0}},
            "n_seeds": 2,
            "per_seed": [],
            "seeds": [0, 1],
        },
        "provenance": {
            "model": {"layout": {"n_layers": 3, "n_heads": 4}},
            "cache": {"activations_from_cache": k != 1},
            "timings": {"a": 1.0, "b": 2.0},
        },
    }
    if status != "complete":
        res = {"status": status, "config": res["config"], "error": {"message": "boom"}}
    write_json_atomic(d / "results.json", res)
    pd.DataFrame(
        {
            "layer": [layer for layer in range(3) for _ in range(4)],
            "head": list(range(4)) * 3,
            "score": [i / 12 for i in range(12)],
            "rank": list(range(12, 0, -1)),
        }
    ).to_csv(d / "head_scores.csv", index=False)


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    accs = {(1, -1.0): 0.6, (1, 0.0): 0.7, (3, -1.0): 0.1, (3, 0.0): 0.3}
    for i, ((k, a), acc) in enumerate(sorted(accs.items())):
        _fake_run(root / str(i), k, a, acc)
    _fake_run(root / "4", 3, 2.0, 0.0, status="failed")
    (root / "0" / ".results.json.tmp77").write_text("{half")  # ignored
    (root / ".submitit" / "x").mkdir(parents=True)  # ignored
    return root


def test_load_runs_one_row_per_run(sweep):
    df = A.load_runs(sweep)
    assert len(df) == 5
    ok = df[df.status == "complete"]
    assert set(zip(ok.k, ok.alpha)) == {(1, -1.0), (1, 0.0), (3, -1.0), (3, 0.0)}
    row = ok[(ok.k == 3) & (ok.alpha == -1.0)].iloc[0]
    assert row["edited.concept.accuracy"] == 0.1 and row["baseline.concept.accuracy"] == 0.8
    assert row["random.concept.accuracy"] == 0.75 and row["random.std.concept.accuracy"] == 0.05
    assert row["heads"] == "1.0 1.1 1.2" and row["seconds"] == 3.0
    assert pd.isna(row["edited.concept.concept_rate"])
    assert df[df.status == "failed"].iloc[0]["error"] == "boom"


def test_tables_and_plots(sweep, tmp_path):
    out = tmp_path / "agg"
    df = A.aggregate(sweep, out)
    assert len(df) == 5
    t = pd.read_csv(out / "k_alpha.csv")
    acc = t[(t.group == "concept") & (t.metric == "accuracy")].set_index("k")
    assert acc.loc[3, "alpha=-1"] == 0.1 and acc.loc[1, "alpha=0"] == 0.7 and acc.loc[1, "unedited"] == 0.8
    md = (out / "k_alpha.md").read_text()
    assert "| k | unedited | alpha=-1 | alpha=0 |" in md and "| 3 | 0.800 | 0.100 | 0.300 |" in md
    vr = pd.read_csv(out / "vs_random.csv")
    r = vr[(vr.k == 3) & (vr.alpha == -1) & (vr.group == "concept") & (vr.metric == "accuracy")].iloc[0]
    assert (r.edited, r.random_mean, r.random_std) == (0.1, 0.75, 0.05)
    assert r.edited_minus_baseline == pytest.approx(-0.7)
    assert "boom" in (out / "failed.md").read_text()
    assert (out / "runs.csv").exists()
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert "heatmap__smollm2__qa_countries__concept_share.png" in plots
    assert any(p.startswith("metric_vs_k__") and p.endswith("concept.accuracy.png") for p in plots)


def test_methods_table(tmp_path):
    root = tmp_path / "m"
    _fake_run(root / "0", 3, -1.0, 0.1, ranking="concept_share")
    _fake_run(root / "1", 3, -1.0, 0.6, ranking="logit_lens")
    A.aggregate(root, plots=False)
    t = pd.read_csv(root / "methods.csv")
    row = t[(t.group == "concept") & (t.metric == "accuracy")].iloc[0]
    assert (row.concept_share, row.logit_lens, row.random_heads, row.unedited) == (0.1, 0.6, 0.75, 0.8)


def test_markdown_formatting():
    md = A.to_markdown(pd.DataFrame({"k": [1.0, 10.0], "acc": [0.5, float("nan")], "m": ["a|b", "c"]}))
    lines = md.splitlines()
    assert lines[0] == "| k | acc | m |"
    assert lines[2] == "| 1 | 0.500 | a\\|b |" and lines[3] == "| 10 |  | c |"
    assert A.to_markdown(pd.DataFrame()) == "_(no rows)_\n"


def test_cli(sweep, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "headpursuit.app.aggregate", str(sweep), "--out", str(tmp_path / "o"), "--no-plots"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "edited.concept.accuracy" in proc.stdout and (tmp_path / "o" / "k_alpha.md").exists()
    assert not (tmp_path / "o" / "plots").exists()
    empty = subprocess.run(
        [sys.executable, "-m", "headpursuit.app.aggregate", str(tmp_path / "none")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 2 and "no readable results.json" in empty.stderr


# ------------------------------------------------------------------------------------------
# Normalised metrics and the paper-shaped table (issue 12)
# ------------------------------------------------------------------------------------------


def _paper_run(
    d: Path, ranking: str, k: int, norm: float, rand=None, *, preset=None, positions="prompt_mean", relaxed=None
):
    """A results.json as a run of the paper protocol writes it: baseline concept accuracy 0.8, the
    edited value `norm * 0.8`, random controls (median, q25, q75) normalised `rand`. The ranking
    config file (`preset`): `ranking=paper` for concept_restricted, else the method's own; `relaxed`: its
    `random.relaxed_layers` (the key is absent when None, as in results.json of before)."""
    preset = preset or ("paper" if ranking == "concept_restricted" else ranking)
    d.mkdir(parents=True)
    b = 0.8
    res = {
        "status": "complete",
        "model": "smollm2",
        "task": "qa_countries",
        "ranking": ranking,
        "k": k,
        "k_frac": None,
        "alpha": -1.0,
        "heads_mode": "ranked",
        "n_heads_total": 270,
        "heads": [{"layer": 1, "head": h} for h in range(k)],
        "config": {
            "seed": 0,
            "intervention": {"k": k, "alpha": -1.0, "random_pool": "layer_counts"},
            "task": {"positions": positions, "rank_groups": ["concept", "control"]},
        },
        "run": {"choices": {"experiment": "paper_qa_embedded", "ranking": preset}},
        "baseline": {"concept": {"accuracy": b, "zero": 0.0}},
        "edited": {"concept": {"accuracy": norm * b, "zero": 0.1}},
        "random": None,
        "normalized": {"edited": {"concept": {"accuracy": norm, "zero": None}}, "random": None},
    }
    if rand is not None:
        med, q25, q75 = rand
        res["random"] = {
            "concept": {"accuracy": med * b},
            "std": {"concept": {"accuracy": 0.1}},
            "median": {"concept": {"accuracy": med * b}},
            "q25": {"concept": {"accuracy": q25 * b}},
            "q75": {"concept": {"accuracy": q75 * b}},
            "n_seeds": 10,
            "per_seed": [],
            "seeds": list(range(10)),
            "pool": "layer_counts",
        }
        if relaxed is not None:
            res["random"]["relaxed_layers"] = relaxed
        stats = {"median": med, "q25": q25, "q75": q75, "mean": med, "std": 0.1 / b}
        res["normalized"]["random"] = {s: {"concept": {"accuracy": v}} for s, v in stats.items()}
        res["normalized"]["random"]["n_seeds"] = 10
    write_json_atomic(d / "results.json", res)


@pytest.fixture
def paper_sweep(tmp_path):
    root = tmp_path / "paper"
    _paper_run(root / "0", "concept_restricted", 3, 0.83, (1.02, 0.94, 1.13))
    _paper_run(root / "1", "concept_restricted", 5, 0.67, (1.0, 0.89, 1.05))
    _paper_run(root / "2", "logit_lens_mean", 3, 0.91, (0.99, 0.9, 1.1))
    _paper_run(root / "3", "logit_lens_mean", 5, 0.79)
    return root


def test_normalized_columns_in_runs_and_tables(paper_sweep):
    df = A.aggregate(paper_sweep, plots=False)
    paper = "paper's scoring: concept_restricted"
    row = df[(df.ranking == paper) & (df.k == 3)].iloc[0]
    assert row["normalized.edited.concept.accuracy"] == 0.83
    assert row["normalized.random.median.concept.accuracy"] == 1.02
    assert row["normalized.random.q25.concept.accuracy"] == 0.94
    assert row["random.q75.concept.accuracy"] == pytest.approx(1.13 * 0.8)
    assert pd.isna(row["normalized.edited.concept.zero"])  # baseline 0 -> null -> NaN
    assert row["positions"] == "prompt_mean" and row["rank_groups"] == "concept+control"
    assert row["ranking_preset"] == "paper" and row["ranking_method"] == "concept_restricted"
    # the q25/q75/mean sub-sections are statistics, not metric groups
    assert ("concept", "accuracy") in A.metric_names(df, "normalized.edited")
    assert not [g for g, _ in A.metric_names(df, "random") if g in A.STAT_KEYS]
    vr = pd.read_csv(paper_sweep / "vs_random.csv")
    r = vr[(vr.ranking == paper) & (vr.k == 5) & (vr.metric == "accuracy")].iloc[0]
    assert (r.edited_normalized, r.random_median_normalized, r.random_q25_normalized) == (0.67, 1.0, 0.89)
    assert r.random_q75 == pytest.approx(1.05 * 0.8) and r.random_median == pytest.approx(0.8)
    kn = pd.read_csv(paper_sweep / "k_alpha_normalized.csv")
    acc = kn[(kn.group == "concept") & (kn.metric == "accuracy") & (kn.ranking == "logit_lens_mean")].set_index("k")
    assert acc.loc[5, "alpha=-1"] == 0.79 and "unedited" not in kn.columns
    mt = pd.read_csv(paper_sweep / "methods.csv")
    m = mt[(mt.k == 3) & (mt.metric == "accuracy")].iloc[0]
    assert (m[f"normalized.{paper}"], m["normalized.logit_lens_mean"]) == (0.83, 0.91)


def test_paper_table(paper_sweep):
    A.aggregate(paper_sweep, plots=False)
    long = pd.read_csv(paper_sweep / "paper_table.csv")
    acc = long[(long.group == "concept") & (long.metric == "accuracy")]
    rows = sorted(acc.row.unique())
    # ranking=paper: the paper's scoring, named as such (not a plain concept_restricted run)
    somp, ll = "SOMP (paper's scoring: concept_restricted)", "LL (logit_lens_mean)"
    rand = "Rand. median [q25, q75] (paper's scoring: concept_restricted, pool=layer_counts)"
    assert rows == sorted([somp, ll, rand])  # the LL runs' random controls are not a row
    cell = acc[(acc.row == rand) & (acc.k == 5)].iloc[0]
    assert (cell.value, cell.q25, cell.q75, cell.n_runs) == (1.0, 0.89, 1.05, 1)
    assert acc[(acc.row == ll) & (acc.k == 3)].iloc[0].value == 0.91
    assert "zero" not in set(long.metric)  # every value undefined (baseline 0): no table
    md = (paper_sweep / "paper_table.md").read_text()
    assert "## smollm2 | qa_countries | alpha=-1 | concept accuracy (normalised)" in md
    assert "| row | k=3 (1.1%) | k=5 (1.9%) |" in md
    assert f"| {somp} | 0.83 | 0.67 |" in md and f"| {ll} | 0.91 | 0.79 |" in md
    assert f"| {rand} | 1.02 [0.94, 1.13] | 1.00 [0.89, 1.05] |" in md
    lines = [x for x in md.splitlines() if x.startswith("| SOMP") or x.startswith("| LL") or x.startswith("| Rand")]
    assert [x.split(" | ")[0][2:] for x in lines] == [somp, ll, rand]  # SOMP, LL, then Rand.


def test_paper_table_labels_runs_that_differ(tmp_path):
    """Ours (concept_share at answer_concept) beside the paper's SOMP: the rows say which is which."""
    root = tmp_path / "both"
    _paper_run(root / "0", "concept_restricted", 3, 0.8, (1.0, 0.9, 1.1))
    _paper_run(
        root / "1", "concept_share", 3, 0.1, (0.95, 0.9, 1.0), preset="concept_share", positions="answer_concept"
    )
    _paper_run(root / "2", "concept_restricted", 3, 0.6, preset="concept_restricted")
    A.aggregate(root, plots=False)
    rows = set(pd.read_csv(root / "paper_table.csv").row)
    # concept_restricted ran with two presets: the paper's scoring and the plain method
    assert rows == {
        "SOMP (paper's scoring: concept_restricted)",
        "SOMP (concept_restricted)",
        "SOMP (concept_share)",
        "Rand. median [q25, q75] (paper's scoring: concept_restricted, pool=layer_counts)",
        "Rand. median [q25, q75] (concept_share, pool=layer_counts)",
    }


def test_no_paper_table_without_normalized(sweep, tmp_path):
    # results.json written before the normalised section existed: the other tables as before
    A.aggregate(sweep, tmp_path / "o", plots=False)
    assert not (tmp_path / "o" / "paper_table.md").exists() and (tmp_path / "o" / "k_alpha.md").exists()


def test_paper_table_keeps_classification_datasets_apart(tmp_path):
    """Table 9 runs: one task (classification), one table per dataset, never averaged together;
    transfer runs (heads from another dataset) stay out of the paper table."""
    root = tmp_path / "tab9"
    for i, norm in enumerate([0.12, 0.17]):
        _paper_run(root / str(i), "concept_restricted", 3, norm, (0.99, 0.9, 1.1))
    _paper_run(root / "2", "concept_restricted", 3, 0.5)  # a transfer run: svhn heads on mnist
    for i, dataset in enumerate(["mnist", "svhn", "mnist"]):
        p = root / str(i) / "results.json"
        res = read_json(p)
        res.update(
            task="classification", dataset=dataset, transfer={"source": "svhn", "target": "mnist"} if i == 2 else None
        )
        write_json_atomic(p, res)
    df = A.aggregate(root, plots=False)
    assert sorted(df["dataset"]) == ["mnist", "mnist", "svhn"]
    assert df["rank_dataset"].tolist().count("svhn") == 1
    long = pd.read_csv(root / "paper_table.csv")
    somp = long[long.row == "SOMP (paper's scoring: concept_restricted)"].set_index("dataset")["value"]
    assert somp.to_dict() == {"mnist": 0.12, "svhn": 0.17}  # not (0.12 + 0.17 + 0.5) / 3
    md = (root / "paper_table.md").read_text()
    assert "## smollm2 | classification mnist | alpha=-1 | concept accuracy (normalised)" in md
    assert "## smollm2 | classification svhn | alpha=-1" in md


def test_heatmap_legend_says_what_the_red_boxes_are():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from headpursuit.app import plots

    table = pd.DataFrame({"layer": [0, 0, 1, 2], "head": [0, 1, 3, 2], "score": [0.1, 0.9, 0.5, 0.3]})
    fig = plots.score_heatmap_figure(table, 3, 4, highlight=[(0, 1), (2, 2)])
    try:
        ax = fig.axes[0]
        boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert sorted(b.get_xy() for b in boxes) == [(0.5, -0.5), (1.5, 1.5)]  # (head - 0.5, layer - 0.5)
        legend = ax.get_legend()
        assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["edited heads (k=2)"]
        (handle,) = legend.legend_handles
        assert handle.get_edgecolor() == boxes[0].get_edgecolor() and not handle.get_fill()
    finally:
        plt.close(fig)
    plain = plots.score_heatmap_figure(table, 3, 4)
    assert plain.axes[0].get_legend() is None  # nothing outlined, nothing to explain
    plt.close(plain)


def test_runs_without_a_dataset_show_no_nan_and_the_paper_preset_has_its_own_label(tmp_path, monkeypatch):
    """A QA sweep has no dataset and no rank dataset: no `dataset=nan` in table titles, plot titles
    or file names. ranking=paper and ranking=concept_restricted (one method, two presets) are two
    settings, each named, never averaged together."""
    from headpursuit.app import plots

    root = tmp_path / "qa"
    for i, (k, preset, acc) in enumerate([(1, "paper", 0.2), (3, "paper", 0.1), (1, None, 0.6), (3, None, 0.5)]):
        _fake_run(root / str(i), k, -1.0, acc, ranking="concept_restricted")
        if preset:
            p = root / str(i) / "results.json"
            write_json_atomic(p, {**read_json(p), "run": {"choices": {"ranking": preset}}})
    titles: list[str] = []
    for name in ("score_heatmap", "metric_vs_k"):
        real = getattr(plots, name)

        def spy(*a, _real=real, **kw):
            titles.append(kw["title"])
            return _real(*a, **kw)

        monkeypatch.setattr(plots, name, spy)
    A.aggregate(root)
    paper = "paper's scoring: concept_restricted"
    files = [p.name for p in (root / "plots").glob("*.png")]
    shown = "\n".join(
        [
            *files,
            *titles,
            (root / "k_alpha.md").read_text(),
            (root / "k_alpha_normalized.md").read_text() if (root / "k_alpha_normalized.md").exists() else "",
        ]
    )
    assert "nan" not in shown.lower(), shown
    assert (
        "## concept accuracy (model=smollm2, task=qa_countries, ranking=concept_restricted, heads_mode=ranked)" in shown
    )
    assert f"## concept accuracy (model=smollm2, task=qa_countries, ranking={paper}, heads_mode=ranked)" in shown
    assert "metric_vs_k__smollm2__qa_countries__concept_restricted__ranked__concept.accuracy.png" in files
    assert "heatmap__smollm2__qa_countries__paper-s-scoring-concept_restricted.png" in files
    assert f"smollm2 | qa_countries | {paper} | ranked" in titles
    t = pd.read_csv(root / "k_alpha.csv")
    acc = t[(t.group == "concept") & (t.metric == "accuracy")].set_index(["ranking", "k"])["alpha=-1"]
    assert acc.to_dict() == {
        (paper, 1): 0.2,
        (paper, 3): 0.1,
        ("concept_restricted", 1): 0.6,
        ("concept_restricted", 3): 0.5,
    }


def test_relaxed_random_sets_are_marked(tmp_path):
    """(Plain ranking=concept_restricted runs, so rows are named by the method.) A run whose layer_counts sets borrowed heads: its random cells carry `*` and the table a
    footnote; runs.csv, vs_random and methods say which layers; the other cells stay unmarked."""
    root = tmp_path / "relaxed"
    borrowed = {"0": {"short": 1, "n_sets": 10, "from": {"1": 10}}, "7": {"short": 2, "n_sets": 10, "from": {"6": 20}}}
    _paper_run(root / "0", "concept_restricted", 3, 0.83, (1.02, 0.94, 1.13), relaxed={}, preset="concept_restricted")
    _paper_run(
        root / "1", "concept_restricted", 5, 0.67, (1.0, 0.89, 1.05), relaxed=borrowed, preset="concept_restricted"
    )
    _paper_run(root / "2", "logit_lens_mean", 3, 0.91, (0.99, 0.9, 1.1), relaxed=borrowed)
    _paper_run(root / "3", "logit_lens_mean", 5, 0.79, (0.98, 0.9, 1.1))  # results.json from before
    df = A.aggregate(root, plots=False).set_index(["ranking", "k"])
    assert df.loc[("concept_restricted", 5), "random_relaxed"] == "0:1 7:2"
    assert df.loc[("concept_restricted", 3), "random_relaxed"] == ""
    assert df.loc[("logit_lens_mean", 5), "random_relaxed"] == ""
    md = (root / "paper_table.md").read_text()
    rand = "Rand. median [q25, q75] (concept_restricted, pool=layer_counts)"
    assert f"| {rand} | 1.02 [0.94, 1.13] | 1.00 [0.89, 1.05]* |" in md
    assert "| SOMP (concept_restricted) | 0.83 | 0.67 |" in md  # edited cells are never marked
    table = md[md.index("concept accuracy (normalised)") :]
    assert table.count(A.RELAXED_NOTE) == 1 and A.RELAXED_NOTE.startswith("\\* random sets relaxed")
    long = pd.read_csv(root / "paper_table.csv")
    marked = long[long.relaxed]
    assert marked[["row", "k"]].values.tolist() == [[rand, 5]]
    vr = pd.read_csv(root / "vs_random.csv", keep_default_na=False)
    got = vr[vr.metric == "accuracy"].set_index(["ranking", "k"])["random_relaxed"].to_dict()
    assert got == {
        ("concept_restricted", 3): "",
        ("concept_restricted", 5): "0:1 7:2",
        ("logit_lens_mean", 3): "0:1 7:2",
        ("logit_lens_mean", 5): "",
    }
    mt = pd.read_csv(root / "methods.csv").set_index(["k", "metric"])
    # each k has one run with relaxed sets among its methods
    assert mt.loc[(3, "accuracy"), "random_relaxed"].item() is True
    assert mt.loc[(5, "accuracy"), "random_relaxed"].item() is True


def test_no_relaxed_note_without_relaxed_sets(paper_sweep):
    A.aggregate(paper_sweep, plots=False)
    md = (paper_sweep / "paper_table.md").read_text()
    assert A.RELAXED_NOTE not in md and "]*" not in md
    assert not pd.read_csv(paper_sweep / "paper_table.csv").relaxed.any()
    assert not pd.read_csv(paper_sweep / "methods.csv").random_relaxed.any()
