"""The paper's QA experiment (issue 13): the paper's prompt preset, ranking questions from TriviaQA's
train split (or a second local file) and evaluation on disjoint validation questions."""

import json

import pytest

from headpursuit.errors import ConfigError
from headpursuit.tasks import QAConfig, QATask, loaders
from headpursuit.tasks.loaders import fixture_path, question_key
from headpursuit.tasks.prompts import QA_PAPER


class WordConcept:
    """Stand-in for headpursuit.concepts.Concept where no tokenizer is needed."""

    def __init__(self, words, name="words"):
        self.name, self.words = name, list(words)

    def count_in_text(self, text):
        from headpursuit.metrics.text import count_concept_words

        return count_concept_words(text, self.words)


def _countries():
    from headpursuit.concepts import concept_dir, read_word_list

    return WordConcept(read_word_list(concept_dir() / "countries.txt"), "countries")


COUNTRIES = _countries()
TRAIN = fixture_path("trivia_qa_train_sample.jsonl")
VALIDATION = fixture_path("trivia_qa_validation_sample.jsonl")


class RecordingLM:
    """Just what `QATask.format` uses of a model: a chat template that shows its user message."""

    def format_prompt(self, user_text, system=None):
        return f"<sys>{system}</sys><user>{user_text}</user>" if system else f"<user>{user_text}</user>"


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _questions(items):
    return {question_key(it.question) for it in items}


# --- the prompt preset ---------------------------------------------------------------------------


def test_paper_prompt_is_the_papers_template_verbatim():
    task = QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2, prompt_preset="paper"))
    q = "Which country is Tokyo the capital of?"
    expected = (
        "Answer the following question in 1-3 words only. Do not provide any additional explanation "
        "for your answer. Question: Which country is Tokyo the capital of? Answer:"
    )
    assert task.user_text(q) == expected == QA_PAPER.format(question=q)
    # through the model's chat template, with no instruction appended
    assert task.format(RecordingLM(), q) == f"<user>{expected}</user>"
    prov = task.provenance()
    assert prov["prompt_preset"] == "paper" and prov["prompt_template"] == QA_PAPER and prov["instruction"] == ""
    # a system message still goes through the chat template
    sys_task = QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2, prompt_preset="paper", system="Be brief."))
    assert sys_task.format(RecordingLM(), q) == f"<sys>Be brief.</sys><user>{expected}</user>"


def test_ours_prompt_is_unchanged(tiny_llama):
    from headpursuit.tasks.qa import DEFAULT_INSTRUCTION

    q = "The Eiffel Tower is in which country?"
    default = QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2))
    ours = QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2, prompt_preset="ours"))
    # what the task fed the model before prompt_preset existed
    before = tiny_llama.format_prompt(f"{q} {DEFAULT_INSTRUCTION}")
    assert default.format(tiny_llama, q) == ours.format(tiny_llama, q) == before
    assert ours.provenance()["prompt_preset"] == "ours"
    assert ours.provenance()["prompt_template"] == "{question} " + DEFAULT_INSTRUCTION
    bare = QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2, instruction=None))
    assert bare.format(tiny_llama, q) == tiny_llama.format_prompt(q)
    with pytest.raises(ValueError, match="prompt_preset"):
        QATask(QAConfig(concept=COUNTRIES, n_rank=2, n_eval=2, prompt_preset="papers"))


# --- the shipped TriviaQA-schema samples -------------------------------------------------------------


def test_shipped_trivia_qa_samples_are_in_the_hub_schema_and_disjoint():
    train, val = _rows(TRAIN), _rows(VALIDATION)
    assert len(train) == len(val) == 60
    for row in train + val:
        assert {"question", "question_id", "answer"} <= set(row)
        assert {"value", "aliases", "normalized_aliases", "normalized_value", "type"} <= set(row["answer"])
    tr_items = loaders.load_trivia_qa_file(TRAIN, COUNTRIES.words)
    val_items = loaders.load_trivia_qa_file(VALIDATION, COUNTRIES.words)
    for items in (tr_items, val_items):
        assert sum(it.group == "concept" for it in items) == 30 and sum(it.group == "control" for it in items) == 30
    assert not _questions(tr_items) & _questions(val_items)


# --- ranking from a second file -----------------------------------------------------------------


def test_rank_file_split_is_disjoint_with_overlapping_files(tmp_path):
    val = _rows(VALIDATION)
    overlap = [dict(r) for r in val[:6]]  # 3 concept + 3 control questions also in the evaluation file
    overlap[0] = {**overlap[0], "question": overlap[0]["question"].upper() + "  "}  # same once normalised
    rank_file = _write_jsonl(tmp_path / "train.jsonl", _rows(TRAIN) + overlap)

    def rank_file_task(**kw) -> QATask:
        return QATask(
            QAConfig(
                concept=COUNTRIES,
                source="trivia_qa_file",
                data_path=str(VALIDATION),
                rank_data_path=str(rank_file),
                n_rank=20,
                n_eval=25,
                **kw,
            )
        )

    task = rank_file_task(rank_groups=["concept", "control"])
    rank, evaluated = task.items("rank"), task.items("eval")
    assert len(task.items("rank", "concept")) == len(task.items("rank", "control")) == 20
    assert len(task.items("eval", "concept")) == len(task.items("eval", "control")) == 25
    # every ranking question from the ranking file, none of them a question of the evaluation file
    assert all(str(rank_file) in it.meta["where"] for it in rank)
    assert all(str(VALIDATION) in it.meta["where"] for it in evaluated)
    assert not _questions(rank) & _questions(loaders.load_trivia_qa_file(VALIDATION, COUNTRIES.words))
    data = task.provenance()["data"]
    assert data["rank_overlap_dropped"] == 6 and data["rank_path"] == str(rank_file)
    assert data["rank_n_items"] == {"concept": 30, "control": 30}
    assert data["n_items"] == {"concept": 30, "control": 30}
    # rank_groups: the evaluation split is the same whichever groups rank
    concept_only = rank_file_task()
    assert [it.question for it in concept_only.items("eval")] == [it.question for it in evaluated]
    assert concept_only.items("rank", "control") == [] and len(concept_only.ranking_items()) == 20
    assert [it.question for it in concept_only.items("rank", "concept")] == [
        it.question for it in task.items("rank", "concept")
    ]


def test_rank_file_needs_its_source_and_a_separate_file(tmp_path):
    for source in ("fixture", "hub", "jsonl"):
        with pytest.raises(ConfigError, match=r"task\.rank_data_path .*task\.source=trivia_qa_file"):
            QATask(QAConfig(concept=COUNTRIES, source=source, data_path=str(VALIDATION), rank_data_path=str(TRAIN)))
    with pytest.raises(ConfigError, match=r"task\.hub_rank_split .*task\.source=hub"):
        QATask(QAConfig(concept=COUNTRIES, source="trivia_qa_file", data_path=str(VALIDATION), hub_rank_split="train"))
    with pytest.raises(ConfigError, match="hub_rank_split=null"):
        QATask(QAConfig(concept=COUNTRIES, source="hub", hub_split="validation", hub_rank_split="validation"))
    with pytest.raises(ConfigError, match="rank_data_path=null"):
        QATask(QAConfig(concept=COUNTRIES, source="trivia_qa_file", data_path=str(TRAIN), rank_data_path=str(TRAIN)))


def test_without_questions_of_counts_what_it_drops():
    items = loaders.load_trivia_qa_file(TRAIN, COUNTRIES.words)
    kept, dropped = loaders.without_questions_of(items, items[:4])
    assert dropped == 4 and kept == items[4:]


# --- ranking from the hub's train split -------------------------------------------------------------


def _hub_rows(split):
    """The shipped samples as `datasets.load_dataset` rows of mandarjoshi/trivia_qa; the train split
    also holds two validation questions (dropped from ranking)."""
    train, val = _rows(TRAIN), _rows(VALIDATION)
    return {"train": train + val[:2], "validation": val}[split]


def test_hub_rank_split_reads_train_for_ranking_and_validation_for_evaluation(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split))
        assert path == "mandarjoshi/trivia_qa" and name == "rc.nocontext"
        return _hub_rows(split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = QATask(
        QAConfig(
            concept=COUNTRIES,
            source="hub",
            hub_split="validation",
            hub_rank_split="train",
            n_rank=10,
            n_eval=12,
            rank_groups=["concept", "control"],
            prompt_preset="paper",
        )
    )
    assert sorted(c[2] for c in calls) == ["train", "validation"]
    rank, evaluated = task.items("rank"), task.items("eval")
    assert len(rank) == 20 and len(evaluated) == 24
    # each item says which split it came from (the loader's row address and the question ids)
    assert all("[train]" in it.meta["where"] and it.meta["id"].startswith("hp_train_") for it in rank)
    assert all("[validation]" in it.meta["where"] and it.meta["id"].startswith("hp_validation_") for it in evaluated)
    assert not _questions(rank) & _questions(evaluated)
    data = task.provenance()["data"]
    assert data["hub_split"] == "validation" and data["hub_rank_split"] == "train"
    assert data["rank_overlap_dropped"] == 2 and data["rank_source"] == "mandarjoshi/trivia_qa/rc.nocontext[train]"
    assert task.provenance()["prompt_preset"] == "paper"
    # without hub_rank_split: one split (validation) divided in two, as before
    calls.clear()
    one = QATask(QAConfig(concept=COUNTRIES, source="hub", n_rank=10, n_eval=12))
    assert [c[2] for c in calls] == ["validation"] and "rank_overlap_dropped" not in one.provenance()["data"]
    assert all("[validation]" in it.meta["where"] for it in one.items("rank") + one.items("eval"))
