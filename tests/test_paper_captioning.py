"""The paper's captioning experiment (issue 13): CIDEr-D in the caption metrics, the quantity keyword
list, single-token dictionaries, the paper's caption prompts, and the paper_* experiment files.

The end-to-end run of `experiment=paper_tab13_captioning data=offline` is a documented command: the
docs harness runs it, and tests/record_checks.py's `check_tab13_captioning` checks what it records."""

from pathlib import Path

import pytest

from headpursuit.metrics.captions import caption_quality, metric_signatures
from headpursuit.metrics.cider import cider_d
from headpursuit.tasks.base import GroupOutputs, TaskOutputs
from headpursuit.tasks.captioning import DEFAULT_INSTRUCTION, CaptioningConfig, CaptioningTask
from headpursuit.tasks.prompts import CAPTION_PAPER

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    from headpursuit.models.tiny import embedded_tokenizer

    return embedded_tokenizer("smollm2")


# --- CIDEr-D beside BLEU / chrF -------------------------------------------------------------------


def test_caption_quality_reports_cider_d():
    refs = [["a red circle on a white background", "a red circle"], ["three dots in a row"], ["a blue square"]]
    caps = ["a red circle", "two dots", "a blue square on white"]
    q = caption_quality(caps, refs)
    assert set(q) == {"bleu", "chrf", "sentence_bleu", "cider"}
    assert q["cider"] == pytest.approx(cider_d(caps, refs)["cider"])
    # unpadded: an image with fewer references is scored on its own list
    assert q["cider"] > 0 and "CIDEr-D" in metric_signatures()["cider"]


def test_captioning_score_has_cider_per_group(tok):
    task = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=3), tok)
    caps = {"concept": ["a red circle", "a blue square", "green"], "control": ["stripes", "", "a checkerboard"]}
    groups = {}
    for g, texts in caps.items():
        items = task.items("eval", g)
        groups[g] = GroupOutputs(
            inputs=[str(i) for i in range(len(items))],
            prompts=["p"] * len(items),
            outputs=[[t] for t in texts[: len(items)]],
            references=[list(it.captions) for it in items],
        )
    res = task.score(TaskOutputs(task="captioning", split="eval", desc="", groups=groups))
    for g, go in groups.items():
        texts = [o[0] for o in go.outputs]
        assert res[g]["cider"] == pytest.approx(cider_d(texts, go.reference_lists())["cider"])
        assert {"bleu", "chrf", "concept_count"} <= set(res[g])
    assert "cider" in task.provenance()["caption_metrics"]


# --- concept word lists -------------------------------------------------------------------------------


def test_hub_flickr30k_schema_with_load_dataset_mocked(tok, monkeypatch):
    """task.source=hub reads `datasets.load_dataset(hub_id, hub_config, split=...)` rows in the
    lmms-lab/flickr30k schema (image, caption: a list of 5, sentids, img_id, filename)."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    colours = ["red", "blue", "green", "yellow"]
    rows = {"image": [], "caption": [], "sentids": [], "img_id": [], "filename": []}
    for i in range(12):
        coloured = i % 2 == 0
        word = colours[i % 4] if coloured else "small"
        rows["image"].append(Image.new("RGB", (16, 16), (10 * i, 0, 0)))
        rows["caption"].append([f"A {word} dog runs.", f"A dog {i}.", "A dog.", "An animal.", "A pet outside."])
        rows["sentids"].append([str(5 * i + j) for j in range(5)])
        rows["img_id"].append(str(i))
        rows["filename"].append(f"{1000 + i}.jpg")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "sentids": datasets.Sequence(datasets.Value("string")),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_dict(rows, features=features)
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if path != "lmms-lab/flickr30k":
            raise FileNotFoundError(path)
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = CaptioningTask(CaptioningConfig(source="hub", concept="colors", n_rank=2, n_eval=3), tok)
    assert calls == [("lmms-lab/flickr30k", None, "test")]
    concept_eval = task.items("eval", "concept")
    assert len(concept_eval) == 3 and len(task.items("eval", "control")) == 3
    # the concept group: images whose references name a colour (the even rows)
    assert all(int(it.meta["row"]) % 2 == 0 for it in concept_eval + task.items("rank", "concept"))
    assert all(len(it.captions) == 5 for it in concept_eval)
    assert task.provenance()["data"]["hub_id"] == "lmms-lab/flickr30k"


def test_quantity_concept_loads_by_name(tok):
    from headpursuit.concepts import available_concepts, load_concept

    assert {"colors", "sentiment", "quantity"} <= set(available_concepts())
    q = load_concept("quantity", tok)
    assert q.name == "quantity" and len(q) > 20
    assert {"two", "three", "several", "many", "few", "single", "pair", "group", "dozens"} <= set(q.words)
    assert q.count_in_text("Two dogs and a group of several children.") == 3
    assert load_concept("quantities", tok).words == q.words
    # as a task concept (task.concept=quantity)
    task = CaptioningTask(
        CaptioningConfig(concept="quantity", source="fixture", n_rank=1, n_eval=1, rank_groups=None), tok
    )
    assert task.concept.name == "quantity"


def test_single_token_only_keeps_multi_token_words_out_of_the_dictionary(tok):
    from headpursuit.concepts import load_concept

    full = load_concept("sentiment", tok)
    single = load_concept("sentiment", tok, single_token_only=True)
    assert full.multi_token_words and not single.multi_token_words
    assert set(single.token_id_set) < set(full.token_id_set)
    for w in full.multi_token_words:
        assert w not in single.word_token_ids and w in single.unusable_words
        assert single.count_in_text(f"it was {w}") == 1  # still counted in captions
    task = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2, single_token_only=True), tok)
    assert task.provenance()["single_token_only"] is True
    assert set(task.concept.token_id_set) <= set(
        CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2), tok).concept.token_id_set
    )


# --- the paper's caption prompts ------------------------------------------------------------------


def test_paper_caption_prompt_per_family(tok):
    paper = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2, prompt_preset="paper"), tok)
    assert paper.instruction_for("llava") == "Provide a one-sentence caption for the provided image."
    assert paper.instruction_for("gemma3_vl") == (
        "Provide a short, single-line description of this image. Respond only with the description."
    )
    assert paper.instruction_for("qwen_vl") == "Provide a short, single-line description of this image."
    assert paper.instruction_for("idefics") == CAPTION_PAPER["llava"]  # a family the paper did not use
    ours = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2), tok)
    assert ours.instruction_for("qwen_vl") == DEFAULT_INSTRUCTION and ours.provenance()["prompt_preset"] == "ours"
    mine = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2, instruction="Caption it."), tok)
    assert mine.instruction_for("llava") == "Caption it."
    with pytest.raises(ValueError, match="prompt_preset"):
        CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2, prompt_preset="Paper"), tok)


@pytest.mark.parametrize(
    "model_type, family", [("llava_next", "llava"), ("qwen2_5_vl", "qwen_vl"), ("gemma3", "gemma3_vl")]
)
def test_paper_caption_prompt_reaches_the_chat_template(model_type, family):
    from headpursuit.models.tiny_vlm import tiny_family_model_with_processor

    lm = tiny_family_model_with_processor(model_type)
    task = CaptioningTask(CaptioningConfig(n_rank=2, n_eval=2, prompt_preset="paper"), lm.tokenizer)
    assert lm.family.name == family and CAPTION_PAPER[family] in task.prompt(lm)
    prov = task.provenance()
    assert prov["prompt_family"] == family and prov["instruction"] == CAPTION_PAPER[family]


# --- the experiment files -------------------------------------------------------------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _sweep(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.hydra.sweeper.params)


PAPER_RANKING = ("concept_restricted", 50, True, False, False)


def _paper_ranking(cfg):
    r = cfg.ranking
    return (r.method, r.somp_steps, r.center, r.normalize_atoms, r.fold_norm_gain)


PAPER_K_FRACS = "0.0078125,0.015625,0.03125"  # 8, 16, 32 of 1024 heads


def _data(offline: bool) -> str:
    return "data=offline" if offline else "data=hub"


@pytest.mark.parametrize("offline", [False, True])
def test_fig10_alpha_files(offline):
    cfg = _compose("experiment=paper_fig10_alpha", _data(offline))
    assert cfg.model.name_or_path == ("tiny_vlm" if offline else "llava-hf/llava-v1.6-mistral-7b-hf")
    t = cfg.task
    assert (t.name, t.concept, t.positions, t.prompt_preset) == ("captioning", "colors", "image_mean", "paper")
    assert t.source == ("fixture" if offline else "hub") and cfg.hydra.runtime.choices.ranking == "paper"
    assert _paper_ranking(cfg) == PAPER_RANKING
    assert cfg.intervention.k_frac == 32 / 1024 and cfg.intervention.random_controls is False
    assert _sweep(cfg) == {"ranking": "paper", "intervention.k_frac": "0.03125", "intervention.alpha": "2,3,4,5,6,7,8"}
    if offline:
        assert t.n_rank <= 4 and t.n_eval <= 4 and t.max_new_tokens <= 8


@pytest.mark.parametrize("offline", [False, True])
def test_tab13_captioning_files(offline):
    cfg = _compose("experiment=paper_tab13_captioning", _data(offline))
    assert cfg.model.name_or_path == ("tiny_vlm" if offline else "llava-hf/llava-v1.6-mistral-7b-hf")
    t, iv = cfg.task, cfg.intervention
    assert (t.name, t.concept, t.positions, t.prompt_preset) == ("captioning", "colors", "image_mean", "paper")
    assert t.source == ("fixture" if offline else "hub") and _paper_ranking(cfg) == PAPER_RANKING
    assert iv.random_pool == "layer_counts" and iv.random_controls and iv.heads == "ranked"
    assert list(iv.random_seeds) == list(range(10))
    assert _sweep(cfg) == {
        "ranking": "paper,logit_lens_mean",
        "intervention.k_frac": PAPER_K_FRACS,
        "intervention.alpha": "-1,5",
    }
    # each job of the sweep composes (the command line's choices replace the file's)
    job = _compose(
        "experiment=paper_tab13_captioning", _data(offline), "ranking=logit_lens_mean", "intervention.alpha=5"
    )
    assert (
        job.ranking.method == "logit_lens_mean" and job.intervention.alpha == 5 and job.task.positions == "image_mean"
    )


@pytest.mark.parametrize("offline", [False, True])
def test_fig2_qa_files(offline):
    from omegaconf import OmegaConf

    cfg = _compose("experiment=paper_fig2_qa", _data(offline))
    t, iv = cfg.task, cfg.intervention
    assert cfg.model.name_or_path == ("smollm2" if offline else "mistralai/Mistral-7B-Instruct-v0.2")
    assert (t.name, t.positions, t.prompt_preset, list(t.rank_groups)) == (
        "qa_countries",
        "prompt_mean",
        "paper",
        ["concept", "control"],
    )
    assert _paper_ranking(cfg) == PAPER_RANKING
    assert iv.random_pool == "layer_counts" and iv.alpha == -1.0 and iv.k_frac == 8 / 1024
    assert list(iv.random_seeds) == list(range(10))
    assert _sweep(cfg) == {"ranking": "paper,logit_lens_mean", "intervention.k_frac": PAPER_K_FRACS}
    if offline:
        raw = OmegaConf.to_container(t, resolve=False)
        assert t.source == "trivia_qa_file" and t.hub_rank_split is None
        import headpursuit.app.run  # noqa: F401  (registers the hp.fixture resolver)

        resolved = OmegaConf.to_container(t, resolve=True)
        for key, name in (("data_path", "validation"), ("rank_data_path", "train")):
            assert raw[key] == f"${{hp.fixture:trivia_qa_{name}_sample.jsonl}}"
            rel = f"headpursuit/data/fixtures/trivia_qa_{name}_sample.jsonl"
            assert resolved[key] == str((REPO / rel).resolve()) and (REPO / rel).is_file()
        assert t.n_rank <= 10 and t.n_eval <= 10
    else:
        assert (t.source, t.hub_id, t.hub_split, t.hub_rank_split) == (
            "hub",
            "mandarjoshi/trivia_qa",
            "validation",
            "train",
        )
        assert t.rank_data_path is None
