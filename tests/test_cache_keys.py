"""Cache keys hold content, not paths: an edited data file or changed code is recomputed, the same
data at another path is served from the cache (issue 19).

The stage tests run the cached stages (`headpursuit.app.stages`) on the tiny random Llama with QA
tasks built from small fixture-format JSONL files; one slow test runs the two commands of the issue
through the CLI with SmolLM2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from headpursuit import fingerprint
from headpursuit.app.cache import RunCache, model_identity, task_identity
from headpursuit.app.stages import (
    capture_cached,
    concept_token_ids,
    evaluate_cached,
    rank_cached,
    ranking_samples_cached,
)
from headpursuit.fingerprint import content_digest, fingerprint_of
from headpursuit.ranking import RankingConfig
from headpursuit.tasks import build_task
from headpursuit.tasks.loaders import fixture_path, read_records

FIXTURE_ROWS = [row for _, row in read_records(fixture_path("qa_countries.jsonl"))]
CONCEPT = ["France", "Japan", "Italy", "Spain", "Germany", "Canada", "Brazil", "India", "China", "Egypt"]


def _rows(start: int, n: int = 4) -> list[dict]:
    """`n` concept and `n` control rows of the shipped fixture, from the `start`-th of each group."""
    return [row for g in ("concept", "control") for row in [r for r in FIXTURE_ROWS if r["group"] == g][start:][:n]]


ROWS_A, ROWS_B = _rows(0), _rows(4)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _age(path: Path, seconds: float = 3600) -> None:
    """Set the file's mtime an hour back: old enough for `content_digest` to memoise its digest."""
    t = path.stat().st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def _task_cfg(data_path: Path, **over) -> dict:
    return {
        "name": "qa_countries",
        "concept": CONCEPT,
        "source": "jsonl",
        "data_path": str(data_path),
        "n_rank": 2,
        "n_eval": 2,
        "max_new_tokens": 3,
        "batch_size": 4,
        **over,
    }


def _stages(cache: RunCache, lm, task_cfg: dict) -> dict:
    """The cached stages of a run, as app/run.py keys them: {samples, acts, scores, evaluation, hits}."""
    task = build_task(task_cfg, lm)
    model_id = model_identity({"name_or_path": "tiny_llama", "revision": None, "kwargs": None}, lm)
    samples = ranking_samples_cached(
        cache, task, lm, {"model": model_id, "task": task_identity(task_cfg, "ranking", task.data_identity())}
    )
    acts, acts_key = capture_cached(cache, lm, samples, "last_prompt", concept_token_ids(task.concept))
    scores = rank_cached(cache, acts, acts_key, lm, task.concept, RankingConfig(somp_steps=2), seed=0)
    eval_id = {"model": model_id, "task": task_identity(task_cfg, "eval", task.data_identity())}
    evaluation = evaluate_cached(cache, lm, task, eval_id, {}, label="baseline", seed=0)
    hits = {label: cache.hit(label) for label in ("samples", "acts", "scores", "baseline")}
    return {"samples": samples, "scores": scores, "evaluation": evaluation, "hits": hits}


def _questions(rows: list[dict]) -> set[str]:
    return {r["question"] for r in rows}


def _shown_questions(run: dict) -> set[str]:
    """The questions the run's ranking samples and evaluation examples are about."""
    return {s.meta["question"] for s in run["samples"]} | {e["prompt"] for e in run["evaluation"]["examples"]}


ALL_HIT = {"samples": True, "acts": True, "scores": True, "baseline": True}
ALL_MISS = {"samples": False, "acts": False, "scores": False, "baseline": False}


# ------------------------------------------------------------------------------------------
# content_digest
# ------------------------------------------------------------------------------------------


def test_content_digest_is_the_sha256_of_the_bytes_wherever_the_file_is(tmp_path):
    a = _write(tmp_path / "a.jsonl", ROWS_A)
    (tmp_path / "elsewhere").mkdir()
    copy = Path(shutil.copy(a, tmp_path / "elsewhere" / "renamed.jsonl"))
    assert content_digest(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert content_digest(copy) == content_digest(a)
    with pytest.raises(FileNotFoundError, match="no such file"):
        content_digest(tmp_path / "missing.jsonl")


def test_content_digest_is_memoised_until_the_file_changes(tmp_path, monkeypatch):
    """An unchanged file is not read again; an in-place rewrite of the same size is."""
    monkeypatch.setattr(fingerprint, "RACY_WINDOW_NS", 0)  # memoise files however recent
    d = _write(tmp_path / "d.jsonl", [{"question": "aaaa"}])
    _age(d)
    first = content_digest(d)
    opened = []
    real_open = Path.open

    def spy(self, *a, **k):
        opened.append(self)
        return real_open(self, *a, **k)

    monkeypatch.setattr(Path, "open", spy)
    assert content_digest(d) == first and opened == []
    size = d.stat().st_size
    _write(d, [{"question": "bbbb"}])
    assert d.stat().st_size == size
    expected = hashlib.sha256(d.read_bytes()).hexdigest()
    opened.clear()
    assert content_digest(d) == expected != first
    assert opened == [d.resolve()]


def test_content_digest_of_a_folder_follows_its_files_not_its_place(tmp_path):
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"\x89PNG one")
    (folder / "dog.png").write_bytes(b"\x89PNG two")
    before = content_digest(folder)
    assert content_digest(shutil.copytree(folder, tmp_path / "copy")) == before
    (folder / "cat" / "1.png").write_bytes(b"\x89PNG 1ne")  # same size, other bytes
    assert content_digest(folder) != before
    (folder / "cat" / "1.png").write_bytes(b"\x89PNG one")
    assert content_digest(folder) == before
    (folder / "dog.png").rename(folder / "cat" / "dog.png")  # same bytes under another name
    assert content_digest(folder) != before


# ------------------------------------------------------------------------------------------
# The code fingerprint
# ------------------------------------------------------------------------------------------


@pytest.fixture
def package_copy(tmp_path) -> Path:
    return Path(
        shutil.copytree(
            fingerprint.PACKAGE_ROOT, tmp_path / "headpursuit", ignore=shutil.ignore_patterns("__pycache__")
        )
    )


def test_code_fingerprint_follows_result_producing_files_only(package_copy):
    """A copy of the package has this package's fingerprint; editing a library module, a shipped
    fixture (parquet included), the stages or the cache keys changes it; editing the shell's
    recording code (app/run.py, __main__.py) does not."""
    assert fingerprint_of(package_copy) == fingerprint.code_fingerprint()
    base = fingerprint_of(package_copy)

    def edited(rel: str, data: bytes = b"\n# edited\n") -> str:
        path = package_copy / rel
        original = path.read_bytes()
        path.write_bytes(original + data)
        try:
            return fingerprint_of(package_copy)
        finally:
            path.write_bytes(original)

    for rel in (
        "somp/algorithm.py",
        "tasks/qa.py",
        "data/fixtures/vision/mnist.parquet",
        "app/stages.py",
        "app/cache.py",
        "store.py",
    ):
        assert edited(rel) != base, rel
    for rel in ("app/run.py", "app/record.py", "__main__.py"):
        assert edited(rel) == base, rel
    assert fingerprint_of(package_copy) == base


@pytest.fixture
def changed_code(package_copy, monkeypatch):
    """`code_fingerprint()` as it would be after an edit to somp/algorithm.py: the fingerprint of a copy of the
    package with that edit (restored, and recomputed, after the test)."""
    (package_copy / "somp" / "algorithm.py").write_text(
        (package_copy / "somp" / "algorithm.py").read_text() + "\n# edited\n"
    )
    before = fingerprint.code_fingerprint()
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", package_copy)
    fingerprint.code_fingerprint.cache_clear()
    assert fingerprint.code_fingerprint() != before
    yield
    fingerprint.code_fingerprint.cache_clear()


# ------------------------------------------------------------------------------------------
# The cached stages
# ------------------------------------------------------------------------------------------


def test_data_file_edited_in_place_is_recomputed(tiny_llama, tmp_path):
    """The issue's Found 1 on the stages: the same data_path, other rows -> every stage computed
    anew, and the samples and examples are the new file's questions."""
    d, cache = _write(tmp_path / "d.jsonl", ROWS_A), RunCache(tmp_path / "cache")
    _age(d)  # memoised: the rewrite below must still be seen
    first = _stages(cache, tiny_llama, _task_cfg(d))
    assert first["hits"] == ALL_MISS
    assert _shown_questions(first) <= _questions(ROWS_A)
    again = _stages(cache, tiny_llama, _task_cfg(d))
    assert again["hits"] == ALL_HIT  # the cache serves an unchanged file

    _write(d, ROWS_B)
    edited = _stages(cache, tiny_llama, _task_cfg(d))
    assert edited["hits"] == ALL_MISS  # activations and scores: keyed on the new samples' content
    shown = _shown_questions(edited)
    assert shown and shown <= _questions(ROWS_B) and not shown & _questions(ROWS_A)


def test_same_content_at_another_path_is_served_from_the_cache(tiny_llama, tmp_path):
    d, cache = _write(tmp_path / "d.jsonl", ROWS_A), RunCache(tmp_path / "cache")
    first = _stages(cache, tiny_llama, _task_cfg(d))
    (tmp_path / "moved").mkdir()
    copy = Path(shutil.copy(d, tmp_path / "moved" / "other_name.jsonl"))
    moved = _stages(cache, tiny_llama, _task_cfg(copy))
    assert moved["hits"] == ALL_HIT
    assert moved["evaluation"] == first["evaluation"]
    # the task still records where its data came from
    assert build_task(_task_cfg(copy), tiny_llama).provenance()["data"]["path"] == str(copy)


def test_changed_code_is_recomputed_including_the_activations(tiny_llama, tmp_path, request):
    d, cache = _write(tmp_path / "d.jsonl", ROWS_A), RunCache(tmp_path / "cache")
    assert _stages(cache, tiny_llama, _task_cfg(d))["hits"] == ALL_MISS
    assert _stages(cache, tiny_llama, _task_cfg(d))["hits"] == ALL_HIT
    request.getfixturevalue("changed_code")
    assert _stages(cache, tiny_llama, _task_cfg(d))["hits"] == ALL_MISS


def test_task_keys_hold_the_content_of_every_data_file_and_no_path(tiny_llama, tmp_path):
    """data_path, rank_data_path (TriviaQA-schema files) and a word-list concept: each key's value
    in the task identity is its file's digest, so an edit of any of them changes the identity."""
    evals = tmp_path / "eval.jsonl"
    shutil.copy(fixture_path("trivia_qa_validation_sample.jsonl"), evals)
    train = tmp_path / "train.jsonl"
    shutil.copy(fixture_path("trivia_qa_train_sample.jsonl"), train)
    words = tmp_path / "my_concept.txt"
    words.write_text("\n".join(CONCEPT) + "\n", encoding="utf-8")
    cfg = _task_cfg(evals, source="trivia_qa_file", rank_data_path=str(train), concept=str(words))

    def ident(purpose: str = "eval") -> dict:
        return task_identity(cfg, purpose, build_task(cfg, tiny_llama).data_identity())

    before = ident()
    assert {before[k] for k in ("data_path", "rank_data_path", "concept")} == {
        content_digest(evals),
        content_digest(train),
        content_digest(words),
    }
    assert str(tmp_path) not in json.dumps([before, ident("ranking")])
    for path in (evals, train, words):
        original = path.read_bytes()
        path.write_bytes(original + b"\n")  # a blank line: rows and words unchanged, the bytes not
        assert ident() != before, path.name
        path.write_bytes(original)
    assert ident() == before


def test_hub_split_identity_is_its_fingerprint_else_its_rows(tiny_llama, monkeypatch):
    """source=hub (load_dataset mocked): the key holds the loaded split's `datasets` fingerprint; a
    split without one (streamed, or this mock's list) is identified by the rows read."""
    datasets = pytest.importorskip("datasets")
    rows = [
        {"question": r["question"], "answer": {"value": r["answers"][0], "aliases": r["answers"]}} for r in _rows(0, 6)
    ]
    served: dict = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None, streaming=False: served["ds"])
    cfg = {"name": "qa_countries", "concept": CONCEPT, "source": "hub", "n_rank": 1, "n_eval": 2}

    def hub_identity(ds) -> str:
        served["ds"] = ds
        return build_task(cfg, tiny_llama).data_identity()["hub_split"]

    class WithFingerprint(list):
        _fingerprint = "abc123"

    assert hub_identity(WithFingerprint(rows)) == "datasets:abc123"
    by_rows = hub_identity(list(rows))
    assert by_rows.startswith("rows:") and by_rows == hub_identity([dict(r) for r in rows])
    changed = [dict(rows[0], question=rows[0]["question"] + "?"), *rows[1:]]
    assert hub_identity(changed) != by_rows


# ------------------------------------------------------------------------------------------
# The two commands (SmolLM2 through the CLI)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_rerun_after_the_data_file_changed_shows_the_new_questions(tmp_path):
    from test_pipeline import run_job

    rows_a, rows_b = _rows(0, 8), _rows(8, 8)  # 4 ranking + 4 evaluation questions per group
    d, cache = tmp_path / "d.jsonl", tmp_path / "cache"
    args = (f"task.data_path={d}", "task.source=jsonl", "task.n_rank=4", "task.n_eval=4")
    _write(d, rows_a)
    a = run_job(tmp_path / "A", cache, *args)
    _write(d, rows_b)
    b = run_job(tmp_path / "B", cache, *args)
    shown = {e["prompt"] for e in b["baseline"]["examples"]}
    assert shown and shown <= _questions(rows_b) and not shown & _questions(rows_a)
    assert b["provenance"]["cache"]["baseline_from_cache"] is False
    assert (
        b["provenance"]["task"]["data"]["content"]["data_path"]
        != a["provenance"]["task"]["data"]["content"]["data_path"]
    )
