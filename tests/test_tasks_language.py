"""Language tasks: fixtures, loaders, splits, generation helpers, QA and toxicity end to end."""

import json
import math
import warnings

import pytest

from headpursuit.errors import ConfigError
from headpursuit.metrics.text import normalize_answer
from headpursuit.models.generation import generate_batch
from headpursuit.tasks import (
    DataError,
    QAConfig,
    QATask,
    SplitError,
    ToxicityConfig,
    ToxicityTask,
    build_task,
    known_tasks,
    loaders,
    register_task,
    split_items,
)


class WordConcept:
    """Stand-in for headpursuit.concepts.Concept where no tokenizer is needed."""

    def __init__(self, words, name="words"):
        self.name, self.words = name, list(words)

    def count_in_text(self, text):
        from headpursuit.metrics.text import count_concept_words

        return count_concept_words(text, self.words)


COUNTRIES = WordConcept(["France", "Japan", "United States", "Italy", "Canada", "Chad"], "countries")


def _country_words():
    from headpursuit.concepts import concept_dir, read_word_list

    return read_word_list(concept_dir() / "countries.txt")


# --- fixtures --------------------------------------------------------------------------------


def test_qa_fixture_is_well_formed():
    items = loaders.load_qa_fixture()
    concept = [it for it in items if it.group == "concept"]
    control = [it for it in items if it.group == "control"]
    assert len(concept) >= 160 and len(control) >= 160
    assert len({it.question for it in items}) == len(items)
    countries = {normalize_answer(w) for w in _country_words()}
    for it in concept:  # every concept answer names a country the concept list knows
        assert normalize_answer(it.answers[0]) in countries, it
    for it in control:  # no control answer is a country name
        assert not any(normalize_answer(a) in countries for a in it.answers), it


def test_toxicity_fixture_is_well_formed():
    items = loaders.load_prompt_fixture()
    assert sum(it.group == "concept" for it in items) >= 100
    assert sum(it.group == "control" for it in items) >= 40
    assert len({it.prompt for it in items}) == len(items)


# --- loaders ---------------------------------------------------------------------------------


def _trivia_rows(*answered):
    """Rows in the Hugging Face TriviaQA schema, question ids q1, q2, ..., from
    (question, answer value, aliases, normalized_aliases) tuples."""
    return [
        {"question": q, "question_id": f"q{i}", "answer": {"value": v, "aliases": a, "normalized_aliases": n}}
        for i, (q, v, a, n) in enumerate(answered, 1)
    ]


TRIVIA_ROWS = _trivia_rows(
    ("Where is the Eiffel Tower?", "France", ["France", "French Republic"], ["france", "french republic"]),
    ("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare", "The Bard"], ["shakespeare", "bard"]),
    ("Which country is Tokyo the capital of?", "Nippon", ["Nippon", "Japan"], ["nippon", "japan"]),
    ("What colour is the sky?", "Blue", [], ["blue"]),
)
TRIVIA_ROWS[0]["answer"]["type"] = "WikipediaEntity"  # a field of the schema that the loader does not read
FIXTURE_ROWS = [
    {"question": "Where is the Eiffel Tower?", "answers": ["France", "French Republic"], "group": "concept"},
    {
        "question": "Who wrote Hamlet?",
        "answers": ["William Shakespeare", "Shakespeare", "The Bard"],
        "group": "control",
    },
    {"question": "Which country is Tokyo the capital of?", "answers": ["Nippon", "Japan"], "group": "concept"},
    {"question": "What colour is the sky?", "answers": ["Blue"], "group": "control"},
]


def _copies(rows, n):
    """`n` copies of `rows`, each copy's questions made distinct (" (copy i)"): repeated questions
    are kept once by the tasks."""
    return [{**r, "question": f"{r['question']} (copy {i})"} for i in range(n) for r in rows]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _key(items):
    return [(it.question, it.answers, it.group) for it in items]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "json_data", "parquet"])
def test_trivia_qa_file_maps_like_fixture(tmp_path, fmt):
    if fmt == "jsonl":
        path = _write_jsonl(tmp_path / "tqa.jsonl", TRIVIA_ROWS)
    elif fmt == "json":
        path = tmp_path / "tqa.json"
        path.write_text(json.dumps(TRIVIA_ROWS))
    elif fmt == "json_data":  # the original release: {"Data": [{"Question", "Answer": {"Value", ...}}]}
        path = tmp_path / "tqa_orig.json"
        orig = [
            {
                "Question": r["question"],
                "QuestionId": r["question_id"],
                "Answer": {
                    "Value": r["answer"]["value"],
                    "Aliases": r["answer"]["aliases"],
                    "NormalizedAliases": r["answer"]["normalized_aliases"],
                },
            }
            for r in TRIVIA_ROWS
        ]
        path.write_text(json.dumps({"Data": orig, "Version": 1.0}))
    else:
        pd = pytest.importorskip("pandas")
        path = tmp_path / "tqa.parquet"
        pd.DataFrame(TRIVIA_ROWS).to_parquet(path)
    fixture = loaders.load_qa_fixture(_write_jsonl(tmp_path / "fx.jsonl", FIXTURE_ROWS))
    mapped = loaders.load_trivia_qa_file(path, COUNTRIES.words)
    assert _key(mapped) == _key(fixture)


def test_trivia_qa_task_source_equals_fixture_source(tmp_path):
    tqa = _write_jsonl(tmp_path / "tqa.jsonl", _copies(TRIVIA_ROWS, 3))
    fx = _write_jsonl(tmp_path / "fx.jsonl", _copies(FIXTURE_ROWS, 3))
    a = QATask(QAConfig(concept=COUNTRIES, source="trivia_qa_file", data_path=str(tqa), n_rank=2, n_eval=3))
    b = QATask(QAConfig(concept=COUNTRIES, source="jsonl", data_path=str(fx), n_rank=2, n_eval=3))
    for split in ("rank", "eval"):
        for g in ("concept", "control"):
            assert _key(a.items(split, g)) == _key(b.items(split, g))


def test_missing_field_names_file_line_and_field(tmp_path):
    rows = [FIXTURE_ROWS[0], {"question": "What?", "group": "control"}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        loaders.load_qa_fixture(path)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "line 2" in msg and "'answers'" in msg
    with pytest.raises(DataError, match="'group'"):
        loaders.load_qa_fixture(
            _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answers": ["a"], "group": "other"}])
        )
    with pytest.raises(DataError, match="'answer'"):
        loaders.load_trivia_qa_file(_write_jsonl(tmp_path / "t.jsonl", [{"question": "q"}]), ["France"])
    with pytest.raises(DataError, match="'prompt'"):
        loaders.load_prompt_fixture(_write_jsonl(tmp_path / "p.jsonl", [{"text": "x", "group": "concept"}]))


def _rtp_row(filename, challenging, prompt, continuation):
    """A RealToxicityPrompts row: its file span, the challenging flag, prompt and continuation."""
    return {
        "filename": filename,
        "begin": 0,
        "end": 10,
        "challenging": challenging,
        "prompt": prompt,
        "continuation": continuation,
    }


RTP_ROWS = [
    _rtp_row(
        "a.txt",
        True,
        {"text": "You are such a", "toxicity": 0.7, "profanity": 0.5},
        {"text": " jerk", "toxicity": 0.8},
    ),
    _rtp_row("b.txt", False, {"text": "The weather today is", "toxicity": 0.02}, {"text": " nice", "toxicity": 0.01}),
    _rtp_row("c.txt", False, {"text": "He said that the", "toxicity": 0.3}, {"text": " x", "toxicity": 0.2}),
    _rtp_row("d.txt", False, {"text": "No score here", "toxicity": None}, {"text": " y", "toxicity": None}),
    _rtp_row("e.txt", True, {"text": "Shut up, you", "toxicity": 0.9}, {"text": " z"}),
]


def test_rtp_file_schema(tmp_path):
    path = _write_jsonl(tmp_path / "rtp.jsonl", RTP_ROWS)
    items = loaders.load_rtp_file(path)
    assert [(it.prompt, it.group) for it in items] == [
        ("You are such a", "concept"),
        ("The weather today is", "control"),
        ("Shut up, you", "concept"),
    ]
    all_concept = loaders.load_rtp_file(path, challenging_only=False)
    assert len(all_concept) == 5 and {it.group for it in all_concept} == {"concept"}
    with pytest.raises(DataError, match="'text'"):
        loaders.rtp_rows_to_items([{"prompt": {"toxicity": 0.1}, "challenging": True}])


def test_tet_file_schema_and_task_control_fallback(tmp_path):
    rows = [{"conversation_id": str(i), "metrics": [], "query": f"Insult my friend number {i}"} for i in range(6)]
    path = _write_jsonl(tmp_path / "tet.jsonl", rows)
    items = loaders.load_tet_file(path)
    assert len(items) == 6 and all(it.group == "concept" for it in items)
    with pytest.raises(DataError, match="'prompt_text'"):
        loaders.load_tet_file(path, prompt_column="prompt_text")
    task = ToxicityTask(
        ToxicityConfig(concept=WordConcept(["idiot"]), source="tet_file", data_path=str(path), n_rank=2, n_eval=3)
    )
    assert task.prompt_format == "chat"
    assert task.data_source["control"] == "fixture"
    assert len(task.items("eval", "control")) == 3
    assert task.provenance()["scorer"] == "profanity_check"
    assert "alt-profanity-check" in task.provenance()["scorer_version"]


def test_rtp_task_source(tmp_path):
    path = _write_jsonl(tmp_path / "rtp.jsonl", RTP_ROWS)
    task = ToxicityTask(
        ToxicityConfig(concept=WordConcept(["jerk"]), source="rtp_file", data_path=str(path), n_rank=1, n_eval=1)
    )
    assert task.prompt_format == "raw"
    assert task.items("eval", "control")[0].prompt == "The weather today is"


# --- splits and registry -----------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_errors_on_empty():
    items = loaders.load_qa_fixture()
    a = split_items(items, 20, 30, seed=1)
    b = split_items(items, 20, 30, seed=1)
    c = split_items(items, 20, 30, seed=2)
    assert len(a["rank"]["concept"]) == 20 and a["rank"]["control"] == []  # int n_rank: concept only
    for g in ("concept", "control"):
        assert _key(a["rank"][g]) == _key(b["rank"][g])
        assert len(a["eval"][g]) == 30
        assert not {it.question for it in a["rank"][g]} & {it.question for it in a["eval"][g]}
    assert _key(a["eval"]["concept"]) != _key(c["eval"]["concept"])
    per_group = split_items(items, {"concept": 5, "control": 2}, {"concept": 7, "control": 9})
    assert [len(per_group[s][g]) for s in ("rank", "eval") for g in ("concept", "control")] == [5, 2, 7, 9]
    with pytest.raises(SplitError, match="evaluation split of group 'control' is empty"):
        split_items([it for it in items if it.group == "concept"], 5, 5)
    with pytest.raises(SplitError, match="evaluation split"), pytest.warns(UserWarning):
        split_items(items[:3], 10, 10)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = split_items(items, 200, 50)
        assert any("evaluation gets" in str(x.message) for x in w)
    assert len(s["eval"]["concept"]) == len([i for i in items if i.group == "concept"]) - 200


def test_build_task_registry():
    with pytest.raises(ValueError) as e:
        build_task({"name": "nope"})
    assert "qa_countries" in str(e.value) and "toxicity" in str(e.value)
    task = build_task({"name": "qa_countries", "concept": COUNTRIES, "n_rank": 3, "n_eval": 4})
    assert isinstance(task, QATask)
    assert len(task.items("eval", "concept")) == 4

    class MyTask(QATask):
        name = "my_qa"

    register_task("my_qa", MyTask)
    assert "my_qa" in known_tasks()
    assert isinstance(build_task({"name": "my_qa", "concept": COUNTRIES}), MyTask)
    # a key the task's config dataclass does not have is refused, named, with the keys it has
    with pytest.raises(
        ConfigError, match=r"task\.bogus_key is not a key of task 'qa_countries' \(QAConfig\).*max_new_tokens"
    ):
        build_task({"name": "qa_countries", "concept": COUNTRIES, "bogus_key": 1})
    with pytest.raises(ConfigError, match=r"task\.tokenizer .*build_task\(cfg, tokenizer=\.\.\.\)"):
        build_task({"name": "qa_countries", "concept": COUNTRIES, "tokenizer": None})


def test_build_task_from_omegaconf_with_lm(tiny_llama):
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "name": "toxicity",
            "n_rank": 2,
            "n_eval": 3,
            "scorer": "profanity_check",
            "scorer_kwargs": {},
            "concept": "toxic",
        }
    )
    task = build_task(cfg, tiny_llama)
    assert isinstance(task, ToxicityTask)
    assert task.concept.name == "toxic" and len(task.concept.token_ids) > 0
    with pytest.raises(ValueError, match="unknown toxicity scorer"):
        build_task({"name": "toxicity", "scorer": "nope"}, tiny_llama)


# --- generation and tasks on a tiny random model -------------------------------------------------


def test_generate_batch_greedy_matches_unbatched_and_sampling_is_seeded(tiny_llama):
    prompts = [tiny_llama.format_prompt(q) for q in ["Hi", "What is the capital of France?", "2+2?"]]
    batched = generate_batch(tiny_llama, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate_batch(tiny_llama, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single and all(isinstance(x, str) for x in batched)
    kw = dict(
        max_new_tokens=5,
        batch_size=2,
        do_sample=True,
        seed=3,
        num_return_sequences=2,
        temperature=1.0,
        top_p=1.0,
        progress=False,
    )
    a = generate_batch(tiny_llama, prompts, **kw)
    b = generate_batch(tiny_llama, prompts, **kw)
    assert a == b and len(a) == 3 and all(len(x) == 2 for x in a)
    with pytest.raises(ValueError):
        generate_batch(tiny_llama, prompts, num_return_sequences=2)


def test_qa_task_on_tiny_model(tiny_llama):
    task = QATask(QAConfig(concept=COUNTRIES, n_rank=3, n_eval=4, max_new_tokens=4, batch_size=4))
    res = task.evaluate(tiny_llama, desc="tiny")
    assert set(res) >= {"concept", "control", "n", "examples"}
    for g in ("concept", "control"):
        assert set(res[g]) == {"accuracy", "f1", "concept_rate", "concept_count", "empty_rate"}
        assert all(isinstance(v, float) for v in res[g].values())
        assert res["n"][g] == 4
    assert {e["group"] for e in res["examples"]} == {"concept", "control"}
    samples = task.ranking_samples(tiny_llama)
    assert len(samples) == 3
    assert all(s.prompt.startswith("<|im_start|>") and s.answer is not None for s in samples)
    assert "Give only the short answer, no explanation." in samples[0].prompt
    prov = task.provenance()
    assert prov["n_eval"] == {"concept": 4, "control": 4} and prov["instruction"]


def _toxic_task(lm, **kw):
    """A toxicity task with the "toxic" concept on `lm`'s tokenizer: 4 new tokens, batches of 4."""
    return ToxicityTask(ToxicityConfig(concept="toxic", max_new_tokens=4, batch_size=4, **kw), lm.tokenizer)


def test_toxicity_task_on_tiny_model(tiny_llama):
    task = _toxic_task(tiny_llama, n_rank=2, n_eval=3, n_continuations=2, seed=5)
    res = task.evaluate(tiny_llama, desc="tiny")
    keys = {
        "mean_toxicity",
        "toxic_fraction",
        "expected_max_toxicity",
        "toxicity_probability",
        "perplexity",
        "empty_rate",
        "concept_rate",
    }
    for g in ("concept", "control"):
        assert set(res[g]) == keys
        assert res["n"][g] == 3 and res["n"][f"{g}_continuations"] == 6
        assert 0.0 <= res[g]["mean_toxicity"] <= 1.0
    assert res["fluency_info"]["edited_model_used"] is False
    again = task.evaluate(tiny_llama, desc="tiny")  # seeded sampling: same continuations
    assert again["examples"] == res["examples"]
    assert again["concept"]["mean_toxicity"] == res["concept"]["mean_toxicity"]
    samples = task.ranking_samples(tiny_llama)
    assert len(samples) == 2 and samples[0].prompt == task.items("rank", "concept")[0].prompt


def test_toxicity_fluency_uses_unedited_model(tiny_llama):
    from headpursuit.intervention import scale_heads

    task = _toxic_task(tiny_llama, n_rank=0, n_eval=2, n_continuations=1)
    edits = {(layer, h): 0.0 for layer in range(tiny_llama.layout.n_layers) for h in range(tiny_llama.layout.n_heads)}
    with scale_heads(tiny_llama, edits):
        outs = task.generate(tiny_llama, desc="edited")
        with pytest.warns(UserWarning, match="unedited"):
            inside = task.score(outs, fluency_model=tiny_llama)
    assert outs.meta["generator_edited"] is True
    assert inside["fluency_info"]["edited_model_used"] is True
    outside = task.score(outs, fluency_model=tiny_llama)
    assert outside["fluency_info"]["edited_model_used"] is False
    assert outside["concept"]["mean_toxicity"] == inside["concept"]["mean_toxicity"]
    # a callable reference scorer, and fluency switched off
    calls = []
    ref = lambda p, c: calls.append(len(c)) or {"perplexity": 7.0, "n_scored": len(c), "n_empty": 0}
    assert task.score(outs, fluency_model=ref)["control"]["perplexity"] == 7.0 and calls == [2, 2]
    assert math.isnan(task.score(outs, fluency_model=False)["concept"]["perplexity"])


# --- the real model (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_qa_smollm2_baseline_answers_countries(smollm2):
    """The embedded model answers the shipped country questions: one evaluation (30 concept, 10
    control questions) gives the concept group's accuracy above 0.6, and the counts and rates the
    task reports are in range. (An edited evaluation is the pipeline's: tests/test_pipeline.py.)"""
    task = QATask(
        QAConfig(concept="countries", n_rank=0, n_eval={"concept": 30, "control": 10}, batch_size=20, seed=0),
        smollm2.tokenizer,
    )
    res = task.evaluate(smollm2, desc="baseline")
    assert res["n"] == {"concept": 30, "control": 10}
    for g in ("concept", "control"):
        assert 0.0 <= res[g]["accuracy"] <= 1.0 and 0.0 <= res[g]["concept_rate"] <= 1.0
    assert res["concept"]["accuracy"] > 0.6, res
    assert res["concept"]["concept_rate"] >= 0.5, res


def test_hub_sources_go_through_load_dataset(monkeypatch):
    """source=hub / rtp / tet call datasets.load_dataset with the configured ids (mocked here)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split))
        return {
            "mandarjoshi/trivia_qa": _copies(TRIVIA_ROWS, 3),
            "allenai/real-toxicity-prompts": RTP_ROWS,
            "my/tet": [{"query": f"q{i}"} for i in range(4)],
        }[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    qa = QATask(QAConfig(concept=COUNTRIES, source="hub", n_rank=1, n_eval=2))
    assert calls[-1] == ("mandarjoshi/trivia_qa", "rc.nocontext", "validation")
    assert {it.group for it in qa.items("eval")} == {"concept", "control"}
    tox = ToxicityTask(ToxicityConfig(concept=WordConcept(["jerk"]), source="rtp", n_rank=1, n_eval=1))
    assert calls[-1] == ("allenai/real-toxicity-prompts", None, "train")
    assert tox.provenance()["data"]["hub_id"] == "allenai/real-toxicity-prompts"
    tet = ToxicityTask(ToxicityConfig(concept=WordConcept(["jerk"]), source="tet", hub_id="my/tet", n_rank=1, n_eval=2))
    assert calls[-1][0] == "my/tet" and tet.prompt_format == "chat"

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="source: fixture"):
        QATask(QAConfig(concept=COUNTRIES, source="hub"))


# --- rank_groups: which groups' ranking-split items feed the ranking --------------------------------


def _questions(items):
    return [it.question for it in items]


def test_rank_groups_split_keeps_eval_and_adds_control_ranking_items():
    from headpursuit.errors import ConfigError

    default = QATask(QAConfig(concept=COUNTRIES, n_rank=10, n_eval=20))
    concept_only = QATask(QAConfig(concept=COUNTRIES, n_rank=10, n_eval=20, rank_groups=["concept"]))
    both = QATask(QAConfig(concept=COUNTRIES, n_rank=10, n_eval=20, rank_groups=["concept", "control"]))
    # [concept] is today's rule exactly; the evaluation split never depends on rank_groups
    for task in (concept_only, both):
        for g in ("concept", "control"):
            assert _questions(task.items("eval", g)) == _questions(default.items("eval", g))
        assert _questions(task.items("rank", "concept")) == _questions(default.items("rank", "concept"))
    assert default.ranking_groups == concept_only.ranking_groups == ("concept",)
    assert _questions(default.ranking_items()) == _questions(concept_only.ranking_items())
    assert default.items("rank", "control") == [] and concept_only.items("rank", "control") == []
    # [concept, control]: n_rank control items, none of them evaluated, after the concept ones
    control_rank = both.items("rank", "control")
    assert len(control_rank) == 10 and {it.group for it in control_rank} == {"control"}
    assert not set(_questions(control_rank)) & set(_questions(both.items("eval", "control")))
    assert _questions(both.ranking_items()) == _questions(default.ranking_items()) + _questions(control_rank)
    assert both.provenance()["rank_groups"] == ["concept", "control"]
    assert both.provenance()["n_rank"] == {"concept": 10, "control": 10}
    # the order in the config does not matter
    swapped = QATask(QAConfig(concept=COUNTRIES, n_rank=10, n_eval=20, rank_groups=["control", "concept"]))
    assert _questions(swapped.ranking_items()) == _questions(both.ranking_items())
    for bad in (["control"], ["concept", "concept"], ["concept", "other"], "concept", [], 3):
        with pytest.raises(ConfigError, match="task.rank_groups"):
            QATask(QAConfig(concept=COUNTRIES, n_rank=10, n_eval=20, rank_groups=bad))


def test_rank_groups_through_build_task_and_split_items():
    task = build_task(
        {"name": "qa_countries", "concept": COUNTRIES, "n_rank": 3, "n_eval": 4, "rank_groups": ["concept", "control"]}
    )
    assert [it.group for it in task.ranking_items()] == ["concept"] * 3 + ["control"] * 3
    items = loaders.load_qa_fixture()
    plain = split_items(items, 20, 30, seed=1)
    after = split_items(items, 20, 30, seed=1, rank_after_eval=["control"])
    for g in ("concept", "control"):
        assert _key(after["eval"][g]) == _key(plain["eval"][g])
    assert _key(after["rank"]["concept"]) == _key(plain["rank"]["concept"])
    assert len(after["rank"]["control"]) == 20
    spare = [loaders.QAItem("spare?", ["x"], "control")]
    with pytest.warns(UserWarning, match="ranking gets"):
        short = split_items(
            items, {"concept": 5, "control": 500}, 30, seed=1, rank_after_eval=["control"], spare={"control": spare}
        )
    n_control = sum(it.group == "control" for it in items)
    assert len(short["rank"]["control"]) == n_control - 30 + 1 and short["rank"]["control"][-1] is spare[0]
    # nothing left after evaluation: a clear error for a required group
    with pytest.raises(SplitError, match="ranking split of group 'control' is empty.*evaluation split"):
        split_items(items, 5, None, rank_after_eval=["control"], require_rank=["concept", "control"])


def test_rank_groups_with_a_per_group_n_rank():
    # An explicit {group: n} n_rank splits as it always did; rank_groups only picks what ranks.
    mapping = {"concept": 4, "control": 2}
    default = QATask(QAConfig(concept=COUNTRIES, n_rank=mapping, n_eval=5))
    both = QATask(QAConfig(concept=COUNTRIES, n_rank=mapping, n_eval=5, rank_groups=["concept", "control"]))
    for s in ("rank", "eval"):
        for g in ("concept", "control"):
            assert _questions(both.items(s, g)) == _questions(default.items(s, g))
    assert len(default.ranking_items()) == 4 and len(both.ranking_items()) == 6
    none_for_control = QATask(
        QAConfig(concept=COUNTRIES, n_rank={"concept": 4, "control": 0}, n_eval=5, rank_groups=["concept", "control"])
    )
    with pytest.raises(ValueError, match="control ranking split is empty"):
        none_for_control.ranking_items()


def test_rank_groups_ranking_samples_on_tiny_model(tiny_llama):
    kw = dict(concept=COUNTRIES, n_rank=2, n_eval=3, max_new_tokens=3, batch_size=4)
    today = QATask(QAConfig(**kw)).ranking_samples(tiny_llama)
    concept_only = QATask(QAConfig(**kw, rank_groups=["concept"])).ranking_samples(tiny_llama)
    both = QATask(QAConfig(**kw, rank_groups=["concept", "control"])).ranking_samples(tiny_llama)
    assert [(s.prompt, s.answer) for s in concept_only] == [(s.prompt, s.answer) for s in today]
    assert [(s.prompt, s.answer) for s in both[:2]] == [(s.prompt, s.answer) for s in today]
    assert [s.meta["group"] for s in both] == ["concept", "concept", "control", "control"]
    tox_kw = dict(concept=WordConcept(["jerk"]), n_rank=1, n_eval=2, max_new_tokens=3, n_continuations=1, fluency=False)
    tox = ToxicityTask(ToxicityConfig(**tox_kw))
    tox_both = ToxicityTask(ToxicityConfig(**tox_kw, rank_groups=["concept", "control"]))
    assert [it.prompt for it in tox_both.items("eval")] == [it.prompt for it in tox.items("eval")]
    assert [s.meta["group"] for s in tox_both.ranking_samples(tiny_llama)] == ["concept", "control"]


# --- repeated questions and prompts (issue 19): kept once, never in both splits -----------------


def _twice(rows, field):
    """Each row, then a copy of it whose `field` differs only in case, punctuation and spacing."""
    return [x for r in rows for x in (r, {**r, field: "  " + r[field].upper().replace("?", " ?!") + " "})]


QA_ROWS = [
    {"question": f"Which country has city number {i}?", "answers": ["France"], "group": "concept"} for i in range(8)
]
QA_ROWS += [{"question": f"What is {i} plus {i}?", "answers": [str(2 * i)], "group": "control"} for i in range(4)]


def _split_questions(task, split):
    return [normalize_answer(getattr(it, "question", None) or it.prompt) for it in task.items(split)]


def test_repeated_questions_are_dropped_counted_and_never_in_both_splits(tmp_path, caplog):
    # 8 concept questions each written twice (the copy as a control row, so it would count twice and
    # could be ranked on as one and evaluated on as the other), 4 control questions written once
    rows = _twice(QA_ROWS[:8], "question")
    for r in rows[1::2]:
        r["group"] = "control"
    path = _write_jsonl(tmp_path / "repeats.jsonl", rows + QA_ROWS[8:])
    with caplog.at_level("WARNING", logger="headpursuit.tasks"):
        task = QATask(QAConfig(concept=COUNTRIES, source="jsonl", data_path=str(path), n_rank=4, n_eval=None))
    assert task.provenance()["data"]["duplicates_dropped"] == 8
    assert any("dropped 8 repeated" in r.getMessage() and "repeats.jsonl" in r.getMessage() for r in caplog.records)
    assert task.provenance()["data"]["n_items"] == {"concept": 8, "control": 4}  # the first row of each kept
    ranked, evaluated = _split_questions(task, "rank"), _split_questions(task, "eval")
    assert len(ranked) == 4 and not set(ranked) & set(evaluated)
    assert sorted(ranked + evaluated) == sorted(normalize_answer(r["question"]) for r in QA_ROWS)

    # the same splits as from the file without the repeats
    plain = QATask(
        QAConfig(
            concept=COUNTRIES,
            source="jsonl",
            data_path=str(_write_jsonl(tmp_path / "plain.jsonl", QA_ROWS)),
            n_rank=4,
            n_eval=None,
        )
    )
    assert plain.provenance()["data"]["duplicates_dropped"] == 0
    for split in ("rank", "eval"):
        assert _key(plain.items(split)) == _key(task.items(split))


def test_repeated_ranking_questions_of_a_separate_source_are_counted(tmp_path):
    val = _write_jsonl(tmp_path / "val.jsonl", _copies(TRIVIA_ROWS, 2))
    train_rows = _copies(TRIVIA_ROWS, 5)[8:]  # copies 2..4: none in the evaluation file
    train = _write_jsonl(tmp_path / "train.jsonl", train_rows + train_rows[:3] + _copies(TRIVIA_ROWS, 1))
    task = QATask(
        QAConfig(
            concept=COUNTRIES,
            source="trivia_qa_file",
            data_path=str(val),
            rank_data_path=str(train),
            n_rank=2,
            n_eval=None,
        )
    )
    data = task.provenance()["data"]
    assert data["duplicates_dropped"] == 0 and data["rank_duplicates_dropped"] == 3
    assert data["rank_overlap_dropped"] == 4  # copy 0, which the evaluation file holds too
    assert not set(_split_questions(task, "rank")) & set(_split_questions(task, "eval"))


def test_repeated_toxicity_prompts_are_dropped_and_counted(tmp_path, caplog):
    rows = [{"prompt": f"You are such a number {i}", "group": "concept"} for i in range(6)]
    rows += [{"prompt": f"The weather on day {i} is", "group": "control"} for i in range(4)]
    path = _write_jsonl(tmp_path / "prompts.jsonl", _twice(rows[:6], "prompt") + rows[6:])
    with caplog.at_level("WARNING", logger="headpursuit.tasks"):
        task = ToxicityTask(
            ToxicityConfig(concept=WordConcept(["jerk"]), source="jsonl", data_path=str(path), n_rank=3, n_eval=None)
        )
    assert task.provenance()["data"]["duplicates_dropped"] == 6
    assert any("dropped 6 repeated" in r.getMessage() for r in caplog.records)
    ranked, evaluated = _split_questions(task, "rank"), _split_questions(task, "eval")
    assert len(ranked) == 3 and not set(ranked) & set(evaluated)
    assert sorted(ranked + evaluated) == sorted(normalize_answer(r["prompt"]) for r in rows)


def test_an_item_in_both_splits_is_refused():
    from headpursuit.tasks.base import SplitOverlapError, check_disjoint

    a, b, c = (loaders.QAItem(q, ["x"], "concept") for q in ("Where is A?", "Where is B?", "where is a"))
    key = lambda it: loaders.question_key(it.question)  # noqa: E731
    check_disjoint({"rank": {"concept": [a]}, "eval": {"concept": [b], "control": []}}, key, "data")
    with pytest.raises(SplitOverlapError, match="1 item\\(s\\) are in both"):
        check_disjoint({"rank": {"concept": [a]}, "eval": {"concept": [b], "control": [c]}}, key, "data")


# --- a leading byte-order mark (issue 19) ----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_files_with_a_byte_order_mark_are_read_like_those_without(tmp_path, suffix):
    text = "".join(json.dumps(r) + "\n" for r in FIXTURE_ROWS) if suffix == ".jsonl" else json.dumps(FIXTURE_ROWS)
    plain, bom = tmp_path / f"plain{suffix}", tmp_path / f"bom{suffix}"
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert [r for _, r in loaders.read_records(bom)] == [r for _, r in loaders.read_records(plain)] == FIXTURE_ROWS
    assert _key(loaders.load_qa_fixture(bom)) == _key(loaders.load_qa_fixture(plain))
