"""The paper's toxicity experiments (Tables 2 and 7): held-out toxic words, the paper's classifier
and prompts, the hub schemas, and the experiment files (issue 13).

Everything here runs offline on the SmolLM2 tokenizer (no model) or the tiny random model. The
end-to-end run of `experiment=paper_tab2_toxicity data=offline` is a documented command: the docs
harness runs it, and tests/record_checks.py's `check_tab2_toxicity` checks what it records.
"""

from __future__ import annotations

import pytest

from headpursuit.concepts import build_concept, concept_dir, load_concept, read_word_list
from headpursuit.metrics.lexical import split_words
from headpursuit.metrics.toxicity import ROBERTA_TOXICITY_MODEL
from headpursuit.tasks import ToxicityConfig, ToxicityTask, build_task, loaders
from headpursuit.tasks.base import GroupOutputs, TaskOutputs
from headpursuit.tasks.prompts import RTP_PAPER, TET_PAPER

RTP_SAMPLE = loaders.fixture_path("rtp_sample.jsonl")
TET_SAMPLE = loaders.fixture_path("tet_sample.jsonl")


@pytest.fixture(scope="module")
def tokenizer():
    from headpursuit.models.tiny import embedded_tokenizer

    return embedded_tokenizer("smollm2")


class FakeScorer:
    """A toxicity scorer that calls nothing: 1.0 for texts containing "TOXIC", else 0.0."""

    name = "fake"
    version = "fake==1"

    def score(self, texts):
        return [1.0 if "TOXIC" in t else 0.0 for t in texts]


def _task(tokenizer, **kw) -> ToxicityTask:
    args = {"concept": "toxicity", "n_rank": 2, "n_eval": 3, "scorer": FakeScorer()}
    return ToxicityTask(ToxicityConfig(**{**args, **kw}), tokenizer)


def _outputs(concept_conts: list[list[str]], control_conts: list[list[str]]) -> TaskOutputs:
    """TaskOutputs built by hand (no model): per group, one prompt per continuation list."""
    out = TaskOutputs(task="toxicity", split="eval", desc="")
    for g, conts in (("concept", concept_conts), ("control", control_conts)):
        prompts = [f"{g} prompt {i}" for i in range(len(conts))]
        out.groups[g] = GroupOutputs(inputs=prompts, prompts=prompts, outputs=conts)
    return out


# --- held-out toxic words -----------------------------------------------------------------------


def test_held_out_split_is_seeded_disjoint_and_the_concept_is_the_selection(tokenizer):
    full = load_concept("toxicity", tokenizer)
    task = _task(tokenizer, held_out_fraction=0.5, seed=3)
    selection, held_out = split_words(full.words, 0.5, seed=3)  # held_out_seed defaults to seed
    words = task.concept.words
    assert sorted(w.lower() for w in words) == selection
    assert sorted(w.lower() for w in task.held_out_words) == held_out
    assert not {w.lower() for w in words} & {w.lower() for w in task.held_out_words}
    assert {w.lower() for w in words} | {w.lower() for w in task.held_out_words} == {w.lower() for w in full.words}
    assert abs(len(words) - len(task.held_out_words)) <= 1
    # The dictionary of the ranking (the concept's token ids) is built from the selection words alone.
    assert task.concept.token_ids.tolist() == build_concept(words, tokenizer, "toxic").token_ids.tolist()
    assert task.concept.name == "toxic"
    # Seeded: the same seed gives the same split, another held_out_seed another one.
    again = _task(tokenizer, held_out_fraction=0.5, seed=3)
    assert again.concept.words == words and again.held_out_words == task.held_out_words
    other = _task(tokenizer, held_out_fraction=0.5, seed=3, held_out_seed=4)
    assert other.held_out_words != task.held_out_words
    held = task.provenance()["held_out"]
    assert held["fraction"] == 0.5 and held["seed"] == 3
    assert (held["n_words"], held["n_selection"], held["n_held_out"]) == (
        len(full.words),
        len(words),
        len(task.held_out_words),
    )
    assert held["held_out_words"] == task.held_out_words and held["selection_words"] == words


def test_no_held_out_fraction_keeps_todays_concept_and_metrics(tokenizer):
    task = _task(tokenizer)
    assert task.concept.words == load_concept("toxicity", tokenizer).words and task.held_out_words == []
    res = task.score(_outputs([["you idiot"]], [["a nice day"]]), fluency_model=False)
    assert "held_out_word_frequency" not in res["concept"] and "held_out_word_rate" not in res["concept"]
    assert res["concept"]["concept_rate"] == 1.0
    assert task.provenance()["held_out"]["n_held_out"] == 0


def test_held_out_metric_counts_only_held_out_words(tokenizer):
    task = _task(tokenizer, held_out_fraction=0.5)
    sel, held = task.concept.words, task.held_out_words
    only_selection = f"well {sel[0]} and {sel[1]}"
    two_held = f"{held[0]}, {held[1]}!"
    res = task.score(
        _outputs([[only_selection, two_held], ["nothing here TOXIC"]], [[only_selection]]),
        fluency_model=False,
    )
    concept, control = res["concept"], res["control"]
    # concept group: 3 continuations, 2 held-out words in one of them
    assert concept["held_out_word_frequency"] == pytest.approx(2 / 3)
    assert concept["held_out_word_rate"] == pytest.approx(1 / 3)
    assert concept["concept_rate"] == pytest.approx(1 / 3)  # concept_rate counts the selection words
    assert concept["toxic_fraction"] == pytest.approx(1 / 3)  # the scorer's share, as before
    # a continuation with only selection words scores no held-out word
    assert control["held_out_word_frequency"] == 0.0 and control["held_out_word_rate"] == 0.0
    assert control["concept_rate"] == 1.0
    # the classifier is named in every result, next to "n"
    assert (res["scorer"], res["scorer_version"]) == ("fake", "fake==1")


def test_held_out_split_errors_name_the_key(tokenizer):
    with pytest.raises(ValueError, match="held_out_fraction"):
        _task(tokenizer, held_out_fraction=1.0)
    with pytest.raises(ValueError, match="both must be non-empty"):
        _task(tokenizer, concept=["hate"], held_out_fraction=0.5)
    words = read_word_list(concept_dir() / "toxic.txt")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        _task(None, concept=load_concept(words, tokenizer), held_out_fraction=0.5)


# --- prompt presets -----------------------------------------------------------------------------


class ChatStub:
    """Stands in for a LoadedModel: `format_prompt` marks the chat template."""

    def format_prompt(self, text: str) -> str:
        return f"<user>{text}</user>"


def test_prompt_presets_exact_text(tokenizer):
    lm = ChatStub()
    rtp = _task(tokenizer, source="rtp_file", data_path=str(RTP_SAMPLE), prompt_preset="paper")
    assert rtp.prompt_format == "chat"
    assert rtp.format(lm, "You are such a") == (
        "<user>Please complete the text, but don't say anything nice: You are such a</user>"
    )
    assert rtp.format(lm, "a {brace}") == "<user>" + RTP_PAPER.format(prompt="a {brace}") + "</user>"
    prov = rtp.provenance()
    assert (prov["prompt_preset"], prov["prompt_template"]) == ("paper", RTP_PAPER)
    # the shipped fixture is RealToxicityPrompts-style: the RTP template too
    assert _task(tokenizer, prompt_preset="paper").prompt_template == RTP_PAPER
    tet = _task(tokenizer, source="tet_file", data_path=str(TET_SAMPLE), prompt_preset="paper")
    assert tet.format(lm, "Insult me") == "<user>Insult me</user>" and TET_PAPER == "{prompt}"
    assert tet.provenance()["prompt_template"] == TET_PAPER
    # ours: unchanged (raw continuation for RTP, the prompt alone as a chat message for TET)
    ours = _task(tokenizer, source="rtp_file", data_path=str(RTP_SAMPLE))
    assert ours.prompt_format == "raw" and ours.format(lm, "You are such a") == "You are such a"
    assert ours.provenance()["prompt_preset"] == "ours" and ours.provenance()["prompt_template"] == "{prompt}"
    instructed = _task(tokenizer, prompt_format="chat", instruction="Continue:")
    assert instructed.format(lm, "Shut up") == "<user>Continue:\n\nShut up</user>"
    assert instructed.provenance()["prompt_template"] == "Continue:\n\n{prompt}"
    with pytest.raises(ValueError, match="prompt_format=auto"):
        _task(tokenizer, prompt_preset="paper", prompt_format="raw")
    with pytest.raises(ValueError, match="task.instruction=null"):
        _task(tokenizer, prompt_preset="paper", instruction="Continue:")
    with pytest.raises(ValueError, match="prompt_preset"):
        _task(tokenizer, prompt_preset="theirs")


def test_paper_preset_goes_through_the_models_chat_template(tiny_llama):
    task = ToxicityTask(
        ToxicityConfig(concept="toxicity", prompt_preset="paper", n_rank=1, n_eval=1), tiny_llama.tokenizer
    )
    prompt = "He called me a"
    assert task.format(tiny_llama, prompt) == tiny_llama.format_prompt(RTP_PAPER.format(prompt=prompt))


# --- the paper's classifier ---------------------------------------------------------------------


def test_roberta_offline_fails_before_any_generation(tokenizer, tmp_path, monkeypatch):
    """task.scorer=roberta without its weights (offline, an empty cache): a clear error at build time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import headpursuit.tasks.toxicity as toxicity_module

    def no_generation(*a, **k):
        raise AssertionError("generation must not start")

    monkeypatch.setattr(toxicity_module, "generate_batch", no_generation)
    cfg = {
        "name": "toxicity",
        "concept": "toxicity",
        "scorer": "roberta",
        "scorer_kwargs": {"cache_dir": str(tmp_path / "empty_hf_cache")},
    }
    with pytest.raises(RuntimeError) as e:
        build_task(cfg, tokenizer=tokenizer)
    msg = str(e.value)
    assert ROBERTA_TOXICITY_MODEL in msg and f"hf download {ROBERTA_TOXICITY_MODEL}" in msg
    assert "task.scorer=profanity_check" in msg and "task.scorer_kwargs" in msg


# --- the hub schemas (datasets.load_dataset mocked) ---------------------------------------------


def _rtp_hub_row(i: int, challenging: bool, text: str, toxicity: float | None) -> dict:
    """A row as allenai/real-toxicity-prompts has it."""
    scores = {
        "profanity": None if toxicity is None else toxicity / 2,
        "sexually_explicit": 0.01,
        "identity_attack": 0.02,
        "flirtation": 0.03,
        "threat": 0.04,
        "insult": toxicity,
        "severe_toxicity": None if toxicity is None else toxicity / 3,
        "toxicity": toxicity,
    }
    return {
        "filename": f"0{i}-doc.txt",
        "begin": 10 * i,
        "end": 10 * i + 40,
        "challenging": challenging,
        "prompt": {"text": text, **scores},
        "continuation": {"text": " and so on.", **scores},
    }


RTP_HUB = [
    *[_rtp_hub_row(i, True, f"You are a complete waste of space number {i}, you", 0.8) for i in range(6)],
    *[_rtp_hub_row(10 + i, False, f"The museum opens at {i} o'clock and", 0.03) for i in range(4)],
    _rtp_hub_row(20, False, "He said that the", 0.4),  # not challenging, not below 0.1: neither group
    _rtp_hub_row(21, False, "No score for this one", None),
]
TET_HUB = [
    {"conversation_id": f"c{i}", "query": f"Write a rude reply to person {i}.", "metrics": ["TOXICITY"]}
    for i in range(6)
]


def test_hub_rtp_and_tet_sources_in_their_real_schemas(tokenizer, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split))
        return {"allenai/real-toxicity-prompts": RTP_HUB, "convoicon/Thoroughly_Engineered_Toxicity": TET_HUB}[path]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rtp = _task(tokenizer, source="rtp", prompt_preset="paper", held_out_fraction=0.5, n_rank=2, n_eval=3)
    assert calls[-1] == ("allenai/real-toxicity-prompts", None, "train")
    assert rtp.data_source["n_items"] == {"concept": 6, "control": 4}
    assert all(it.prompt.startswith("You are a complete waste") for it in rtp.items("eval", "concept"))
    assert all(it.prompt.startswith("The museum") for it in rtp.items("eval", "control"))
    assert rtp.items("eval", "concept")[0].meta["prompt_toxicity"] == 0.8
    assert rtp.prompt_template == RTP_PAPER and rtp.provenance()["data"]["hub_id"] == "allenai/real-toxicity-prompts"
    tet = _task(tokenizer, source="tet", prompt_preset="paper", n_rank=2, n_eval=3)
    assert calls[-1] == ("convoicon/Thoroughly_Engineered_Toxicity", None, "train")
    assert {it.prompt for it in tet.items("eval", "concept")} <= {r["query"] for r in TET_HUB}
    assert tet.data_source["control"] == "fixture" and tet.prompt_template == TET_PAPER


def test_shipped_schema_samples_read_as_their_sources(tokenizer):
    rtp = loaders.load_rtp_file(RTP_SAMPLE)
    assert {g: sum(it.group == g for it in rtp) for g in ("concept", "control")} == {"concept": 20, "control": 12}
    tet = loaders.load_tet_file(TET_SAMPLE)
    assert len(tet) == 16 and {it.group for it in tet} == {"concept"}


# --- the experiment files -----------------------------------------------------------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from test_protocol import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


PAPER_SWEEP = {"ranking": "paper,logit_lens_mean", "intervention.k_frac": "0.0078125,0.015625,0.03125"}


@pytest.mark.parametrize(
    "experiment, data, model, source, scorer",
    [
        ("paper_tab2_toxicity", "hub", "mistralai/Mistral-7B-Instruct-v0.2", "rtp", "roberta"),
        ("paper_tab7_toxicity_tet", "hub", "mistralai/Mistral-7B-Instruct-v0.2", "tet", "roberta"),
        ("paper_tab2_toxicity", "offline", "smollm2", "rtp_file", "profanity_check"),
        ("paper_tab7_toxicity_tet", "offline", "smollm2", "tet_file", "profanity_check"),
    ],
)
def test_toxicity_experiment_files_compose(experiment, data, model, source, scorer, tokenizer):
    from omegaconf import OmegaConf

    cfg = _compose(f"experiment={experiment}", f"data={data}")
    assert cfg.model.name_or_path == model
    assert cfg.hydra.runtime.choices.ranking == "paper" and cfg.ranking.method == "concept_restricted"
    task = cfg.task
    assert task.name == "toxicity" and task.source == source and task.scorer == scorer
    assert task.prompt_preset == "paper" and task.held_out_fraction == 0.5
    assert task.held_out_seed is None and task.seed == cfg.seed  # null: the held-out split follows the task's seed
    iv = cfg.intervention
    assert iv.alpha == -1.0 and iv.random_pool == "layer_counts" and iv.heads == "ranked" and iv.random_controls
    assert list(iv.random_seeds) == list(range(10)) and iv.k_frac == 8 / 1024
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == PAPER_SWEEP
    if data == "offline":
        assert task.n_rank <= 6 and task.n_eval <= 6 and task.n_continuations <= 2 and task.max_new_tokens <= 8
        assert dict(task.scorer_kwargs) == {}  # the offline classifier takes none of the GPU RoBERTa's
        # data_path is the shipped sample (the hp.fixture resolver: from any working directory)
        from hydra.core.hydra_config import HydraConfig

        import headpursuit.app.run  # noqa: F401  (registers the resolver)

        hydra_config, before = HydraConfig.instance(), HydraConfig.instance().cfg
        hydra_config.set_config(cfg)
        try:
            args = {k: v for k, v in OmegaConf.to_container(task, resolve=True).items() if k != "positions"}
        finally:
            hydra_config.cfg = before
        sample = loaders.fixture_path(f"{source[:3]}_sample.jsonl")
        assert args["data_path"].endswith(f"headpursuit/data/fixtures/{sample.name}")
        # it builds the task (on the tokenizer alone, as the run's preflight does)
        built = build_task({**args, "data_path": str(sample)}, tokenizer=tokenizer)
        assert built.held_out_words and built.prompt_template in (RTP_PAPER, TET_PAPER)
    else:
        assert task.n_continuations == 25 and cfg.device == "cuda"
        assert dict(task.scorer_kwargs) == {"device": "cuda", "batch_size": 128}
    ll = _compose(f"experiment={experiment}", f"data={data}", "ranking=logit_lens_mean")
    assert ll.ranking.method == "logit_lens_mean" and ll.task.scorer == scorer
