"""Batched edits in the pipeline: `Task.generate_many` equals one edit at a time, and a run with
`intervention.batched_edits=true` writes the results.json of `batched_edits=false`.

The library tests run on the tiny random models; the pipeline tests run `experiment=smoke` (SmolLM2,
4 questions per group, 8 new tokens, 2 random seeds) as subprocesses, like tests/test_pipeline.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_pipeline import run_job

from headpursuit.app.config import ConfigError, validate_config
from headpursuit.app.results import Provenance, RunRecord
from headpursuit.intervention import scale_heads
from headpursuit.tasks import QAConfig, QATask, ToxicityConfig, ToxicityTask
from headpursuit.tasks.base import parse_batch_size

# Three edits of the tiny model and the unedited one: several heads, several layers, several alphas.
EDITS = [{}, {(0, 0): -1.0, (1, 1): 0.0}, {(1, 0): 2.0}, {(0, 1): -1.0, (1, 0): -1.0}]


def _one_at_a_time(task, lm, edits):
    outputs = []
    for edit in edits:
        with scale_heads(lm, edit):
            outputs.append(task.generate(lm, desc="seq"))
    return outputs


def _texts(outputs):
    return [{g: go.outputs for g, go in out.groups.items()} for out in outputs]


def _qa(lm, **kw):
    return QATask(QAConfig(concept=["France", "Japan", "Italy"], n_rank=2, n_eval=5, **kw), lm.tokenizer)


@pytest.mark.parametrize("batch_size", [2, 3, 16])
def test_answer_task_generate_many_equals_one_edit_at_a_time(tiny_llama, batch_size):
    task = _qa(tiny_llama, max_new_tokens=5, batch_size=batch_size)
    assert task.shares_edit_batches
    many = task.generate_many(tiny_llama, EDITS, desc="many")
    seq = _one_at_a_time(task, tiny_llama, EDITS)
    assert _texts(many) == _texts(seq)
    # The scores follow (outside the hooks, as the pipeline scores them).
    assert [task.score(o) for o in many] == [task.score(o) for o in seq]
    for m, s in zip(many, seq):
        for g in m.groups:
            assert m.groups[g].prompts == s.groups[g].prompts and m.groups[g].references == s.groups[g].references
    # The edits are not all alike on the tiny model (else the test would prove little).
    assert len({str(t) for t in _texts(many)}) > 1


def test_generate_many_of_sampling_task_is_one_edit_at_a_time(tiny_llama):
    task = ToxicityTask(
        ToxicityConfig(concept="toxic", max_new_tokens=4, batch_size=4, n_rank=2, n_eval=3), tiny_llama.tokenizer
    )
    assert not task.shares_edit_batches  # sampled draws depend on the batch: never shared
    edits = EDITS[:3]
    assert _texts(task.generate_many(tiny_llama, edits)) == _texts(_one_at_a_time(task, tiny_llama, edits))


def test_batch_size_auto_is_accepted_and_passed_on(tiny_llama):
    task = _qa(tiny_llama, max_new_tokens=3, batch_size="auto")
    assert task.batch_size == "auto" and task.edit_batch_rows(4) == "auto"
    out = task.generate(tiny_llama)
    assert all(len(go) == 5 for go in out.groups.values())
    assert len(task.generate_many(tiny_llama, EDITS[:2])) == 2
    assert parse_batch_size(7) == 7 and parse_batch_size("auto") == "auto"
    for bad in (0, -1, 1.5, True, "big", None):
        with pytest.raises(ConfigError, match="task.batch_size"):
            parse_batch_size(bad)
    with pytest.raises(ConfigError, match="task.batch_size"):
        _qa(tiny_llama, batch_size=0)


def _cfg(**over):
    cfg = {
        "model": {"name_or_path": "smollm2"},
        "task": {"name": "qa_countries", "batch_size": 16},
        "ranking": {"method": "concept_restricted"},
        "intervention": {"k": 2, "alpha": -1.0, "random_seeds": [0], "batched_edits": True},
        "capture_batch_size": 8,
    }
    for group, values in over.items():
        if isinstance(values, dict):
            cfg[group] = {**cfg[group], **values}
        else:
            cfg[group] = values
    return cfg


def test_config_checks_batched_edits_and_batch_sizes():
    validate_config(_cfg())
    validate_config(_cfg(task={"batch_size": "auto"}))
    validate_config(_cfg(intervention={"batched_edits": False}))
    for over, key in [
        ({"intervention": {"batched_edits": "sometimes"}}, "intervention.batched_edits"),  # a bool
        ({"task": {"batch_size": 0}}, "task.batch_size"),
        ({"task": {"batch_size": "large"}}, "task.batch_size"),
        ({"capture_batch_size": 0}, "capture_batch_size"),
        ({"capture_batch_size": "big"}, "capture_batch_size"),
    ]:
        with pytest.raises(ConfigError, match=key):
            validate_config(_cfg(**over))
    validate_config(_cfg(capture_batch_size="auto"))


def test_capture_batch_size_auto_on_gpu_rejects_image_tasks_before_loading():
    image_cfg = _cfg(task={"name": "classification"}, capture_batch_size="auto")
    validate_config({**image_cfg, "device": "cpu"})  # on CPU the fixed default is used
    with pytest.raises(ConfigError, match="capture_batch_size=8"):
        validate_config({**image_cfg, "device": "cuda"})


@pytest.mark.slow
def test_image_task_generate_many_equals_one_edit_at_a_time(tiny_vlm):
    from headpursuit.tasks import build_task

    task = build_task(
        {"name": "classification", "n_rank": 1, "n_eval": 3, "max_new_tokens": 4, "batch_size": 2}, tiny_vlm
    )
    L = tiny_vlm.layout.n_layers
    edits = [{}, {(L - 1, 0): -1.0, (L - 2, 1): 0.0}, {(L - 1, 2): 3.0}]
    many = task.generate_many(tiny_vlm, edits)
    assert _texts(many) == _texts(_one_at_a_time(task, tiny_vlm, edits))
    assert all(out.model["vision_random_init"] for out in many)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="batch_size=auto"):
        build_task({"name": "classification", "n_rank": 1, "n_eval": 1, "batch_size": "auto"}, tiny_vlm)


# ------------------------------------------------------------------------------------------
# The pipeline: same results.json either way, and only what is not cached is generated
# ------------------------------------------------------------------------------------------

SECTIONS = ("baseline", "edited", "random", "normalized", "heads")


def _copy_without_evals(src: Path, dst: Path, keep: int = 0) -> list[Path]:
    """`src` copied to `dst` with its evaluations removed except the first `keep` (sorted by name):
    the ranking stays cached, the evaluations are computed again. Returns the kept entries."""
    shutil.copytree(src, dst)
    entries = sorted((dst / "evals").glob("*.json"))
    for p in entries[keep:]:
        p.unlink()
    return entries[:keep]


EVAL_FLAGS = ("baseline_from_cache", "edited_from_cache", "random_from_cache")


def _provenance(res: dict) -> Provenance:
    """A run's provenance, its results.json read through the record type."""
    outcome = RunRecord.from_json(res).outcome
    assert outcome is not None
    return outcome.provenance


def _cache_flags(res: dict) -> dict:
    """The evaluations' cache flags (the ranking's differ: the later runs read it from the copy)."""
    cache = _provenance(res).cache
    return {flag: getattr(cache, flag) for flag in EVAL_FLAGS}


@pytest.mark.slow
def test_batched_pipeline_writes_the_same_results(tmp_path):
    seq_cache, overrides = tmp_path / "cache_seq", ("intervention.k=3", "intervention.alpha=-1")
    seq = run_job(tmp_path / "seq", seq_cache, *overrides, "intervention.batched_edits=false")
    n_evals = len(list((seq_cache / "evals").glob("*.json")))
    assert n_evals == 4  # baseline, edited, 2 random seeds

    _copy_without_evals(seq_cache, tmp_path / "cache_batched")
    batched = run_job(tmp_path / "batched", tmp_path / "cache_batched", *overrides)
    for section in SECTIONS:  # the files' sections, as written
        assert batched[section] == seq[section], section
    assert _cache_flags(batched) == _cache_flags(seq)
    assert _cache_flags(batched) == {
        "baseline_from_cache": False,
        "edited_from_cache": False,
        "random_from_cache": [False, False],
    }
    prov_seq, prov_batched = _provenance(seq), _provenance(batched)
    assert prov_batched.cache.scores_from_cache is True  # only the evaluations ran again
    assert prov_seq.batched_edits is False and prov_batched.batched_edits is True
    assert prov_batched.batch_sizes["task"] == 16 and prov_batched.batch_sizes["capture"] == 8
    assert prov_batched.batch_sizes["batched_edits"] == 4 and prov_batched.batch_sizes["edit_rows"] == 64
    assert prov_seq.batch_sizes["batched_edits"] == 0 and prov_seq.batch_sizes["edit_rows"] is None
    assert "generate_edits" in prov_batched.timings and "generate_edits" not in prov_seq.timings

    # Half the evaluations cached: only the others are generated, each hit recorded as the
    # sequential path records it, and the results are the same again.
    _copy_without_evals(seq_cache, tmp_path / "cache_partial", keep=2)
    partial = run_job(tmp_path / "partial", tmp_path / "cache_partial", *overrides)
    for section in SECTIONS:
        assert partial[section] == seq[section], section
    flags = _cache_flags(partial)
    hits = [flags["baseline_from_cache"], flags["edited_from_cache"], *flags["random_from_cache"]]
    assert sorted(hits) == [False, False, True, True]
    assert _provenance(partial).batch_sizes["batched_edits"] == 2
    assert len(list((tmp_path / "cache_partial" / "evals").glob("*.json"))) == n_evals


@pytest.mark.slow
def test_batch_alphas_cache_the_other_alpha_jobs_evaluations(tmp_path):
    """A job with intervention.batch_alphas evaluates the other alphas in its batched pass: the
    job for the other alpha then generates nothing, and its results equal a job run alone."""
    k = "intervention.k=3"
    alone = run_job(tmp_path / "alone", tmp_path / "cache_alone", k, "intervention.alpha=2")
    shared_cache = tmp_path / "cache_shared"
    first = run_job(tmp_path / "first", shared_cache, k, "intervention.alpha=-1", "intervention.batch_alphas=[-1,2]")
    # baseline, 2 alphas x (edited + 2 random seeds)
    assert len(list((shared_cache / "evals").glob("*.json"))) == 1 + 2 * 3
    assert _provenance(first).batch_sizes["batched_edits"] == 1 + 2 * 3
    second = run_job(tmp_path / "second", shared_cache, k, "intervention.alpha=2", "intervention.batch_alphas=[-1,2]")
    assert _provenance(second).batch_sizes["batched_edits"] == 0  # nothing left to generate
    assert _cache_flags(second) == {
        "baseline_from_cache": True,
        "edited_from_cache": True,
        "random_from_cache": [True, True],
    }
    for section in SECTIONS:
        assert second[section] == alone[section], section
    with pytest.raises(ConfigError, match="intervention.batch_alphas"):
        validate_config(_cfg(intervention={"batch_alphas": ["big"]}))
