"""The paper's classification experiments (issue 13): the six dataset configs, the paper's prompt,
exact match, the every-class concept (empty control group), transfer runs (`rank_task`) and the
head-overlap analysis (`headpursuit.app.overlap`: Jaccard and transfer matrices)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from headpursuit.app.config import ConfigError, validate_config
from headpursuit.app.overlap import jaccard, overlap
from headpursuit.app.overlap import main as overlap_main
from headpursuit.app.stages import rank_task_config, transfer_info
from headpursuit.tasks.prompts import CLASSIFICATION_OBJECTS, classification_prompt

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    # dataset: (hub id, hub config, number of class names in the config)
    "mnist": ("ylecun/mnist", None, 10),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits", 10),
    "gtsrb": ("tanganke/gtsrb", None, 43),
    "eurosat": ("tanganke/eurosat", None, 10),
    "resisc45": ("tanganke/resisc45", None, 45),
    "dtd": ("tanganke/dtd", None, 47),
}
DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tok():
    from headpursuit.models.tiny import embedded_tokenizer

    return embedded_tokenizer("smollm2")


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def _task_cfg(*overrides: str, key: str = "task") -> dict:
    """The resolved task config (`key`) of the app config composed with `overrides`."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(_compose(*overrides)[key], resolve=True)  # type: ignore[return-value]


def _build(cfg: dict, tok):
    from headpursuit.tasks import build_task

    return build_task(cfg, tokenizer=tok)  # as the app builds it (on the model's tokenizer)


# ------------------------------------------------------------------------------------------
# The paper's prompt and exact match
# ------------------------------------------------------------------------------------------


def test_paper_prompt_for_mnist_and_dtd(tok):
    task = _build(_task_cfg("task=cls_mnist", "task.source=fixture", "task.n_rank=2", "task.n_eval=4"), tok)
    assert task.instruction == (
        "What digit is depicted in this image? Answer EXACTLY with one of the following class names only: "
        "0, 1, 2, 3, 4, 5, 6, 7, 8, 9. Answer:"
    )
    assert task.instruction == classification_prompt("digit", DIGITS)
    dtd = _build(_task_cfg("task=cls_dtd", "task.source=fixture", "task.n_rank=2", "task.n_eval=4"), tok)
    assert dtd.instruction.startswith("What texture is depicted in this image? Answer EXACTLY with one of the ")
    assert dtd.instruction.endswith("woven, wrinkled, zigzagged. Answer:") and len(dtd.class_names) == 47
    # ours keeps our instruction; the paper preset needs a task object
    small = ("task.source=fixture", "task.n_rank=2", "task.n_eval=4")
    ours = _build(_task_cfg("task=cls_mnist", *small, "task.prompt_preset=ours"), tok)
    assert ours.instruction.startswith("What is shown in this image?")
    with pytest.raises(ConfigError, match="task.task_object"):
        _build(_task_cfg("task=cls_mnist", *small, "task.task_object=null", "task.dataset=null"), tok)


def test_exact_match_by_hand():
    from headpursuit.tasks.classification import class_aliases, exact_class_match, exact_match_rate

    assert exact_class_match("7", ["7"]) and exact_class_match(" 7. ", ["7"])
    assert not exact_class_match("seven", ["7"]) and exact_class_match("Seven.", ["7", "seven"])
    assert not exact_class_match("It is a 7", ["7"])  # alias_match would accept it; exact match does not
    assert (
        not exact_class_match("7, 1", ["7"]) and not exact_class_match("", ["7"]) and not exact_class_match(None, ["7"])
    )
    assert exact_class_match("Pickup truck.", class_aliases("pickup_truck"))
    assert exact_class_match("The forest", ["forest"])  # articles are normalised away
    assert exact_class_match("Speed limit (20km/h).", ["Speed limit (20km/h)"])
    assert exact_match_rate(["7", "It is 7", "3."], [["7"], ["7"], ["3"]]) == pytest.approx(2 / 3)
    assert math.isnan(exact_match_rate([], []))


# ------------------------------------------------------------------------------------------
# The dataset configs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_dataset_config_composes(dataset):
    hub_id, hub_config, n_names = DATASETS[dataset]
    cfg = _task_cfg(f"task=cls_{dataset}")
    assert cfg["name"] == "classification" and cfg["dataset"] == dataset
    assert (cfg["source"], cfg["hub_id"], cfg["hub_config"], cfg["hub_split"]) == ("hub", hub_id, hub_config, "test")
    assert (cfg["image_column"], cfg["label_column"]) == ("image", "label")
    assert cfg["task_object"] == CLASSIFICATION_OBJECTS[dataset]
    assert cfg["prompt_preset"] == "paper" and cfg["concept_classes"] == "all" and cfg["positions"] == "image_mean"
    assert len(cfg["class_names"]) == n_names and len(set(cfg["class_names"])) == n_names
    assert cfg["class_names_from"] == "data" and cfg["seed"] == 0
    if dataset in ("mnist", "svhn"):
        assert cfg["class_names"] == DIGITS


def _hub_rows(datasets, names, n_per_class, *, mode="RGB", size=28, class_label=True):
    """A `datasets.Dataset` in a hub copy's schema: image (PIL) and label (ClassLabel ints)."""
    from PIL import Image

    labels = [i for i in range(len(names)) for _ in range(n_per_class)]
    images = [Image.new(mode, (size, size), (i * 20) % 255 if mode == "L" else ((i * 20) % 255, 0, 0)) for i in labels]
    label_feature = datasets.ClassLabel(names=names) if class_label else datasets.Value("int64")
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": label_feature}),
    )


def _mock_hub(monkeypatch, datasets, tables: dict) -> list:
    """`datasets.load_dataset` answering (hub_id, config) from `tables`; returns the calls made."""
    calls: list = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if (path, name) not in tables:
            raise FileNotFoundError(f"no such dataset {path!r} (config {name!r}) in the mock")
        return tables[(path, name)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_loading_mnist_and_svhn_schema(tok, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = _mock_hub(
        monkeypatch,
        datasets,
        {
            ("ylecun/mnist", None): _hub_rows(datasets, DIGITS, 3, mode="L"),
            ("ufldl-stanford/svhn", "cropped_digits"): _hub_rows(datasets, DIGITS, 2, size=32),
        },
    )
    mnist = _build(_task_cfg("task=cls_mnist", "task.n_rank=5", "task.n_eval=10"), tok)
    assert calls[-1] == ("ylecun/mnist", None, "test")
    assert mnist.class_names == DIGITS and mnist.concept_classes == DIGITS
    assert sorted(mnist.concept.words) == DIGITS and len(mnist.concept.token_ids) == 10
    assert len(mnist.items("rank", "concept")) == 5 and len(mnist.items("eval", "concept")) == 10
    assert mnist.items("eval", "control") == [] and mnist.items("rank", "control") == []
    items = mnist.items("eval") + mnist.items("rank")
    assert all(it.image.mode == "RGB" and it.label in DIGITS and it.label in it.aliases for it in items)
    assert mnist.data_source["hub_id"] == "ylecun/mnist" and mnist.data_source["class_names_from"] == "data"
    prov = mnist.provenance()
    assert prov["dataset"] == "mnist" and prov["task_object"] == "digit" and prov["every_class_is_concept"]
    svhn = _build(_task_cfg("task=cls_svhn", "task.n_rank=4", "task.n_eval=8"), tok)
    assert calls[-1] == ("ufldl-stanford/svhn", "cropped_digits", "test")
    assert svhn.instruction == classification_prompt("digit", DIGITS)
    assert len(svhn.items("eval", "concept")) == 8


def test_hub_loading_class_name_fallback_and_override(tok, monkeypatch):
    """GTSRB / RESISC45 rows without ClassLabel names take the config's list; class_names_from=config
    puts the config's list first even over ClassLabel names."""
    datasets = pytest.importorskip("datasets")
    gtsrb_names = _task_cfg("task=cls_gtsrb")["class_names"]
    _mock_hub(
        monkeypatch,
        datasets,
        {
            ("tanganke/gtsrb", None): _hub_rows(datasets, gtsrb_names, 1, class_label=False),
            ("tanganke/resisc45", None): _hub_rows(datasets, [f"scene{i}" for i in range(45)], 1),
        },
    )
    gtsrb = _build(_task_cfg("task=cls_gtsrb", "task.n_rank=5", "task.n_eval=10"), tok)
    assert gtsrb.class_names == gtsrb_names and gtsrb.data_source["class_names_from"] == "config"
    assert "Speed limit (20km/h), Speed limit (30km/h)" in gtsrb.instruction
    assert gtsrb.instruction.startswith("What traffic sign is depicted in this image?")
    resisc = _build(_task_cfg("task=cls_resisc45", "task.n_rank=5", "task.n_eval=10"), tok)
    assert resisc.class_names[:2] == ["scene0", "scene1"]  # the ClassLabel names come first
    resisc = _build(
        _task_cfg("task=cls_resisc45", "task.n_rank=5", "task.n_eval=10", "task.class_names_from=config"), tok
    )
    assert resisc.class_names[:2] == ["airplane", "airport"]
    assert "baseball diamond" in resisc.instruction  # underscores shown as spaces
    with pytest.raises(ConfigError, match="class_names_from"):
        _build(_task_cfg("task=cls_resisc45", "task.class_names_from=hub"), tok)


def test_fixture_files_and_refusals(tok):
    """Every dataset has a shipped tiny copy in its hub schema (data=offline reads it): its rows,
    labels and ClassLabel names are those the config lists; a dataset without one is refused."""
    datasets = pytest.importorskip("datasets")
    from headpursuit.tasks.loaders import fixture_path

    for dataset, (_, _, n_names) in DATASETS.items():
        cfg = _task_cfg(f"task=cls_{dataset}", "task.source=fixture", "task.n_rank=2", "task.n_eval=4")
        table = datasets.Dataset.from_parquet(str(fixture_path(cfg["fixture_file"])))
        assert table.features["label"].names == cfg["class_names"] and len(cfg["class_names"]) == n_names
        task = _build(cfg, tok)
        assert task.data_source["source"] == "fixture" and task.data_source["format"] == "parquet"
        assert len(task.items("eval", "concept")) == 4 and all(
            it.label in task.class_names for it in task.items("eval")
        )
    with pytest.raises(ValueError, match="no shipped fixture"):
        _build(_task_cfg("task=cls_gtsrb", "task.source=fixture", "task.fixture_file=null"), tok)
    with pytest.raises(ConfigError, match="task.rank_groups=null"):
        _build(_task_cfg("task=cls_mnist", "task.source=fixture", "task.n_rank=2", "task.n_eval=4",
                         "task.rank_groups=[concept,control]"), tok)  # fmt: skip


def test_every_class_concept_scores_without_a_control_group(tok):
    from headpursuit.tasks.base import GroupOutputs
    from headpursuit.tasks.image_task import ImageTaskOutputs

    task = _build(_task_cfg("task=cls_mnist", "task.source=fixture", "task.n_rank=2", "task.n_eval=4"), tok)
    outputs = ImageTaskOutputs(
        task="classification",
        split="eval",
        desc="",
        groups={
            "concept": GroupOutputs(
                inputs=["a", "b", "c", "d"],
                prompts=["p"] * 4,
                outputs=[["7"], ["It is 3"], ["1."], [""]],
                references=[["7"], ["3"], ["2"], ["5"]],
            ),
            "control": GroupOutputs(inputs=[], prompts=[], outputs=[], references=[]),
        },
    )
    result = task.score(outputs)
    assert "control" not in result and result["n"] == {"concept": 4, "control": 0}
    assert result["concept"]["exact_match"] == pytest.approx(1 / 4)
    assert result["concept"]["accuracy"] == pytest.approx(2 / 4)
    from headpursuit.app.record import normalized_metrics

    norm = normalized_metrics(result, result, [result])
    assert set(norm["edited"]) == {"concept"} and norm["edited"]["concept"]["exact_match"] == 1.0


# ------------------------------------------------------------------------------------------
# Transfer runs and the experiment files
# ------------------------------------------------------------------------------------------


def _app_config(**extra) -> dict:
    return {
        "model": {"name_or_path": "tiny_vlm"},
        "task": {"name": "classification", "dataset": "mnist", "positions": "image_mean"},
        "ranking": {"method": "concept_restricted", "somp_steps": 10},
        "intervention": {"k": 4, "alpha": -1.0, "random_seeds": [0]},
        "seed": 0,
        **extra,
    }


def test_rank_task_config_validation_and_transfer_info():
    cfg = _app_config(rank_task={"name": "classification", "dataset": "svhn", "positions": "image_mean"})
    conf = validate_config(cfg)
    assert rank_task_config(conf).dataset == "svhn" and transfer_info(cfg) == {"source": "svhn", "target": "mnist"}
    plain = _app_config(rank_task=None)
    conf = validate_config(plain)
    assert rank_task_config(conf) is conf.task and transfer_info(plain) is None
    for bad, match in (("cls_svhn", "rank_task must be null"), ({"name": "nope"}, "rank_task.name"),
                       ({"name": "classification", "positions": "x"}, "rank_task.positions")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            validate_config(_app_config(rank_task=bad))


def test_rank_task_composes_from_the_command_line():
    cfg = _compose("task=cls_mnist", "+task@rank_task=cls_svhn")
    assert (
        cfg.task.dataset == "mnist" and cfg.rank_task.dataset == "svhn" and cfg.rank_task.hub_config == "cropped_digits"
    )
    assert _compose("task=cls_mnist").rank_task is None


PAPER_K_FRACS = "0.0078125,0.015625,0.03125"  # 8, 16, 32 of 1024 heads
SIX = "cls_mnist,cls_svhn,cls_gtsrb,cls_eurosat,cls_resisc45,cls_dtd"


@pytest.mark.parametrize(
    "experiment, data, model, sweep",
    [
        ("paper_tab9_classification", "hub", "llava-hf/llava-v1.6-mistral-7b-hf", {"ranking": "paper,logit_lens_mean", "intervention.k_frac": PAPER_K_FRACS}),
        ("paper_tab9_classification", "offline", "tiny_vlm", {"ranking": "paper,logit_lens_mean", "intervention.k_frac": PAPER_K_FRACS}),
        ("paper_fig4_overlap", "hub", "llava-hf/llava-v1.6-mistral-7b-hf", {"ranking": "paper", "intervention.k_frac": "0.03125"}),
        ("paper_fig4_overlap", "offline", "tiny_vlm", {"ranking": "paper", "intervention.k_frac": "0.03125"}),
    ],
)  # fmt: skip
def test_classification_experiment_files_compose(experiment, data, model, sweep):
    from omegaconf import OmegaConf

    cfg = _compose(f"experiment={experiment}", f"data={data}")
    assert cfg.model.name_or_path == model and cfg.ranking.method == "concept_restricted"
    assert (
        cfg.task.prompt_preset == "paper" and cfg.task.positions == "image_mean" and cfg.task.concept_classes == "all"
    )
    assert cfg.intervention.alpha == -1.0
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params["task"] == SIX  # the six datasets, offline too (their shipped copies)
    for key, value in sweep.items():
        assert params[key] == value
    source = "hub" if data == "hub" else "fixture"
    if "fig4" in experiment:
        assert params["task@rank_task"] == params["task"] and cfg.rank_task.positions == "image_mean"
        assert cfg.intervention.random_controls is False and cfg.intervention.k_frac == 0.03125  # 32 of 1024
        job = _compose(f"experiment={experiment}", f"data={data}", "task=cls_dtd", "task@rank_task=cls_svhn")
        assert (job.task.dataset, job.rank_task.dataset) == ("dtd", "svhn")
        # the source dataset is read from the same data as the target (the hub, or its shipped copy)
        assert (job.task.source, job.rank_task.source) == (source, source)
        assert job.rank_task.n_rank == job.task.n_rank and job.rank_task.fixture_file == "vision/svhn.parquet"
    else:
        assert cfg.rank_task is None and list(cfg.intervention.random_seeds) == list(range(10))
        assert cfg.intervention.random_pool == "layer_counts"
        job = _compose(f"experiment={experiment}", f"data={data}", "task=cls_gtsrb")
        assert job.task.dataset == "gtsrb" and job.task.source == source
    assert cfg.task.source == source


# ------------------------------------------------------------------------------------------
# The overlap analysis, by hand
# ------------------------------------------------------------------------------------------

# per source dataset: heads in rank order (2 layers x 2 heads)
RANKINGS = {"mnist": [(0, 0), (0, 1), (1, 0), (1, 1)], "svhn": [(0, 1), (1, 1), (0, 0), (1, 0)]}
# (target, source) -> (unedited exact match, edited exact match)
EXACT = {
    ("mnist", "mnist"): (0.8, 0.2),
    ("mnist", "svhn"): (0.8, 0.6),
    ("svhn", "svhn"): (0.5, 0.1),
    ("svhn", "mnist"): (0.5, 0.5),
}


def _write_run(run_dir: Path, target: str, source: str, k: int = 2, baseline: float = 0.5, edited: float = 0.5):
    """A complete run in the layout `python -m headpursuit` writes: results.json + head_scores.csv."""
    run_dir.mkdir(parents=True)
    ranked = RANKINGS[source]
    res = {
        "status": "complete",
        "model": "tiny_vlm",
        "task": "classification",
        "dataset": target,
        "transfer": {"source": source, "target": target},
        "ranking": "concept_restricted",
        "k": k,
        "alpha": -1.0,
        "heads": [{"layer": a, "head": b, "score": 1.0, "rank": i + 1} for i, (a, b) in enumerate(ranked[:k])],
        "baseline": {"n": {"concept": 10, "control": 0}, "concept": {"exact_match": baseline}},
        "edited": {"n": {"concept": 10, "control": 0}, "concept": {"exact_match": edited}},
        "config": {"task": {"name": "classification", "dataset": target}, "rank_task": {"name": "classification", "dataset": source}},
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(res))
    rows = ["layer,head,score,rank"] + [f"{a},{b},{1.0 - 0.1 * i},{i + 1}" for i, (a, b) in enumerate(ranked)]
    (run_dir / "head_scores.csv").write_text("\n".join(rows) + "\n")


def test_overlap_matrices_by_hand(tmp_path, capsys):
    import pandas as pd

    for i, ((target, source), (b, e)) in enumerate(EXACT.items()):
        _write_run(tmp_path / str(i), target, source, baseline=b, edited=e)
    # a failed run is ignored
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "results.json").write_text(json.dumps({"status": "failed"}))
    done = overlap(tmp_path)
    (setting, d), = done.items()  # fmt: skip
    assert setting == ("tiny_vlm", "concept_restricted", -1.0) and d["k"] == 2
    # top-2: mnist {(0,0), (0,1)}, svhn {(0,1), (1,1)}: 1 shared head of 3
    jac = pd.read_csv(tmp_path / "jaccard.csv", index_col=0)
    assert list(jac.index) == ["mnist", "svhn"] and list(jac.columns) == ["mnist", "svhn"]
    assert jac.loc["mnist", "svhn"] == pytest.approx(1 / 3) == jac.loc["svhn", "mnist"]
    assert jac.loc["mnist", "mnist"] == 1.0 == jac.loc["svhn", "svhn"]
    tr = pd.read_csv(tmp_path / "transfer.csv", index_col=0)
    assert tr.index.name == "target" and list(tr.columns) == ["mnist", "svhn"]
    expected = {
        ("mnist", "mnist"): 0.2 / 0.8,
        ("mnist", "svhn"): 0.6 / 0.8,
        ("svhn", "svhn"): 0.1 / 0.5,
        ("svhn", "mnist"): 1.0,
    }
    for (t, s), v in expected.items():
        assert tr.loc[t, s] == pytest.approx(v), (t, s)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "jaccard.png").stat().st_size > 0 and (tmp_path / "transfer.png").stat().st_size > 0
    # top-3 from head_scores.csv: mnist {(0,0),(0,1),(1,0)}, svhn {(0,1),(1,1),(0,0)}: 2 of 4
    assert overlap_main([str(tmp_path), "--k", "3", "--no-plots"]) == 2  # no run edited 3 heads
    assert "k=3" in capsys.readouterr().err
    assert jaccard({(0, 0), (0, 1), (1, 0)}, {(0, 1), (1, 1), (0, 0)}) == 0.5


def test_overlap_k_choice_and_zero_baseline(tmp_path, capsys):
    import pandas as pd

    _write_run(tmp_path / "a", "mnist", "mnist", k=2, baseline=0.0, edited=0.0)
    _write_run(tmp_path / "b", "mnist", "svhn", k=3, baseline=0.8, edited=0.4)
    assert overlap_main([str(tmp_path), "--no-plots"]) == 2
    assert "--k" in capsys.readouterr().err  # two k values: the message says how to pick one
    assert overlap_main([str(tmp_path), "--k", "3", "--no-plots", "--out", str(tmp_path / "out")]) == 0
    jac = pd.read_csv(tmp_path / "out" / "jaccard.csv", index_col=0)
    assert jac.loc["mnist", "svhn"] == pytest.approx(0.5)  # top-3 from each ranking's head_scores.csv
    tr = pd.read_csv(tmp_path / "out" / "transfer.csv", index_col=0)
    assert list(tr.columns) == ["svhn"] and tr.loc["mnist", "svhn"] == pytest.approx(0.5)
    assert overlap_main([str(tmp_path), "--k", "2", "--no-plots"]) == 0
    tr = pd.read_csv(tmp_path / "transfer.csv", index_col=0)
    assert math.isnan(tr.loc["mnist", "mnist"])  # unedited 0: the ratio is undefined
    assert overlap_main([str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------------------------------
# End to end: an offline transfer sweep feeding the overlap command
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_offline_transfer_sweep_feeds_the_overlap_command(tmp_path):
    import pandas as pd
    from devices import CPU_OVERRIDES
    from docs_harness import run_app  # in this process: the model loads once per worker

    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    rc = run_app(
        [
            "-m",
            "experiment=paper_fig4_overlap",
            "data=offline",
            *CPU_OVERRIDES,
            "logger=none",
            "plots=false",
            "task=cls_mnist,cls_svhn",
            "task@rank_task=cls_mnist,cls_svhn",
            "task.n_rank=3",
            "rank_task.n_rank=3",
            "task.n_eval=3",
            "task.max_new_tokens=3",
            f"hydra.sweep.dir={sweep}",
            f"cache_dir={cache}",
        ]
    )
    assert rc == 0
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(results) == 4 and all(r["status"] == "complete" for r in results)
    pairs = {(r["transfer"]["target"], r["transfer"]["source"]) for r in results}
    assert pairs == {(t, s) for t in ("mnist", "svhn") for s in ("mnist", "svhn")}
    for r in results:
        assert (
            r["dataset"] == r["transfer"]["target"]
            and r["provenance"]["rank_task"]["dataset"] == r["transfer"]["source"]
        )
        assert r["edited"]["vision_random_init"] is True  # tiny_vlm: the numbers are not real
        assert "control" not in r["edited"] and "exact_match" in r["edited"]["concept"]
    # each source is ranked once, each target evaluated unedited once (the cache keys are per task)
    for role, flag in (("source", "scores_from_cache"), ("target", "baseline_from_cache")):
        for d in ("mnist", "svhn"):
            hits = [r["provenance"]["cache"][flag] for r in results if r["transfer"][role] == d]
            assert sorted(hits) == [False, True], (role, d)
    assert overlap_main([str(sweep)]) == 0
    jac = pd.read_csv(sweep / "jaccard.csv", index_col=0)
    assert list(jac.index) == ["mnist", "svhn"] and jac.loc["mnist", "mnist"] == 1.0
    heads = {
        r["transfer"]["source"]: {(h["layer"], h["head"]) for h in r["heads"]} for r in results
    }  # the runs' edited heads are their source's top-k
    assert jac.loc["mnist", "svhn"] == pytest.approx(jaccard(heads["mnist"], heads["svhn"]))
    tr = pd.read_csv(sweep / "transfer.csv", index_col=0)
    assert tr.shape == (2, 2)
    assert (sweep / "jaccard.png").is_file() and (sweep / "transfer.png").is_file()
