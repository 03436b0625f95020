"""The results record (results.json) as one type: built by `record`, written by `write_record`,
read back by `RunRecord.read` (and so by aggregate, overlap and the resume check), version 1 files
included (issue 20)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from headpursuit.app import aggregate as A
from headpursuit.app import overlap as O
from headpursuit.app import tracking
from headpursuit.app.cache import RunCache
from headpursuit.app.record import record
from headpursuit.app.results import (
    ERROR_FILE,
    RESULTS_FILE,
    RESULTS_VERSION,
    Borrowed,
    CacheProvenance,
    Edit,
    EditedHead,
    ErrorInfo,
    Evaluation,
    HeartbeatInfo,
    ModelProvenance,
    Normalized,
    Outcome,
    Provenance,
    RandomControl,
    RandomControls,
    ResultsError,
    RunInfo,
    RunRecord,
    SeedStats,
    Transfer,
    completed_results,
    config_hash,
    write_error,
    write_record,
)
from headpursuit.heads import ControlDraw
from headpursuit.ranking import HeadScores
from headpursuit.tasks import build_task

DATA = Path(__file__).resolve().parent / "data"
#: results.json of `make run` on main at 56e44c7 (before the empty-output counts, the warnings and
#: the random sets' borrowed heads were recorded) and at 99accc8 (the last version-1 layout)
V1_FILES = [DATA / "results_v1_56e44c7.json", DATA / "results_v1_99accc8.json"]


def same(a, b) -> bool:
    """Equal values of the record, field by field, with NaN equal to NaN (an undefined metric read
    back is as undefined as the one written) and the types equal too (a tuple stays a tuple)."""
    if dataclasses.is_dataclass(a):
        fields = dataclasses.fields(a)
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_same_sees_a_difference():
    rec = RunRecord(status="complete", outcome=Outcome(edited=Evaluation(groups={"c": {"a": float("nan")}})))
    assert same(rec, dataclasses.replace(rec))
    assert not same(rec, dataclasses.replace(rec, outcome=Outcome(edited=Evaluation(groups={"c": {"a": 0.5}}))))
    assert not same(RandomControl(0, [(1, 2)], Evaluation()), RandomControl(0, [[1, 2]], Evaluation()))  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------
# Round trip: built -> written -> read gives the same typed values
# ------------------------------------------------------------------------------------------


def full_record() -> RunRecord:
    """A record with every part filled in, an undefined metric (NaN) and borrowed heads."""
    groups = {"concept": {"accuracy": 0.5, "zero": float("nan")}, "control": {"accuracy": 1.0}}
    stats = SeedStats(
        mean=groups,
        std={"concept": {"accuracy": 0.1, "zero": float("nan")}},
        median=groups,
        q25=groups,
        q75=groups,
        n_seeds=2,
    )
    evaluation = Evaluation(
        groups=groups,
        n={"concept": 4, "control": 4},
        examples=[{"prompt": "Osaka is in which country?", "output": "Japan", "group": "concept"}],
        n_empty=1,
        n_outputs=8,
        empty_fraction=0.125,
        extra={"scorer": "profanity_check", "fluency_info": {"computed": False}},
    )
    borrowed = {0: Borrowed(short=1, sources={1: 1})}
    return RunRecord(
        status="complete",
        config_hash="abc",
        config={"seed": 0, "intervention": {"k": 2, "alpha": -1.0, "random_pool": "layer_counts"}},
        run=RunInfo(dir="/runs/0", mode="multirun", job_num=0, overrides=["intervention.k=2"], choices={"task": "qa"}),
        heartbeat=HeartbeatInfo(file=".heartbeat", interval_s=30.0, pid=12, host="node"),
        outcome=Outcome(
            model="smollm2",
            task="classification",
            dataset="mnist",
            transfer=Transfer(source="svhn", target="mnist"),
            ranking="concept_restricted",
            edit=Edit(
                k=2,
                k_frac=None,
                alpha=-1.0,
                heads_mode="ranked",
                n_heads_total=270,
                heads=[EditedHead(0, 1, score=0.25, rank=1), EditedHead(3, 2)],
            ),
            baseline=evaluation,
            edited=evaluation,
            random=RandomControls(
                stats=stats,
                seeds=[0, 1],
                pool="layer_counts",
                relaxed_layers={0: Borrowed(short=1, sources={1: 2}, n_sets=2)},
                per_seed=[RandomControl(s, [(1, 0), (1, 3)], evaluation, relaxed=borrowed) for s in (0, 1)],
            ),
            normalized=Normalized(edited=groups, random=dataclasses.replace(stats, std_note=None)),
            warnings=["the edited heads 0.1 3.2 x alpha=-1: 7 of 8 outputs (88%) are empty"],
            provenance=Provenance(
                model=ModelProvenance(
                    details={"name": "smollm2", "quantisation": None, "notes": []},
                    layout={"n_layers": 30, "n_heads": 9},
                    loaded_in_process=False,
                ),
                task={"task": "classification", "data": {"path": "/x"}},
                rank_task={"task": "classification", "dataset": "svhn"},
                environment={"python": "3.11", "versions": {"torch": "2"}},
                seeds={"seed": 0, "random_heads": [0, 1]},
                code_fingerprint="f00",
                n_ranking_samples=4,
                n_activation_rows=5,
                cache=CacheProvenance(dir="/c", activations_from_cache=True, random_from_cache=[False, True]),
                timings={"rank": 1.5},
                batch_sizes={"task": 16, "capture": 8},
                batched_edits=True,
            ),
        ),
        tracking={"backend": "none", "mode": "disabled", "status": "off"},
        error=ErrorInfo(type="RuntimeError", message="boom", file=ERROR_FILE, stage="track"),
    )


def test_every_part_round_trips(tmp_path):
    rec = full_record()
    write_record(tmp_path, rec)
    back = RunRecord.read(tmp_path / RESULTS_FILE)
    assert back is not None and same(back, rec)
    # The file: version 2, the outcome and the edit flat at the top level, NaN written as null.
    raw = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert raw["results_version"] == RESULTS_VERSION == 2
    assert (raw["k"], raw["alpha"], raw["model"], raw["transfer"]) == (
        2,
        -1.0,
        "smollm2",
        {"source": "svhn", "target": "mnist"},
    )
    assert raw["heads"] == [{"layer": 0, "head": 1, "score": 0.25, "rank": 1}, {"layer": 3, "head": 2}]
    assert raw["edited"]["concept"] == {"accuracy": 0.5, "zero": None} and raw["edited"]["scorer"] == "profanity_check"
    assert raw["random"]["concept"] == {"accuracy": 0.5, "zero": None}  # the mean's groups at the top of `random`
    assert raw["random"]["per_seed"][0]["relaxed"] == {"0": {"short": 1, "from": {"1": 1}}}
    assert raw["random"]["relaxed_layers"] == {"0": {"short": 1, "n_sets": 2, "from": {"1": 2}}}
    assert raw["normalized"]["random"]["mean"]["control"] == {"accuracy": 1.0}
    assert raw["provenance"]["model"] == {
        "name": "smollm2",
        "quantisation": None,
        "notes": [],
        "layout": {"n_layers": 30, "n_heads": 9},
        "loaded_in_process": False,
    }
    assert raw["error"] == {"type": "RuntimeError", "message": "boom", "file": ERROR_FILE, "stage": "track"}


def test_a_running_record_writes_only_what_is_known(tmp_path):
    rec = RunRecord(status="running", config_hash="abc", config={"seed": 0}, run=RunInfo(dir="/r"))
    write_record(tmp_path, rec)
    raw = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert set(raw) == {"results_version", "status", "config_hash", "config", "run"}
    back = RunRecord.read(tmp_path / RESULTS_FILE)
    assert back is not None and same(back, rec) and back.outcome is None


def _stage_outputs():
    """What the stages give `record`: three evaluations (one metric undefined), two random sets
    (one borrowed a head for layer 0), a score table."""

    def result(acc: float, ctrl: float) -> dict:
        return {
            "n": {"concept": 4, "control": 4},
            "concept": {"accuracy": acc, "rate": float("nan")},
            "control": {"accuracy": ctrl, "rate": 0.5},
            "examples": [{"prompt": "q", "output": "a", "group": "concept"}],
            "n_empty": 0,
            "n_outputs": 8,
            "empty_fraction": 0.0,
        }

    draws = [ControlDraw(0, [(0, 2), (1, 0)], borrowed={0: {1: 1}}), ControlDraw(1, [(0, 3), (1, 1)])]
    per_seed = [
        {"seed": d.seed, "heads": [list(h) for h in d.heads], **result(acc, 1.0)} for d, acc in zip(draws, (0.5, 0.25))
    ]
    table = pd.DataFrame({"layer": [0, 1, 0], "head": [1, 2, 0], "score": [0.5, 0.25, 0.125], "rank": [1, 2, 3]})
    return result(0.75, 1.0), result(0.0, 0.5), per_seed, draws, HeadScores(table, "concept_share")


def test_record_builds_the_outcome_from_the_stages_and_it_round_trips(tiny_llama, tmp_path):
    task = build_task({"name": "qa_countries", "concept": "countries", "n_rank": 4, "n_eval": 4}, tiny_llama)
    baseline, edited, per_seed, draws, scores = _stage_outputs()
    config = {
        "seed": 0,
        "ranking": {"method": "concept_share"},
        "intervention": {
            "k": 2,
            "k_frac": None,
            "alpha": -1,
            "heads": "ranked",
            "random_seeds": [0, 1],
            "random_pool": "layer_counts",
        },
    }
    outcome = record(
        lm=tiny_llama,
        task=task,
        config=config,
        k=2,
        heads=[(0, 1), (1, 2)],
        scores=scores,
        baseline=baseline,
        edited=edited,
        per_seed=per_seed,
        samples=[None] * 4,
        random_sets=draws,
        acts=SimpleNamespace(n_rows=7),
        cache=RunCache(None),
        timings={"rank": 2},
        model_loaded_in_process=True,
    )
    # What the stages gave, in its parts.
    assert outcome.edit == Edit(
        k=2,
        k_frac=None,
        alpha=-1.0,
        heads_mode="ranked",
        n_heads_total=tiny_llama.layout.n_layers * tiny_llama.layout.n_heads,
        heads=[EditedHead(0, 1, 0.5, 1), EditedHead(1, 2, 0.25, 2)],
    )
    assert outcome.edited.groups["control"] == {"accuracy": 0.5, "rate": 0.5}
    assert math.isnan(outcome.edited.groups["concept"]["rate"])
    assert outcome.random is not None and outcome.random.pool == "layer_counts"
    assert outcome.random.stats.mean["concept"]["accuracy"] == statistics.mean([0.5, 0.25])
    assert outcome.random.stats.std["concept"]["accuracy"] == pytest.approx(statistics.stdev([0.5, 0.25]))
    assert [r.relaxed for r in outcome.random.per_seed] == [{0: Borrowed(short=1, sources={1: 1})}, {}]
    assert outcome.random.relaxed_layers == {0: Borrowed(short=1, sources={1: 1}, n_sets=1)}
    assert outcome.normalized is not None and outcome.normalized.random is not None
    assert outcome.normalized.edited["concept"]["accuracy"] == 0.0 / 0.75
    assert outcome.normalized.random.median["concept"]["accuracy"] == pytest.approx(
        statistics.median([0.5, 0.25]) / 0.75
    )
    assert outcome.provenance.n_activation_rows == 7 and outcome.provenance.timings == {"rank": 2.0}
    assert outcome.provenance.model.layout == dataclasses.asdict(tiny_llama.layout)
    assert outcome.warnings == []
    # Written and read back: the same values.
    rec = RunRecord(status="complete", config_hash=config_hash(config), config=config, outcome=outcome)
    write_record(tmp_path, rec)
    back = RunRecord.read(tmp_path / RESULTS_FILE)
    assert back is not None and same(back, rec)


def test_record_adds_intervals_specificity_and_significance(tiny_llama):
    task = build_task({"name": "qa_countries", "concept": "countries", "n_rank": 4, "n_eval": 4}, tiny_llama)

    def result(concept: list[float], control: list[float]) -> dict:
        items = {"concept": {"accuracy": concept}, "control": {"accuracy": control}}
        return {
            "n": {"concept": len(concept), "control": len(control)},
            **{g: {"accuracy": sum(v["accuracy"]) / len(v["accuracy"])} for g, v in items.items()},
            "items": items,
        }

    baseline = result([1, 1, 1, 0], [1, 1, 0, 1])
    edited = result([0, 0, 0, 0], [1, 1, 0, 1])  # every concept answer lost, control untouched
    randoms = [result([1, 0, 1, 0], [1, 0, 0, 1]), result([1, 1, 1, 0], [0, 1, 0, 1])]
    draws = [ControlDraw(0, [(0, 2)]), ControlDraw(1, [(1, 3)], redraw=2)]
    per_seed = [{"seed": d.seed, "heads": [list(h) for h in d.heads], **r} for d, r in zip(draws, randoms)]
    config = {
        "seed": 0,
        "ranking": {"method": "concept_share"},
        "intervention": {
            "k": 1,
            "k_frac": None,
            "alpha": -1,
            "heads": "ranked",
            "random_seeds": [0, 1],
            "random_pool": "all",
        },
        "intervals": {"n_resamples": 200, "level": 0.9, "seed": 3},
    }
    table = pd.DataFrame({"layer": [0], "head": [1], "score": [0.5], "rank": [1]})
    outcome = record(
        lm=tiny_llama,
        task=task,
        config=config,
        k=1,
        heads=[(0, 1)],
        scores=HeadScores(table, "concept_share"),
        baseline=baseline,
        edited=edited,
        per_seed=per_seed,
        samples=[],
        random_sets=draws,
        acts=SimpleNamespace(n_rows=0),
        cache=RunCache(None),
        timings={},
        model_loaded_in_process=True,
    )
    # Specificity by hand: control kept 3/3, concept 0/3; the random sets 2/3 - 2/3 and 2/3 - 3/3.
    spec = outcome.specificity
    assert spec is not None and spec.metric == "accuracy" and spec.edited["accuracy"] == 1.0
    assert spec.random_median["accuracy"] == pytest.approx(statistics.median([2 / 3 - 2 / 3, 2 / 3 - 1.0]))
    # The edit lowers the concept more than both sets: rank 1 of 3, p = 1/3; the control less than both.
    sig = outcome.significance
    assert sig is not None and sig.direction == "lower"
    assert (sig.rank["concept"]["accuracy"], sig.p["concept"]["accuracy"]) == (1, pytest.approx(1 / 3))
    assert sig.rank["control"]["accuracy"] == 3 and sig.specificity_rank["accuracy"] == 1
    iv = outcome.intervals
    assert iv is not None and (iv.level, iv.n_resamples, iv.seed) == (0.9, 200, 3)
    assert iv.n_items == {"concept": 4, "control": 4}
    # The control group is untouched item for item: a paired delta of exactly 0, a ratio of 1.
    assert (iv.edited.delta["control"]["accuracy"].lo, iv.edited.delta["control"]["accuracy"].hi) == (0.0, 0.0)
    assert iv.edited.value["concept"]["accuracy"].hi == 0.0
    assert [r.seed for r in iv.random] == [0, 1]
    assert [r.redraw for r in outcome.random.per_seed] == [0, 2]
    assert outcome.random.n_possible == tiny_llama.layout.n_layers * tiny_llama.layout.n_heads
    # The items are kept with each evaluation, and everything round-trips through results.json.
    assert outcome.edited.items["concept"]["accuracy"] == [0.0] * 4
    assert Outcome.from_json(tracking.to_jsonable(outcome.to_json())).to_json() == outcome.to_json()

    # Without items (a task that gives none, or an old cache) there are no intervals, and the rest stays.
    def without_items(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "items"}

    bare = record(
        lm=tiny_llama,
        task=task,
        config=config,
        k=1,
        heads=[(0, 1)],
        scores=HeadScores(table, "concept_share"),
        baseline=without_items(baseline),
        edited=without_items(edited),
        per_seed=[without_items(r) for r in per_seed],
        samples=[],
        random_sets=draws,
        acts=SimpleNamespace(n_rows=0),
        cache=RunCache(None),
        timings={},
        model_loaded_in_process=True,
    )
    assert bare.intervals is None and bare.specificity is not None and bare.significance is not None


# ------------------------------------------------------------------------------------------
# Version 1 files (no results_version): read into the type, aggregated, overlapped
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", V1_FILES, ids=lambda p: p.stem)
def test_a_version_1_file_reads_into_the_record_and_writes_back_unchanged(path):
    raw = json.loads(path.read_text())
    assert "results_version" not in raw
    rec = RunRecord.read(path)
    assert rec is not None and rec.results_version == 1 and rec.status == "complete"
    out = rec.outcome
    assert out is not None
    assert out.edited.groups["concept"]["accuracy"] == raw["edited"]["concept"]["accuracy"]
    assert out.edit.pairs == [(h["layer"], h["head"]) for h in raw["heads"]]
    assert out.random is not None and out.random.stats.median == raw["random"]["median"]
    assert [r.result.groups["control"] for r in out.random.per_seed] == [
        r["control"] for r in raw["random"]["per_seed"]
    ]
    assert out.provenance.cache.activations_from_cache is raw["provenance"]["cache"]["activations_from_cache"]
    # What the file lacks is None: nothing is made up for it.
    assert (out.warnings is None) == ("warnings" not in raw)
    assert (out.edited.n_outputs is None) == ("n_outputs" not in raw["edited"])
    assert (out.random.relaxed_layers is None) == ("relaxed_layers" not in raw["random"])
    # Nothing of the file is lost: written again it is the same JSON (NaN as null), with its version.
    assert tracking.to_jsonable(rec.to_json()) == {"results_version": 1, **raw}


def _v1_sweep(root: Path) -> Path:
    """A sweep directory holding the two version-1 files and one version-2 record of a failed run."""
    for i, path in enumerate(V1_FILES):
        (root / str(i)).mkdir(parents=True)
        shutil.copy(path, root / str(i) / RESULTS_FILE)
    rec = RunRecord(status="running", config_hash="x", config=json.loads(V1_FILES[0].read_text())["config"])
    write_error(root / "2", RuntimeError("cuda out of memory"), rec, stage="edited")
    return root


def test_version_1_files_aggregate_beside_version_2(tmp_path):
    df = A.aggregate(_v1_sweep(tmp_path / "sweep"), tmp_path / "out", plots=False).set_index("run")
    for i, path in enumerate(V1_FILES):
        raw, row = json.loads(path.read_text()), df.loc[str(i)]
        assert row["status"] == "complete" and (row["model"], row["task"]) == ("smollm2", "qa_countries")
        assert (row["k"], row["alpha"]) == (raw["k"], raw["alpha"])
        assert row["heads"] == " ".join(f"{h['layer']}.{h['head']}" for h in raw["heads"])
        for section in ("baseline", "edited"):
            assert row[f"{section}.concept.f1"] == raw[section]["concept"]["f1"]
        assert row["random.concept.accuracy"] == raw["random"]["concept"]["accuracy"]
        assert row["random.q75.control.accuracy"] == raw["random"]["q75"]["control"]["accuracy"]
        norm = raw["normalized"]["random"]["median"]["concept"]["accuracy"]
        assert row["normalized.random.median.concept.accuracy"] == norm
        assert row["seconds"] == pytest.approx(sum(raw["provenance"]["timings"].values()))
    failed = df.loc["2"]
    assert (failed["status"], failed["error"], failed["stage"]) == ("failed", "cuda out of memory", "edited")
    assert (failed["model"], failed["task"], failed["k"]) == ("smollm2", "qa_countries", 6)  # from its config
    vs = pd.read_csv(tmp_path / "out" / "vs_random.csv")
    assert set(vs["k"]) == {6} and len(vs[(vs.group == "concept") & (vs.metric == "accuracy")]) == 2


def test_a_version_1_file_overlaps(tmp_path):
    root = tmp_path / "sweep"
    (root / "0").mkdir(parents=True)
    shutil.copy(V1_FILES[1], root / "0" / RESULTS_FILE)  # no head_scores.csv: the edited heads are the top k
    raw = json.loads(V1_FILES[1].read_text())
    done = O.overlap(root, metric="f1", plots=False)
    ((setting, d),) = done.items()
    assert setting == ("smollm2", "concept_share", -1.0) and d["k"] == raw["k"]
    assert d["jaccard"].loc["qa_countries", "qa_countries"] == 1.0
    f1 = raw["edited"]["concept"]["f1"] / raw["baseline"]["concept"]["f1"]
    assert d["transfer"].loc["qa_countries", "qa_countries"] == pytest.approx(f1)


# ------------------------------------------------------------------------------------------
# Failed, interrupted and unreadable records; the resume check
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_failed_and_interrupted_records_read_back_with_what_was_known(tmp_path, status):
    rec = RunRecord(
        status="running",
        config_hash="abc",
        config={"seed": 0, "model": {"name_or_path": "smollm2"}},
        run=RunInfo(dir=str(tmp_path)),
        heartbeat=HeartbeatInfo(file=".heartbeat", interval_s=30.0, pid=1, host="h"),
    )
    written = write_error(tmp_path, KeyboardInterrupt("SIGTERM"), rec, status=status, stage="capture")
    assert rec.status == "running"  # the caller's record is left as it was
    back = RunRecord.read(tmp_path / RESULTS_FILE)
    assert back is not None and same(back, written)
    assert back.status == status and back.outcome is None and back.heartbeat == rec.heartbeat
    assert back.error == ErrorInfo(type="KeyboardInterrupt", message="SIGTERM", file=ERROR_FILE, stage="capture")
    assert back.config_at("model", "name_or_path") == "smollm2" and back.config_at("task", "name") is None
    assert f"status: {status} (stage: capture)" in (tmp_path / ERROR_FILE).read_text()


def test_a_failure_after_the_outcome_keeps_it(tmp_path):
    rec = full_record()
    rec.error = None
    failed = write_error(tmp_path, OSError("disk"), rec, stage="after random")
    back = RunRecord.read(tmp_path / RESULTS_FILE)
    assert back is not None and back.status == "failed" and same(back.outcome, rec.outcome) and same(back, failed)


def test_a_newer_record_is_named_never_misread_nor_overwritten(tmp_path, caplog):
    newer = {"results_version": RESULTS_VERSION + 1, "status": "complete", "config_hash": "abc"}
    tracking.write_json_atomic(tmp_path / "0" / RESULTS_FILE, newer)
    with pytest.raises(ResultsError, match=rf"{tmp_path / '0' / RESULTS_FILE}: results_version {RESULTS_VERSION + 1}"):
        RunRecord.read(tmp_path / "0" / RESULTS_FILE)
    assert completed_results(tmp_path / "0", "abc") is None and "upgrade headpursuit" in caplog.text
    before = (tmp_path / "0" / RESULTS_FILE).read_bytes()
    write_error(tmp_path / "0", RuntimeError("later"), RunRecord(status="running", config_hash="def"))
    assert (tmp_path / "0" / RESULTS_FILE).read_bytes() == before  # complete results are kept
    tracking.write_json_atomic(tmp_path / "1" / RESULTS_FILE, {"status": "complete", "heads": [{"layer": 1}]})
    df = A.load_runs(tmp_path).set_index("run")
    assert df.loc["0", "status"] == "unreadable" and "upgrade headpursuit" in df.loc["0", "error"]
    assert df.loc["1", "status"] == "unreadable" and "not a results record" in df.loc["1", "error"]


def test_completed_results_is_the_typed_record(tmp_path):
    rec = full_record()
    rec.error = None
    write_record(tmp_path, rec)
    done = completed_results(tmp_path, "abc")
    assert isinstance(done, RunRecord) and same(done, rec)
    assert completed_results(tmp_path, "other") is None


def test_the_old_import_path_gives_the_same_objects():
    from headpursuit.app import results

    for name in tracking.RESULTS_NAMES:
        assert getattr(tracking, name) is getattr(results, name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        tracking.no_such_name  # noqa: B018
