"""results.json / head_scores.csv writing, resume records, and W&B (offline; failures never fatal)."""

from __future__ import annotations

import json
import math
import os
import warnings

import pandas as pd
import pytest
import wandb_offline

from headpursuit.app import tracking as T
from headpursuit.app.results import RunRecord


def test_atomic_json_write_and_interrupted_write(tmp_path, monkeypatch):
    p = tmp_path / "results.json"
    T.write_json_atomic(p, {"status": "complete", "x": float("nan"), "t": (1, 2)})
    assert json.loads(p.read_text()) == {"status": "complete", "x": None, "t": [1, 2]}
    assert [f.name for f in tmp_path.iterdir()] == ["results.json"]  # no temp file left

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        T.write_json_atomic(p, {"status": "running"})
    monkeypatch.undo()
    # The old, complete file is intact and the temp file is gone.
    assert json.loads(p.read_text())["status"] == "complete"
    assert [f.name for f in tmp_path.iterdir()] == ["results.json"]
    # A half-written temp file (e.g. a killed process) is never read as a result.
    (tmp_path / ".results.json.tmp999").write_text('{"status": "comp')
    assert T.read_json(tmp_path / "results.json")["status"] == "complete"
    assert T.read_json(tmp_path / ".results.json.tmp999") is None


def test_csv_and_error_record(tmp_path):
    df = pd.DataFrame(
        {"layer": [0, 1], "head": [2, 3], "score": [0.5, 0.25], "rank": [1, 2], "top_tokens": [["a", "b"], ["c"]]}
    )
    T.write_csv_atomic(df, tmp_path / "head_scores.csv")
    back = pd.read_csv(tmp_path / "head_scores.csv")
    assert list(back.columns[:4]) == ["layer", "head", "score", "rank"] and len(back) == 2
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        res = T.write_error(tmp_path, exc, RunRecord(status="running", config_hash="h"))
    assert res.status == "failed"
    assert "boom" in (tmp_path / "error.txt").read_text()
    back = RunRecord.read(tmp_path / "results.json")
    assert back is not None and back.error is not None and back.error.message == "boom"
    assert T.completed_results(tmp_path, "h") is None


def test_config_hash_ignores_volatile_keys():
    a = {"model": {"name_or_path": "smollm2"}, "seed": 0, "logger": {"mode": "offline"}, "cache_dir": "/a"}
    b = {**a, "logger": {"mode": "disabled"}, "cache_dir": "/b", "resume": False}
    assert T.config_hash(a) == T.config_hash(b)
    assert T.config_hash(a) != T.config_hash({**a, "seed": 1})


def test_flatten_metrics():
    res = {
        "baseline": {"concept": {"accuracy": 0.8}, "n": {"concept": 4}, "examples": []},
        "edited": {"concept": {"accuracy": 0.1}},
        "random": {
            "concept": {"accuracy": 0.7},
            "std": {"concept": {"accuracy": 0.05}},
            "per_seed": [{"concept": {"accuracy": 0.7}}],
            "n_seeds": 1,
            "relaxed_layers": {"0": {"short": 1, "n_sets": 1, "from": {"1": 1}}},  # a record, not a metric
        },
    }
    flat = T.flatten_metrics(res)
    assert flat == {
        "baseline/concept/accuracy": 0.8,
        "edited/concept/accuracy": 0.1,
        "random/concept/accuracy": 0.7,
        "random/std/concept/accuracy": 0.05,
        "random/n_seeds": 1.0,
    }


def test_tracker_off_and_failing_wandb_never_raise(tmp_path, monkeypatch):
    off = T.Tracker({"backend": "none"}, tmp_path)
    off.start({"a": 1})
    off.log_metrics({"x": 1.0})
    off.finish()
    assert off.status["status"] == "off"

    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("no W&B service")

    monkeypatch.setattr(wandb, "init", broken_init)
    tr = T.Tracker({"backend": "wandb", "mode": "offline"}, tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr.start({"a": 1}, group="g", name="n")
        tr.log_metrics({"x": 1.0})
        tr.log_table("t", pd.DataFrame({"a": [1]}))
        tr.finish()
    assert tr.status["status"] == "failed" and "no W&B service" in tr.status["errors"][0]
    assert any("W&B init failed" in str(x.message) for x in w)


def test_wandb_offline_roundtrip(tmp_path):
    tr = T.Tracker({"backend": "wandb", "mode": "offline", "project": "hp-test"}, tmp_path)
    tr.start({"model": {"name_or_path": "smollm2"}, "seed": 3}, group="sweep-x", name="k=2", job_type="steer")
    assert tr.status["status"] == "ok", tr.status
    tr.log_metrics({"edited/concept/accuracy": 0.25, "baseline/concept/accuracy": 0.75, "bad": float("nan")})
    tr.log_table("head_scores", pd.DataFrame({"layer": [0], "head": [1], "score": [0.3], "top_tokens": [["France"]]}))
    tr.finish()
    run = wandb_offline.wait_for_wandb_run(tmp_path, "edited/concept/accuracy")
    assert run["summary"]["edited/concept/accuracy"] == 0.25
    assert run["summary"]["baseline/concept/accuracy"] == 0.75
    assert run["run_id"] == tr.status["run_id"]
    assert "head_scores/_type" in run["summary"] or any("head_scores" in k for k in run["summary"])


@pytest.mark.slow
def test_cli_run_logs_to_wandb_offline(tmp_path, tmp_path_factory):
    from test_pipeline import run_job, shared_cache

    run_dir = tmp_path / "run"
    res = run_job(
        run_dir,
        shared_cache(tmp_path_factory),
        "logger=wandb",
        "logger.mode=offline",
        "intervention.random_seeds=[0]",
        "intervention.k=2",
        "plots=true",
    )
    assert res["status"] == "complete" and res["tracking"]["status"] == "ok", res.get("tracking")
    assert (run_dir / "head_scores_heatmap.png").exists()
    logged = wandb_offline.read_wandb_run(run_dir)
    for key, value in T.flatten_metrics(res).items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        assert logged["summary"][key] == pytest.approx(value), key
    assert logged["config"]["intervention"]["k"] == 2  # the resolved Hydra config
    assert logged["config"]["model"]["name_or_path"] == "smollm2"
    assert res["tracking"]["run_name"] and "intervention.k=2" in res["tracking"]["run_name"]


def test_flatten_metrics_includes_normalized():
    res = {
        "edited": {"concept": {"accuracy": 0.1}},
        "normalized": {
            "edited": {"concept": {"accuracy": 0.125, "zero": None}},
            "random": {"median": {"concept": {"accuracy": 0.9}}, "q25": {"concept": {"accuracy": 0.8}}, "n_seeds": 2},
        },
    }
    flat = T.flatten_metrics(res)
    assert flat["normalized/edited/concept/accuracy"] == 0.125
    assert flat["normalized/random/median/concept/accuracy"] == 0.9
    assert flat["normalized/random/q25/concept/accuracy"] == 0.8
    assert "normalized/edited/concept/zero" not in flat  # null (baseline 0) is not logged
    assert "normalized" in T.RESULT_SECTIONS


def test_flatten_metrics_logs_interval_bounds_and_p_values():
    """W&B gets every interval bound, specificity and p-value; per-item values and lists stay out."""
    from headpursuit.app.results import EffectIntervals, Intervals, Significance
    from headpursuit.stats import Interval

    iv = Intervals(
        level=0.95,
        n_resamples=10,
        seed=0,
        n_items={"concept": 3},
        edited=EffectIntervals(
            delta={"concept": {"accuracy": Interval(-0.5, -0.1)}}, specificity={"accuracy": Interval(0.2, 0.9)}
        ),
        random=[EffectIntervals(seed=0)],
    )
    sig = Significance(direction="lower", rank={"concept": {"accuracy": 1}}, p={"concept": {"accuracy": 1 / 11}})
    res = {
        "edited": {"concept": {"accuracy": 0.1}, "items": {"concept": {"accuracy": [0.0, 1.0, 0.0]}}},
        "intervals": iv.to_json(),
        "significance": sig.to_json(),
    }
    flat = T.flatten_metrics(res)
    assert flat["intervals/edited/delta/concept/accuracy/lo"] == -0.5
    assert flat["intervals/edited/specificity/accuracy/hi"] == 0.9
    assert flat["significance/p/concept/accuracy"] == pytest.approx(1 / 11)
    assert not any(key.startswith("edited/items") for key in flat) and flat["intervals/n_items/concept"] == 3
