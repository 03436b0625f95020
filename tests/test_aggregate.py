"""aggregate: results.json files -> DataFrame, paper-style tables (CSV/Markdown) and plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from headpursuit.app import aggregate as A
from headpursuit.app.tracking import write_json_atomic

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
