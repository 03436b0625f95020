"""The Hydra app end to end (subprocesses, as a user runs it) and the pipeline helpers.

The sweeps run the embedded SmolLM2 with tiny settings (`experiment=smoke`: 6 ranking questions,
4 evaluation questions per group, 8 new tokens, 2 random seeds).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from devices import CPU_OVERRIDES

from headpursuit.app.cache import RunCache
from headpursuit.app.config import ConfigError, resolve_k, validate_config
from headpursuit.app.record import summarize_seeds
from headpursuit.app.results import RESULTS_VERSION, RunRecord, completed_results, write_record
from headpursuit.app.tracking import to_jsonable, write_json_atomic
from headpursuit.heads import check_heads, parse_heads, random_control_draw, random_heads, select_heads

REPO = Path(__file__).resolve().parents[1]
# On the CPU (tests/devices.py): the sweeps compare results.json across launchers and reruns.
SWEEP = ["experiment=smoke", "intervention.k=2,4", "intervention.alpha=-1,0", "logger=none", *CPU_OVERRIDES]


def run_cli(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
        # Same thread count in every process, so parallel (submitit) and sequential jobs compute
        # the same floating-point sums.
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout
    )


def run_job(run_dir: Path, cache: Path, *overrides: str, experiment: str = "smoke") -> dict:
    """One offline `python -m headpursuit` job into `run_dir` on the CPU in float32 (tests/devices.py;
    no W&B unless an override sets the logger); asserts it exited 0 and returns its results.json."""
    logger = [] if any(o.startswith("logger") for o in overrides) else ["logger=none"]
    proc = run_cli(
        "headpursuit",
        f"experiment={experiment}",
        *CPU_OVERRIDES,
        *overrides,
        *logger,
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((run_dir / "results.json").read_text())


def read_record(path: Path) -> RunRecord:
    """results.json read through the record type, checked to hold every key of the file: nothing
    the job wrote is lost to a reader (NaN read back is written as null again)."""
    rec = RunRecord.read(path)
    assert rec is not None, f"no readable {path}"
    assert to_jsonable(rec.to_json()) == json.loads(path.read_text())
    return rec


def run_record(run_dir: Path, cache: Path, *overrides: str, experiment: str = "smoke") -> RunRecord:
    """`run_job`, its results.json read through the record type (`read_record`)."""
    run_job(run_dir, cache, *overrides, experiment=experiment)
    return read_record(run_dir / "results.json")


def _results(sweep_dir: Path) -> dict[tuple, RunRecord]:
    out = {}
    for p in sorted(sweep_dir.glob("*/results.json")):
        r = read_record(p)
        assert r.outcome is not None, p
        out[(r.outcome.edit.k, r.outcome.edit.alpha)] = r
    return out


def _submitit_logs(sweep_dir: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sweep_dir.glob(".submitit/**/*.err"))


# ------------------------------------------------------------------------------------------
# Sweeps through Hydra
# ------------------------------------------------------------------------------------------


def shared_cache(tmp_path_factory) -> Path:
    """One cache for the test session: runs with the same model/task/ranking reuse each other's work."""
    return tmp_path_factory.getbasetemp() / "headpursuit_cache"


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic")
    sweep, cache = root / "sweep", shared_cache(tmp_path_factory)
    # Other tests share this cache (a worker may run them first, with other settings): the sweep is
    # judged by the entries it adds, not by what the folder holds.
    before = {kind: _entries(cache, kind) for kind in ENTRY_GLOBS}
    t0 = time.perf_counter()
    proc = run_cli("headpursuit", "-m", *SWEEP, f"hydra.sweep.dir={sweep}", f"cache_dir={cache}")
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"basic 2x2 sweep: {seconds:.1f}s")
    return sweep, cache, before


ENTRY_GLOBS = {"acts": "*.safetensors", "scores": "*.pkl", "samples": "*.pkl"}


def _entries(cache: Path, kind: str) -> set[str]:
    return {p.name for p in (cache / kind).glob(ENTRY_GLOBS[kind])}


@pytest.mark.slow
def test_sweep_extracts_and_ranks_once(basic_sweep):
    sweep, cache, before = basic_sweep
    res = _results(sweep)
    assert sorted(res) == [(2, -1.0), (2, 0.0), (4, -1.0), (4, 0.0)]
    assert all(r.status == "complete" and r.results_version == RESULTS_VERSION for r in res.values())
    out = {key: r.outcome for key, r in res.items()}
    # One activation file, one score table, one set of ranking answers for the whole sweep.
    # At most one new entry of each kind, and one in all that the jobs used (an earlier test on this
    # worker may have made it already).
    added = {kind: _entries(cache, kind) - before[kind] for kind in ENTRY_GLOBS}
    assert all(len(names) <= 1 for names in added.values()), added
    cached_before = not added["acts"]
    # The first job extracts (unless an earlier test made the same entry); the others read.
    hits = [o.provenance.cache.activations_from_cache for o in out.values()]
    assert sorted(hits) == ([True] * 4 if cached_before else [False, True, True, True])
    base_hits = sum(bool(o.provenance.cache.baseline_from_cache) for o in out.values())
    assert base_hits == (4 if cached_before else 3)
    # The k=2 heads are the first two of the k=4 heads, and all runs share the baseline.
    assert out[(4, -1.0)].edit.heads[:2] == out[(2, -1.0)].edit.heads
    assert len({json.dumps(o.baseline.to_json(), sort_keys=True) for o in out.values()}) == 1
    for key, o in out.items():
        for groups in (o.baseline.groups, o.edited.groups, o.random.stats.mean):
            assert 0.0 <= groups["concept"]["accuracy"] <= 1.0
        assert o.random.stats.n_seeds == 2 and len(o.random.per_seed) == 2
        assert "accuracy" in o.random.stats.std["concept"] and "accuracy" in o.random.stats.median["concept"]
        assert o.random.pool == "all"
        assert (Path(res[key].run.dir) / "head_scores.csv").exists()
        assert o.provenance.model.details["quantisation"] and o.provenance.environment["versions"]["torch"]
        assert o.provenance.environment["versions"]["transformers"]
        # The effect's uncertainty: intervals around every value, the headline specificity, p-values.
        iv = o.intervals
        assert iv is not None and iv.n_items == o.baseline.n and iv.n_resamples == 1000
        for part, values in ((iv.baseline, o.baseline.groups), (iv.edited.value, o.edited.groups)):
            bounds, value = part["concept"]["accuracy"], values["concept"]["accuracy"]
            assert bounds.lo <= value <= bounds.hi
        assert len(iv.random) == 2 and [r.seed for r in iv.random] == [r.seed for r in o.random.per_seed]
        assert o.specificity is not None and o.specificity.metric == "accuracy"
        assert o.significance is not None and o.significance.direction == ("lower" if key[1] < 1 else "higher")
        p = o.significance.p["concept"]["accuracy"]
        assert p in {1 / 3, 2 / 3, 1.0}  # rank / (1 + 2 random sets)


@pytest.mark.slow
def test_layer_matched_random_controls(basic_sweep, tmp_path):
    _, cache, _ = basic_sweep  # ranking and baseline come from the shared cache
    r = run_record(
        tmp_path / "run", cache, "intervention.k=3", "intervention.alpha=-1", "intervention.random_pool=same_layers"
    ).outcome
    edited = set(r.edit.pairs)
    assert r.random.pool == "same_layers" and len(r.random.per_seed) == 2
    for draw in r.random.per_seed:
        heads = set(draw.heads)
        assert len(heads) == 3 and not heads & edited
        assert {a for a, _ in heads} <= {a for a, _ in edited}


@pytest.mark.slow
def test_sweep_aggregates(basic_sweep, tmp_path):
    from headpursuit.app.aggregate import aggregate

    sweep, _, _ = basic_sweep
    df = aggregate(sweep, tmp_path)
    assert len(df) == 4 and set(df["k"]) == {2, 4} and set(df["alpha"]) == {-1.0, 0.0}
    assert {
        "edited.concept.accuracy",
        "random.concept.accuracy",
        "random.std.concept.accuracy",
        "baseline.control.accuracy",
    } <= set(df.columns)
    md = (tmp_path / "k_alpha.md").read_text()
    assert "alpha=-1" in md and "alpha=0" in md and "| 2 |" in md and "| 4 |" in md
    assert (tmp_path / "vs_random.csv").exists()
    # Intervals and p-values in the tables: k_alpha.md cells read "value [lo, hi]", effects.md per run.
    assert re.search(r"\| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", md)
    assert {"ci.delta.lo.concept.accuracy", "p.concept.accuracy", "specificity.accuracy"} <= set(df.columns)
    effects = (tmp_path / "effects.md").read_text()
    assert effects.count("| accuracy |") == 4 and "specificity p" in effects
    assert list((tmp_path / "plots").glob("heatmap__*.png"))
    assert list((tmp_path / "plots").glob("metric_vs_k__*concept.accuracy.png"))


@pytest.mark.slow
def test_sweep_resume_skips_complete_runs(basic_sweep):
    sweep, cache, _ = basic_sweep
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    # A half-written temp file from an interrupted write lies next to a complete result.
    (sweep / "0" / ".results.json.tmp12345").write_text('{"status": "comp')
    t0 = time.perf_counter()
    proc = run_cli("headpursuit", "-m", *SWEEP, f"hydra.sweep.dir={sweep}", f"cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("skipping") + proc.stdout.count("skipping") == 4
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")} == before
    assert time.perf_counter() - t0 < 120  # no model load, no generation


@pytest.mark.slow
def test_submitit_local_sweep_matches_basic(basic_sweep, tmp_path):
    sweep, _, _ = basic_sweep
    sub_sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    t0 = time.perf_counter()
    proc = run_cli(
        "headpursuit",
        "-m",
        *SWEEP,
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sub_sweep}",
        f"cache_dir={cache}",
    )
    print(f"submitit_local 2x2 sweep: {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-3000:] + _submitit_logs(sub_sweep)
    a, b = _results(sweep), _results(sub_sweep)
    assert sorted(a) == sorted(b) and len(b) == 4, _submitit_logs(sub_sweep)
    for key in a:
        assert b[key].status == "complete"
        ours, theirs = b[key].outcome, a[key].outcome
        assert ours.edit.heads == theirs.edit.heads
        for g in ("concept", "control"):
            assert ours.baseline.groups[g] == theirs.baseline.groups[g], (key, "baseline", g)
            assert ours.edited.groups[g] == theirs.edited.groups[g], (key, "edited", g)
        assert ours.random.stats.mean["concept"] == theirs.random.stats.mean["concept"]
    # Parallel jobs still extract once: the others wait on the cache lock, then read.
    assert len(list((cache / "acts").glob("*.safetensors"))) == 1
    hits = sorted(r.outcome.provenance.cache.activations_from_cache for r in b.values())
    assert hits == [False, True, True, True]


# ------------------------------------------------------------------------------------------
# Configuration errors fail fast, naming the key
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key, composed",
    [
        ("task=no_such_task", "no_such_task", True),
        ("model=no_such_model", "no_such_model", True),
        ("intervention.kk=3", "intervention.kk", True),  # a typo: not a key of the schema
        ("intervention.k=abc", "intervention.k", True),  # the wrong type
        ("intervention.alpha=abc", "intervention.alpha", True),
        ("intervention.k=100000", "intervention.k", False),  # more heads than the model declares
        ("intervention.k_frac=1.5", "intervention.k_frac", False),
        ("ranking.k=50", "ranking.somp_steps", False),  # the renamed key names the new one
    ],
)
def test_config_errors_fail_before_the_model_loads(override, key, composed, tmp_path):
    """A typo or a wrong type fails at composition (Hydra/OmegaConf against the schema): nothing
    runs, nothing is written. A value the schema's types allow but the run cannot use fails in
    `validate_config`: results.json says failed, naming the key. Neither reaches the model load."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "headpursuit", override, "logger=none", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert key in proc.stderr, out[-2000:]
    assert "stage load_model" not in out and "stage preflight" not in out, out[-2000:]
    if composed:
        assert not (run_dir / "results.json").exists()
    else:
        res = read_record(run_dir / "results.json")
        assert res.status == "failed" and key in res.error.message and res.outcome is None
        assert (run_dir / "error.txt").exists()


# ------------------------------------------------------------------------------------------
# Helpers (no model)
# ------------------------------------------------------------------------------------------


def _cfg(**iv):
    return {
        "model": {"name_or_path": "smollm2", "n_layers": 30, "n_heads": 9},
        "task": {"name": "qa_countries", "positions": "answer_concept"},
        "ranking": {"method": "concept_share", "somp_steps": 10},
        "intervention": {
            "k": 6,
            "k_frac": None,
            "alpha": -1.0,
            "heads": "ranked",
            "explicit": [],
            "random_seeds": [0, 1],
            **iv,
        },
        "logger": {"backend": "none", "mode": "disabled"},
        "seed": 0,
    }


def test_validate_config_names_the_key():
    validate_config(_cfg())
    for iv, key in [
        ({"alpha": "abc"}, "intervention.alpha"),
        ({"alpha": True}, "intervention.alpha"),
        ({"k": 271}, "intervention.k"),
        ({"k": 0}, "intervention.k"),
        ({"k_frac": 0.0}, "intervention.k_frac"),
        ({"k_frac": 2}, "intervention.k_frac"),
        ({"heads": "best"}, "intervention.heads"),
        ({"heads": "explicit", "explicit": []}, "intervention.explicit"),
        ({"heads": "explicit", "explicit": ["x"]}, "intervention.explicit"),
        ({"random_seeds": ["a"]}, "intervention.random_seeds"),
        ({"random_pool": "nearby"}, "intervention.random_pool"),
        ({"random_strict": "sometimes"}, "intervention.random_strict"),  # a bool ("yes", 1: true, as in YAML)
        ({"kk": 3}, "intervention.kk"),  # not a key of the schema
        ({"k": "abc"}, "intervention.k"),  # not an integer
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config(_cfg(**iv))
    bad = _cfg()
    bad["task"]["name"] = "nope"
    with pytest.raises(ConfigError, match="task.name"):
        validate_config(bad)
    bad = _cfg()
    bad["ranking"]["method"] = "nope"
    with pytest.raises(ConfigError, match="ranking.method"):
        validate_config(bad)


def test_resolve_k_fraction_and_bounds():
    from headpursuit.app.schema import InterventionConfig as IV

    assert resolve_k(IV(k=6), 270) == 6
    assert resolve_k(IV(k=6, k_frac=0.01), 270) == 3  # round(2.7)
    assert resolve_k(IV(k=6, k_frac=0.001), 270) == 1  # at least one head
    assert resolve_k(IV(k=6, k_frac=1.0), 270) == 270
    assert resolve_k(IV(heads="explicit", explicit=[[0, 1], "2.3"]), 270) == 2
    with pytest.raises(ConfigError, match="larger than the number of heads"):
        resolve_k(IV(k=271), 270)


def test_head_selection():
    a = random_heads(30, 9, 6, seed=0)
    assert a == random_heads(30, 9, 6, seed=0) and a != random_heads(30, 9, 6, seed=1)
    assert len(set(a)) == 6 and a == sorted(a)
    assert parse_heads([[1, 2], "3.4", "5:6"]) == [(1, 2), (3, 4), (5, 6)]
    with pytest.raises(ConfigError):
        check_heads([(30, 0)], 30, 9)

    class Scores:
        def top(self, k):
            return [(5, 1), (7, 2), (0, 0)][:k]

    assert select_heads(Scores(), "ranked", 2, 30, 9) == [(5, 1), (7, 2)]
    assert select_heads(None, "random", 6, 30, 9, seed=0) == a
    assert select_heads(None, "explicit", 1, 30, 9, explicit=["1.1"]) == [(1, 1)]


def test_summarize_seeds_mean_std():
    per_seed = [
        {"concept": {"accuracy": 0.5, "x": float("nan")}, "control": {"accuracy": 1.0}, "n": {}},
        {"concept": {"accuracy": 1.0, "x": float("nan")}, "control": {"accuracy": 1.0}, "n": {}},
    ]
    s = summarize_seeds(per_seed)
    assert s["concept"]["accuracy"] == 0.75 and s["control"]["accuracy"] == 1.0
    assert math.isclose(s["std"]["concept"]["accuracy"], math.sqrt(0.125))
    assert math.isnan(s["concept"]["x"]) and s["n_seeds"] == 2
    one = summarize_seeds(per_seed[:1])  # the sample std of one seed is undefined (issue 14)
    assert math.isnan(one["std"]["concept"]["accuracy"]) and "undefined" in one["std_note"]


def test_summarize_seeds_median_resists_one_collapsed_draw():
    accs = [0.6, 0.65, 0.0, 0.7, 0.55]  # one draw hit a load-bearing head
    s = summarize_seeds([{"concept": {"accuracy": a}} for a in accs])
    assert s["median"]["concept"]["accuracy"] == 0.6
    assert math.isclose(s["concept"]["accuracy"], sum(accs) / 5)


def test_random_control_pools():
    edited = [(15, 3), (26, 1), (29, 2)]
    for seed in range(20):
        draw = random_control_draw(edited, 30, 9, 3, seed, pool="same_layers")
        hs = draw.heads
        assert draw.seed == seed and draw.borrowed == {}
        assert len(set(hs)) == 3 and hs == sorted(hs)
        assert {a for a, _ in hs} <= {15, 26, 29} and not set(hs) & set(edited)
    # the default pool is the plain uniform draw (earlier sweeps' random heads are unchanged)
    assert random_control_draw(edited, 30, 9, 6, 0).heads == random_heads(30, 9, 6, 0)
    assert random_control_draw(edited, 30, 9, 6, 4, pool="all").heads == random_heads(30, 9, 6, 4)
    with pytest.raises(ConfigError, match="same_layers"):
        random_control_draw([(0, 0), (0, 1)], 30, 9, 8, 0, pool="same_layers")  # 7 heads left in layer 0


def test_run_cache_computes_once(tmp_path):
    cache = RunCache(tmp_path)
    calls = []
    v, hit = cache.get_or_compute("evals", "k1", lambda: calls.append(1) or {"a": float("nan"), "b": 1})
    v2, hit2 = cache.get_or_compute("evals", "k1", lambda: calls.append(1) or {"a": 0})
    assert (hit, hit2, len(calls)) == (False, True, 1)
    assert v2["b"] == 1 and math.isnan(v2["a"])  # NaN survives the cache
    (tmp_path / "evals" / "k2.json").write_text("{broken")  # unreadable entries are recomputed
    v3, hit3 = cache.get_or_compute("evals", "k2", lambda: {"c": 3})
    assert (v3, hit3) == ({"c": 3}, False)
    off = RunCache(None)
    assert off.get_or_compute("evals", "k1", lambda: 7) == (7, False)


def test_completed_results_needs_same_config(tmp_path):
    write_record(tmp_path, RunRecord(status="complete", config_hash="abc"))
    done = completed_results(tmp_path, "abc")
    assert done is not None and (done.status, done.config_hash) == ("complete", "abc")
    assert completed_results(tmp_path, "other") is None
    write_record(tmp_path, RunRecord(status="failed", config_hash="abc"))
    assert completed_results(tmp_path, "abc") is None
    write_json_atomic(tmp_path / "results.json", {"status": "complete", "config_hash": "abc"})  # version 1
    assert completed_results(tmp_path, "abc") is not None
    (tmp_path / "results.json").write_text('{"status": "complete", "config_ha')  # truncated
    assert completed_results(tmp_path, "abc") is None


def test_failed_job_is_recorded_and_sweep_goes_on(tmp_path):
    """A runtime failure (here: a missing data file) writes error.txt + status=failed; the sweep goes
    on (exit 0) unless fail_fast=true, which raises and makes the remaining jobs skip themselves."""
    bad = [
        "experiment=smoke",
        "task.source=jsonl",
        "logger=none",
        f"cache_dir={tmp_path / 'cache'}",
        f"task.data_path={tmp_path / 'missing1.jsonl'},{tmp_path / 'missing2.jsonl'}",
    ]
    proc = run_cli("headpursuit", "-m", *bad, f"hydra.sweep.dir={tmp_path / 'a'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        res = read_record(tmp_path / "a" / job / "results.json")
        assert res.status == "failed" and "missing" in res.error.message
        assert "Traceback" in (tmp_path / "a" / job / "error.txt").read_text()
    proc = run_cli("headpursuit", "-m", *bad, "fail_fast=true", f"hydra.sweep.dir={tmp_path / 'b'}")
    assert proc.returncode != 0
    second = read_record(tmp_path / "b" / "1" / "results.json")
    assert second.status == "failed" and "fail_fast" in second.error.message


# ------------------------------------------------------------------------------------------
# Empty outputs (issue 19): counted with each evaluation, flagged in results.json and the log
# ------------------------------------------------------------------------------------------


def test_empty_outputs_counts_every_generation():
    from headpursuit.tasks import GroupOutputs, TaskOutputs
    from headpursuit.tasks.base import empty_outputs

    texts = {"concept": [["Paris", " "], ["", "\n"]], "control": [["x"], [""], ["  y "]]}
    out = TaskOutputs("t", "eval", "d", {g: GroupOutputs([""] * len(o), [""] * len(o), o) for g, o in texts.items()})
    flat = [t for outs in texts.values() for o in outs for t in o]
    n_empty = len([t for t in flat if t.strip() == ""])  # " ", "", "\n", ""
    assert empty_outputs(out) == {"n_empty": n_empty, "n_outputs": len(flat), "empty_fraction": n_empty / len(flat)}
    assert empty_outputs(TaskOutputs("t", "eval", "d", {})) == {"n_empty": 0, "n_outputs": 0, "empty_fraction": None}


@pytest.mark.parametrize("batched", [False, True])
def test_a_silencing_edit_is_counted_the_same_computed_or_cached(tiny_llama, tmp_path, batched):
    """alpha=1e30 on one head: the tiny model's answers come out empty. The count is part of the
    cached evaluation, so a cache hit reports what the computation did."""
    from headpursuit.app.stages import evaluate_cached, generate_uncached
    from headpursuit.intervention import scale_heads
    from headpursuit.tasks import QAConfig, QATask

    task = QATask(QAConfig(concept=["France", "Japan"], n_rank=1, n_eval=3, max_new_tokens=3), tiny_llama.tokenizer)
    edit, ident = {(0, 0): 1e30}, {"model": "tiny_llama", "task": "qa"}
    with scale_heads(tiny_llama, edit):  # the reference: the edited model's own generations, counted here
        answers = [o for go in task.generate(tiny_llama).groups.values() for outs in go.outputs for o in outs]
    expected = {"n_empty": sum(not a.strip() for a in answers), "n_outputs": len(answers)}
    assert expected["n_empty"] > len(answers) / 2  # the edit silences the model (else this proves little)

    cache = RunCache(tmp_path)
    generated = generate_uncached(cache, tiny_llama, task, ident, [{}, edit], seed=0) if batched else None
    computed = evaluate_cached(cache, tiny_llama, task, ident, edit, label="edited", seed=0, generated=generated)
    cached = evaluate_cached(cache, tiny_llama, task, ident, edit, label="edited", seed=0)
    assert cache.hits["edited"] == [False, True]
    for result in (computed, cached):
        assert {k: result[k] for k in expected} == expected
        assert result["empty_fraction"] == expected["n_empty"] / expected["n_outputs"]
    assert cached == computed
    baseline = evaluate_cached(cache, tiny_llama, task, ident, {}, label="baseline", seed=0, generated=generated)
    assert baseline["empty_fraction"] <= 0.5


def test_run_warnings_name_the_edit_and_the_fraction():
    from headpursuit.app.record import EMPTY_WARNING_FRACTION, run_warnings

    def result(n_empty, n=8):
        return {"n_empty": n_empty, "n_outputs": n, "empty_fraction": n_empty / n}

    heads = [(3, 1), (5, 2)]
    per_seed = [{"seed": 0, "heads": [[0, 4], [7, 7]], **result(8)}, {"seed": 1, "heads": [[2, 2]], **result(4)}]
    warnings = run_warnings(heads, 1e30, result(0), result(7), per_seed)
    assert EMPTY_WARNING_FRACTION == 0.5  # exactly half is not flagged, more is
    assert len(warnings) == 2, warnings
    assert (
        "3.1 5.2" in warnings[0] and "alpha=1e+30" in warnings[0] and "7 of 8" in warnings[0] and "88%" in warnings[0]
    )
    assert "seed 0" in warnings[1] and "0.4 7.7" in warnings[1] and "100%" in warnings[1]
    assert run_warnings(heads, -1.0, result(0), result(4), []) == []
    assert run_warnings(heads, -1.0, {"concept": {}}, {"concept": {}}, []) == []  # no counts: nothing to say
    many = run_warnings([(0, h) for h in range(20)], 0.0, result(0), result(8), [])
    assert "(+12 more)" in many[0]


@pytest.mark.slow
def test_an_edit_that_empties_the_outputs_is_flagged_in_results_and_console(tmp_path):
    """intervention.alpha=1e30 on SmolLM2 (issue 19: every output empty, no word said): results.json
    flags it and the console says so (a cache hit reports the same counts: the tiny-model test above)."""
    overrides = ["intervention.alpha=1e30", "intervention.k=1", "intervention.random_seeds=[0]", "task.n_eval=2"]
    first = run_cli(
        "headpursuit", "experiment=smoke", *overrides, "logger=none",
        f"hydra.run.dir={tmp_path / 'a'}", f"cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    res = read_record(tmp_path / "a" / "results.json").outcome
    assert res.edited.empty_fraction > 0.5 and res.edited.n_outputs == 4
    assert res.baseline.empty_fraction <= 0.5
    heads = " ".join(f"{a}.{b}" for a, b in res.edit.pairs)
    assert any(heads in w and "alpha=1e+30" in w for w in res.warnings), res.warnings
    per_seed = res.random.per_seed
    assert len(res.warnings) == 1 + sum(r.result.empty_fraction > 0.5 for r in per_seed)
    console = first.stdout + first.stderr
    assert any("WARNING" in line and heads in line and "alpha=1e+30" in line for line in console.splitlines()), console
