"""Vision tasks: synthetic fixture, data loading (offline), caption metrics.

End to end on tiny_vlm (ranking samples -> capture -> rank -> baseline vs edited metrics) runs as the
documented commands `experiment=tiny_vlm_captioning` (and `task=classification`): the docs harness
runs them, and tests/record_checks.py's `check_tiny_vlm_job` checks each task's metrics per group and
that every output says the vision tower is random."""

import math
import warnings

import pytest
import torch

from headpursuit.metrics.captions import caption_quality, metric_signatures
from headpursuit.synthetic import COLORS, PATTERNS, SHAPES, draw_pattern, draw_shape
from headpursuit.tasks import CaptioningConfig, ClassificationConfig
from headpursuit.tasks.image_data import pattern_items, shape_items


@pytest.fixture(scope="session")
def tok():
    from headpursuit.models.tiny import embedded_tokenizer

    return embedded_tokenizer("smollm2")


# ------------------------------------------------------------------------------------------
# Fixture images
# ------------------------------------------------------------------------------------------


def test_synthetic_images_are_deterministic_and_distinct():
    a = draw_shape("circle", "red")
    assert a.tobytes() == draw_shape("circle", "red").tobytes()
    assert a.mode == "RGB" and a.size == (64, 64)
    # the shape has the requested colour, the corner is background
    assert a.getpixel((32, 32)) == COLORS["red"] and a.getpixel((0, 0)) == (255, 255, 255)
    images = [draw_shape(s, "blue").tobytes() for s in SHAPES]
    assert len(set(images)) == len(SHAPES)
    patterns = [draw_pattern(p).tobytes() for p in PATTERNS]
    assert len(set(patterns)) == len(PATTERNS)
    with pytest.raises(ValueError, match="unknown shape"):
        draw_shape("blob", "red")


def test_fixture_items_and_caption_groups(tok):
    from headpursuit.concepts import load_concept

    shapes = shape_items("shape")
    assert len(shapes) == len(SHAPES) * len(COLORS)
    assert shapes[0].captions[0] == f"a {shapes[0].meta['color']} {shapes[0].label} on a white background"
    assert {it.label for it in shape_items("color")} == set(COLORS)
    colors = load_concept("colors", tok)
    # every shape caption names its colour; no pattern caption names a colour
    assert all(any(colors.count_in_text(c) for c in it.captions) for it in shapes)
    assert not any(colors.count_in_text(c) for it in pattern_items() for c in it.captions)
    numbers = load_concept("numbers", tok)
    assert {it.label for it in pattern_items() if any(numbers.count_in_text(c) for c in it.captions)} == {
        "two dots",
        "three dots",
        "four dots",
    }


# ------------------------------------------------------------------------------------------
# Caption metrics (sacrebleu)
# ------------------------------------------------------------------------------------------


def test_caption_quality():
    refs = [["a red circle on a white background", "a red circle"], ["three dots in a row"]]
    perfect = caption_quality(["a red circle on a white background", "three dots in a row"], refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    worse = caption_quality(["a blue square", "stripes"], refs)
    assert worse["bleu"] < perfect["bleu"] and worse["chrf"] < perfect["chrf"]
    # case-insensitive; a missing extra reference (padded by repetition) changes nothing
    same = caption_quality(["A Red Circle", "three dots"], [["a red circle"], ["three dots"]])
    padded = caption_quality(["A Red Circle", "three dots"], [["a red circle", "a red circle"], ["three dots"]])
    assert same == pytest.approx(padded)
    assert all(math.isnan(v) for v in caption_quality([], []).values())
    with pytest.raises(ValueError):
        caption_quality(["x"], [[]])
    sig = metric_signatures()
    assert sig["package"] == "sacrebleu" and "version:" in sig["bleu"]


# ------------------------------------------------------------------------------------------
# Data loading without a model
# ------------------------------------------------------------------------------------------


def test_classification_fixture_groups(tok):
    from headpursuit.tasks.classification import ImageClassificationTask

    task = ImageClassificationTask(ClassificationConfig(n_rank=2, n_eval=3), tok)
    assert task.concept_classes == ["circle", "square", "triangle"]
    for it in task.items("eval"):
        assert it.group == ("concept" if it.label in task.concept_classes else "control")
    assert len(task.items("rank", "concept")) == 2 and not task.items("rank", "control")
    assert {w.lower() for w in task.concept.words} == {"circle", "square", "triangle"}
    with pytest.raises(ValueError, match="not classes of the data"):
        ImageClassificationTask(ClassificationConfig(concept_classes=["rocket"]), tok)


def _cifar_like_parquet(datasets, path, names, specs):
    """A parquet in CIFAR-100's schema (img, fine_label as a ClassLabel of `names`) at `path`: one
    drawn shape per (shape, colour, label index) of `specs`."""
    ds = datasets.Dataset.from_dict(
        {"img": [draw_shape(s, c) for s, c, _ in specs], "fine_label": [k for *_, k in specs]},
        features=datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=names)}),
    )
    ds.to_parquet(str(path))
    return path


def _cifar_like_config(path, concept_classes):
    """Classification task keys for the parquet `_cifar_like_parquet` wrote at `path`."""
    return dict(
        source="local",
        data_path=str(path),
        image_column="img",
        label_column="fine_label",
        concept_classes=concept_classes,
    )


def test_local_parquet_in_cifar_schema_loads_like_the_hub(tok, tmp_path):
    """A local parquet with CIFAR-100's columns (img, fine_label as ClassLabel) loads offline."""
    datasets = pytest.importorskip("datasets")
    from headpursuit.tasks.classification import ImageClassificationTask

    names = ["apple", "bicycle", "bus", "pickup_truck", "rose"]
    specs = [
        ("circle", "red", 1),
        ("square", "blue", 2),
        ("star", "green", 3),
        ("cross", "red", 0),
        ("hexagon", "blue", 4),
        ("diamond", "purple", 0),
    ]
    path = _cifar_like_parquet(datasets, tmp_path / "cifar_like.parquet", names, specs)
    task = ImageClassificationTask(
        ClassificationConfig(
            **_cifar_like_config(path, ["bicycle", "bus", "pickup_truck"]),
            aliases={"pickup_truck": ["truck"]},
            n_rank=1,
            n_eval=2,
        ),
        tok,
    )
    assert task.class_names == names  # from the ClassLabel feature, as for the hub dataset
    items = task.items("eval") + task.items("rank")
    assert {it.group for it in items} == {"concept", "control"}
    truck = [it for it in items if it.label == "pickup_truck"]
    for it in truck:
        assert {"pickup truck", "truck"} <= set(it.aliases)
    assert all(it.image.size == (64, 64) and it.image.mode == "RGB" for it in items)
    assert task.data_source["format"] == "parquet"
    with pytest.raises(ValueError, match="available columns"):
        ImageClassificationTask(
            ClassificationConfig(**{**_cifar_like_config(path, ["bus"]), "image_column": "image"}), tok
        )


def test_local_image_folder_and_caption_file(tok, tmp_path):
    pytest.importorskip("datasets")
    import json

    from headpursuit.tasks.captioning import CaptioningTask
    from headpursuit.tasks.classification import ImageClassificationTask

    for s in ("circle", "square"):
        (tmp_path / "folder" / s).mkdir(parents=True)
        for c in ("red", "blue"):
            draw_shape(s, c).save(tmp_path / "folder" / s / f"{c}.png")
    task = ImageClassificationTask(
        ClassificationConfig(
            source="local", data_path=str(tmp_path / "folder"), concept_classes=["circle"], n_rank=0, n_eval=2
        ),
        tok,
    )
    assert task.data_source["format"] == "imagefolder"
    assert sorted(it.label for it in task.items("eval")) == ["circle", "circle", "square", "square"]

    # captions file in a Flickr30k-like schema: image path + list of captions
    rows = []
    for name in ("red-circle", "checkerboard", "blue-square", "grid"):
        img = draw_shape(*name.split("-")[::-1]) if "-" in name else draw_pattern(name)
        img.save(tmp_path / f"{name}.png")
        caps = [f"a {name.replace('-', ' ')}", f"a {name.split('-')[0]} shape"] if "-" in name else list(PATTERNS[name])
        rows.append({"file": f"{name}.png", "caption": caps})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cap = CaptioningTask(
        CaptioningConfig(
            source="local",
            data_path=str(tmp_path / "captions.jsonl"),
            image_column="file",
            n_rank={"concept": 1, "control": 0},
            n_eval=1,
        ),
        tok,
    )
    assert [len(cap.items("eval", g)) for g in ("concept", "control")] == [1, 1]
    assert cap.items("eval", "concept")[0].image.size == (64, 64)
    assert cap.items("rank", "concept")[0].group == "concept"

    # a parquet in the hub's Flickr30k schema (image, caption: list of strings), default columns
    import datasets

    flickr = datasets.Dataset.from_dict(
        {
            "image": [draw_shape("circle", "red"), draw_pattern("grid"), draw_shape("star", "blue")],
            "caption": [["a red circle", "a round red shape"], list(PATTERNS["grid"]), ["a blue star"]],
        },
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))}),
    )
    flickr.to_parquet(str(tmp_path / "flickr_like.parquet"))
    cap = CaptioningTask(
        CaptioningConfig(
            source="local",
            data_path=str(tmp_path / "flickr_like.parquet"),
            n_rank={"concept": 1, "control": 0},
            n_eval=1,
        ),
        tok,
    )
    assert cap.data_source["n_items"] == {"concept": 2, "control": 1}
    assert cap.items("eval", "control")[0].captions == PATTERNS["grid"]


def test_image_task_without_processor_is_refused(tok):
    from headpursuit.models.tiny import tiny_text_model
    from headpursuit.tasks.classification import ImageClassificationTask

    lm = tiny_text_model("llama")
    task = ImageClassificationTask(ClassificationConfig(n_rank=1, n_eval=1), tok)
    with pytest.raises(ValueError, match="no processor"):
        task.evaluate(lm)


def test_vlm_prompt_has_one_image_placeholder(tiny_vlm):
    from headpursuit.models.inputs import image_prompt

    p = image_prompt(tiny_vlm, "Describe this image.")
    assert p.count("<image>") == 1 and p.endswith("<|im_start|>assistant\n")
    assert torch.is_tensor(
        tiny_vlm.processor(text=[p], images=[draw_shape("circle", "red")], return_tensors="pt")["pixel_values"]
    )


# ------------------------------------------------------------------------------------------
# rank_groups on image data: eval unchanged, control ranking images on top
# ------------------------------------------------------------------------------------------


def _ids(items):
    return [it.meta.get("id", (it.label, tuple(it.captions))) for it in items]


def test_rank_groups_on_fixture_and_local_image_data(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    from headpursuit.tasks import SplitError
    from headpursuit.tasks.captioning import CaptioningTask
    from headpursuit.tasks.classification import ImageClassificationTask

    for cls in (ImageClassificationTask, CaptioningTask):
        default = cls(cls.config_class(n_rank=2, n_eval=3), tok)
        both = cls(cls.config_class(n_rank=2, n_eval=3, rank_groups=["concept", "control"]), tok)
        for g in ("concept", "control"):
            assert _ids(both.items("eval", g)) == _ids(default.items("eval", g))
        assert _ids(both.ranking_items()[:2]) == _ids(default.ranking_items())
        assert len(both.items("rank", "control")) == 2
        assert not set(map(str, _ids(both.items("rank", "control")))) & set(map(str, _ids(both.items("eval"))))

    names = ["apple", "bicycle", "bus", "rose", "tulip"]
    specs = [("circle", "red", 1), ("square", "blue", 2), ("star", "green", 1)]
    specs += [
        (s, c, k)
        for (s, c), k in zip([("cross", "red"), ("hexagon", "blue"), ("diamond", "purple")] * 3, [0, 3, 4] * 3)
    ]
    path = _cifar_like_parquet(datasets, tmp_path / "cifar_like.parquet", names, specs)
    kw = dict(**_cifar_like_config(path, ["bicycle", "bus"]), n_rank=1, n_eval=2)
    default = ImageClassificationTask(ClassificationConfig(**kw), tok)
    both = ImageClassificationTask(ClassificationConfig(**kw, rank_groups=["concept", "control"]), tok)
    capped = ImageClassificationTask(ClassificationConfig(**kw, rank_groups=["concept", "control"], max_rows=3), tok)
    for task in (both, capped):
        for g in ("concept", "control"):
            assert _ids(task.items("eval", g)) == _ids(default.items("eval", g))
        assert _ids(task.items("rank", "concept")) == _ids(default.items("rank", "concept"))
    spare = both.items("rank", "control")
    assert len(spare) == 1 and spare[0].group == "control" and spare[0].image.size == (64, 64)
    assert _ids(spare)[0] not in _ids(both.items("eval", "control"))
    assert len(capped.items("rank", "control")) == 1  # 2 evaluated + 1 spare within max_rows=3
    with pytest.raises(SplitError, match="ranking split of group 'control' is empty.*lower n_eval"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_rows=2 also leaves the concept group one eval image
            ImageClassificationTask(ClassificationConfig(**kw, rank_groups=["concept", "control"], max_rows=2), tok)
