"""Image classification by generated label (the paper's LLaVA-NeXT classification experiment).

The model sees an image and an instruction ("What shape is shown in this image? Answer with one
word.") and answers in words; an answer is correct when one of the true class's aliases occurs in
it as whole words (`headpursuit.metrics.text.alias_match`: "It is a Pickup truck." matches
``pickup_truck``). The concept is the class names of a configurable group of classes
(`concept_classes`, e.g. CIFAR-100's vehicles); the *concept* group is the images of those
classes, the *control* group every other image. Suppressing the concept heads should make the
model stop naming concept classes (concept accuracy drops) while control accuracy holds.

The paper's protocol (Head Pursuit, Section 5, Table 9; ``conf/task/cls_<dataset>.yaml``) is the
task-conditioned case ``concept_classes: all``: every class is a concept class, the concept is
all of the dataset's class names, and the whole (sampled) dataset is the *concept* group. The
*control* group is then empty, on purpose: it is not filled with images of another dataset (that
is what a transfer run, ``rank_task``, measures). An empty control group has no evaluation split
and no metrics: results carry ``n.control = 0`` and no ``control`` entry. With ``prompt_preset:
paper`` the instruction is the paper's template (`headpursuit.tasks.prompts.classification_prompt`)
with the dataset's ``task_object`` (default: `CLASSIFICATION_OBJECTS` of ``dataset``) and every
class name; ``exact_match`` (`exact_class_match`) is the paper's metric.

Config: `ClassificationConfig` (a Hydra ``task`` node holds the same keys)::

    task = ImageClassificationTask(ClassificationConfig(n_rank=8, n_eval=10), lm.tokenizer)

Metrics per group: ``accuracy`` (alias match anywhere in the answer), ``exact_match`` (the
paper's: the whole normalised answer is the class name or an alias, `exact_class_match`),
``concept_rate`` (answers naming a concept class), ``concept_count`` and ``empty_rate``. Results also carry the model's notes and
``vision_random_init`` (true for `tiny_vlm`, whose image results are not real).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError
from headpursuit.metrics.text import alias_match, exact_class_match, exact_match_rate
from headpursuit.tasks.base import (
    GROUPS,
    ITEMS_KEY,
    TaskConfig,
    TaskOutputs,
    group_counts,
    parse_rank_groups,
    split_items,
)
from headpursuit.tasks.image_data import (
    IMAGE_SOURCES,
    ImageItem,
    fixture_path,
    load_image_dataset,
    shape_items,
    to_pil,
)
from headpursuit.tasks.image_task import ImageTask
from headpursuit.tasks.prompts import CLASSIFICATION_OBJECTS, check_preset, classification_prompt
from headpursuit.tasks.sources import DataSpec

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = [
    "ALL_CLASSES",
    "CLASS_NAME_SOURCES",
    "ClassificationConfig",
    "ImageClassificationTask",
    "CIFAR100_VEHICLES",
    "DEFAULT_INSTRUCTIONS",
    "class_aliases",
    "exact_class_match",
    "exact_match_rate",
]

#: `concept_classes` value for "every class of the dataset" (the paper's task-conditioned concept)
ALL_CLASSES = "all"
#: `class_names_from` values: the label column's ClassLabel names first, or the config's list first
CLASS_NAME_SOURCES = ("data", "config")

CIFAR100_ID = "uoft-cs/cifar100"
# CIFAR-100's two vehicle superclasses (vehicles 1 and vehicles 2).
CIFAR100_VEHICLES = (
    "bicycle",
    "bus",
    "motorcycle",
    "pickup_truck",
    "train",
    "lawn_mower",
    "rocket",
    "streetcar",
    "tank",
    "tractor",
)
FIXTURE_CONCEPT = {"shape": ("circle", "square", "triangle"), "color": ("red", "orange", "yellow")}
DEFAULT_INSTRUCTIONS = {
    "shape": "What shape is shown in this image? Answer with one word.",
    "color": "What colour is the shape in this image? Answer with one word.",
    "data": "What is shown in this image? Answer with just the name of the object.",
}


def _label(item: ImageItem) -> str:
    """An item's class name (classification items always have one)."""
    if item.label is None:
        raise ValueError(f"image item {item.meta.get('id')!r} has no class label")
    return item.label


def _display(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split())


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def class_aliases(name: str, extra: Sequence[str] = ()) -> list[str]:
    """Accepted answers for a class: its name with spaces for underscores, the raw name, plural
    of the last word, and configured extras (order kept, dedup)."""
    disp = _display(name)
    words = disp.split()
    plural = " ".join(words[:-1] + [_plural(words[-1])]) if words else disp
    return list(dict.fromkeys([disp, str(name), plural, *extra]))


@dataclass(kw_only=True)
class ClassificationConfig(TaskConfig):
    """Image classification's keys (the `TaskConfig` keys with its defaults, and its own). The
    ``conf/task/cls_<dataset>.yaml`` files set the paper's datasets (Table 9)."""

    name: str = "classification"
    #: null: the concept classes' names (one-character names such as MNIST's "7" count too)
    concept: Any = None
    #: the dataset's short name (mnist, svhn, gtsrb, eurosat, resisc45, dtd): recorded in the
    #: results, picks the default task_object
    dataset: str | None = None
    #: fixture (synthetic shapes, offline; or fixture_file) | hub | local
    source: str = "fixture"
    #: source fixture: the class is the shape (circle, square, ...) or the colour: shape | color
    fixture_label: str = "shape"
    #: source fixture: a file under headpursuit/data/fixtures/ in the dataset's hub schema (e.g.
    #: vision/mnist.parquet), read as source=local reads it, instead of the synthetic shapes
    fixture_file: str | None = None
    #: source local: an image folder (class sub-folders), a folder of .parquet, or a
    #: .parquet/.jsonl/.json/.csv file with image + label columns
    data_path: str | None = None
    #: source hub (default CIFAR-100: image column img, label fine_label)
    hub_id: str = CIFAR100_ID
    hub_config: str | None = None
    hub_split: str = "test"
    #: null: img for CIFAR-100, image otherwise
    image_column: str | None = None
    #: null: fine_label for CIFAR-100, label otherwise
    label_column: str | None = None
    #: index -> name when the label column holds ints without names
    class_names: list[str] | None = None
    #: data: the label column's ClassLabel names first, class_names the fallback | config:
    #: class_names first
    class_names_from: str = "data"
    #: the class names of the concept group; null: CIFAR-100's vehicles (hub) / circle, square,
    #: triangle (fixture); all: every class (the paper: the control group is then empty)
    concept_classes: Any = None
    #: extra accepted answers per class: {pickup_truck: [truck]}
    aliases: dict[str, Any] = field(default_factory=dict)
    #: decode at most this many images per group
    max_rows: int | None = None
    n_rank: Any = 8
    n_eval: Any = 10
    #: ours: `instruction` (+ list_classes) | paper: the paper's template (Table 4) with task_object
    #: and every class name
    prompt_preset: str = "ours"
    #: paper: its {object} (digit, traffic sign, texture, remote sensing scene); null: the paper's
    #: for `dataset`
    task_object: str | None = None
    #: ours: the question asked; null: one per data source (`DEFAULT_INSTRUCTIONS`)
    instruction: str | None = None
    #: ours: append "Choose one of: ..." with every class name
    list_classes: bool = False
    system: str | None = None
    max_new_tokens: int = 12
    #: none | correct: keep only the ranking answers that name the true class
    ranking_filter: str = "none"
    #: rows per generate batch (an integer: auto does not model image tokens)
    batch_size: Any = 8


class ImageClassificationTask(ImageTask):
    name = "classification"
    config_class = ClassificationConfig

    def __init__(self, config: ClassificationConfig, tokenizer: Any = None):
        c = config
        self.config = c
        concept, concept_classes = c.concept, c.concept_classes  # both derived below when null
        spec = DataSpec(c.source, c.data_path, c.hub_id, c.hub_config, c.hub_split, c.max_rows)
        spec = spec.checked(self.name, IMAGE_SOURCES)
        self._check_ranking_filter(c.ranking_filter)
        self.prompt_preset = check_preset(self.name, c.prompt_preset)
        if c.class_names_from not in CLASS_NAME_SOURCES:
            raise ConfigError(
                f"{self.name}: class_names_from must be 'data' (the label column's names first) or 'config' "
                f"(task.class_names first), got {c.class_names_from!r}"
            )
        self.dataset = None if c.dataset is None else str(c.dataset)
        # _load_data needs these before super().__init__ (which sets them again, alike)
        self.seed = int(c.seed)
        self.n_rank, self.n_eval = c.n_rank, c.n_eval
        self.rank_groups = parse_rank_groups(c.rank_groups)
        self.every_class_is_concept = concept_classes == ALL_CLASSES
        if self.every_class_is_concept and "control" in (self.rank_groups or ()):
            raise ConfigError(
                f"{self.name}: task.rank_groups={list(self.rank_groups or ())} needs a control group, but "
                "concept_classes=all makes every image a concept image; set task.rank_groups=null"
            )
        spare: dict[str, list[ImageItem]] = {}
        extra_aliases = {str(k): list(v) for k, v in (c.aliases or {}).items()}

        if c.source == "fixture" and c.fixture_file:
            if concept_classes is None:
                raise ValueError(
                    f"{self.name}: set concept_classes (class names, or all) for fixture_file={c.fixture_file!r}"
                )
            # A shipped file in the dataset's hub schema: read exactly as source=local reads it.
            file_spec = DataSpec("local", str(fixture_path(c.fixture_file)), None, None, c.hub_split, c.max_rows)
            columns = (c.image_column or "image", c.label_column or "label")
            items, spare, all_names, data_source = self._load_data(
                file_spec, columns, c.class_names, c.class_names_from, concept_classes, extra_aliases
            )
            concept_classes = list(all_names) if self.every_class_is_concept else list(concept_classes or [])
            # the shipped file was read in place of data_path: its content stands for fixture_file
            content = {"fixture_file": data_source["content"].pop("data_path")}
            data_source.update(source="fixture", fixture_file=str(c.fixture_file), content=content)
            default_instruction = DEFAULT_INSTRUCTIONS["data"]
        elif c.source == "fixture":
            if self.dataset is not None:
                raise ValueError(
                    f"{self.name}: task.dataset={self.dataset!r} has no shipped fixture (task.fixture_file is "
                    "null); use task.source=hub, or task.source=local with task.data_path=/path/to/copy"
                )
            if c.fixture_label not in FIXTURE_CONCEPT:
                raise ValueError(f"{self.name}: fixture_label must be 'shape' or 'color', got {c.fixture_label!r}")
            items = shape_items(c.fixture_label)
            all_names = list(dict.fromkeys(_label(it) for it in items))
            if self.every_class_is_concept:
                concept_classes = list(all_names)
            concept_classes = list(concept_classes or FIXTURE_CONCEPT[c.fixture_label])
            self._check_classes(concept_classes, all_names)
            for it in items:
                it.aliases = class_aliases(_label(it), extra_aliases.get(_label(it), ()))
                it.group = "concept" if it.label in concept_classes else "control"
            items = spec.head_per_group(items)
            data_source = {
                "source": "fixture",
                "fixture": f"synthetic shapes (label: {c.fixture_label})",
                "synthetic": True,
            }
            default_instruction = DEFAULT_INSTRUCTIONS[c.fixture_label]
        else:
            is_cifar = c.source == "hub" and c.hub_id == CIFAR100_ID
            columns = (
                c.image_column or ("img" if is_cifar else "image"),
                c.label_column or ("fine_label" if is_cifar else "label"),
            )
            if concept_classes is None:
                if not is_cifar:
                    raise ValueError(
                        f"{self.name}: set concept_classes (the class names of the "
                        f"concept group) for data other than {CIFAR100_ID}"
                    )
                concept_classes = CIFAR100_VEHICLES
            items, spare, all_names, data_source = self._load_data(
                spec, columns, c.class_names, c.class_names_from, concept_classes, extra_aliases
            )
            concept_classes = list(all_names) if self.every_class_is_concept else list(concept_classes)
            default_instruction = DEFAULT_INSTRUCTIONS["data"]

        if concept is None:
            concept = [_display(name) for name in concept_classes]
            if tokenizer is not None:
                from headpursuit.concepts import load_concept

                # min_chars=1: a one-character class name ("7" of MNIST) is its own whole-word token;
                # longer names still need a piece of >= 4 characters or the whole word (load_concept).
                concept = load_concept(concept, tokenizer, name="concept_classes", min_chars=1)
        super().__init__(c, tokenizer, concept=concept)
        self.concept_classes = concept_classes
        self.class_names = all_names
        self.list_classes = bool(c.list_classes)
        self.system = c.system
        self.max_new_tokens = int(c.max_new_tokens)
        self.ranking_filter = c.ranking_filter
        self.task_object = self._task_object(c.task_object)
        if self.prompt_preset == "paper":
            # The paper's template lists every class name itself: `list_classes` adds nothing.
            instr = classification_prompt(str(self.task_object), [_display(n) for n in all_names])
        else:
            instr = (c.instruction if c.instruction is not None else default_instruction).strip()
            if self.list_classes:
                instr += " Choose one of: " + ", ".join(_display(n) for n in all_names) + "."
        self.instruction = instr
        data_source["n_items"] = group_counts(items)
        data_source["concept_classes"] = list(concept_classes)
        self.data_source = data_source
        self._split(
            items,
            source=str(data_source.get("hub_id") or data_source.get("path") or data_source.get("fixture")),
            spare=spare,
        )

    def _task_object(self, task_object: str | None) -> str | None:
        """The paper prompt's {object}: `task_object`, else the paper's for `dataset`; the paper
        preset needs one (a ConfigError naming both keys otherwise)."""
        if task_object:
            return str(task_object)
        found = CLASSIFICATION_OBJECTS.get((self.dataset or "").lower())
        if found is None and self.prompt_preset == "paper":
            raise ConfigError(
                f"{self.name}: prompt_preset=paper needs the task object of the paper's template; set "
                f"task.task_object='digit' (or task.dataset to one of {', '.join(CLASSIFICATION_OBJECTS)})"
            )
        return found

    def _split(self, items: Any, source: str, spare: Any = None, **kwargs: Any) -> None:
        """As `Task._split`; with ``concept_classes: all`` only the concept group is split and the
        control group is left empty in both splits (it has no items)."""
        if not self.every_class_is_concept:
            super()._split(items, source, spare, **kwargs)
            return
        self.splits = split_items(
            items,
            self.n_rank,
            self.n_eval,
            seed=self.seed,
            groups=("concept",),
            require_rank=("concept",),
            source=source,
        )
        for split in self.splits.values():
            split["control"] = []

    # --- data ----------------------------------------------------------------------------
    def _check_classes(self, concept_classes: Sequence[str], all_names: Sequence[str]) -> None:
        unknown = [c for c in concept_classes if c not in all_names]
        if unknown:
            raise ValueError(
                f"{self.name}: concept_classes {unknown} are not classes of the data; classes: {list(all_names)}"
            )

    def _load_data(
        self,
        spec: DataSpec,
        columns: tuple[str, str],
        class_names: Sequence[str] | None,
        class_names_from: str,
        concept_classes: Sequence[str] | str,
        extra_aliases: Mapping[str, Sequence[str]],
    ) -> tuple[list[ImageItem], dict[str, list[ImageItem]], list[str], dict]:
        """The selected and spare items, every class name and the provenance; `columns` is
        (image column, label column); ``concept_classes="all"``: every class."""
        image_column, label_column = columns
        ds, info = load_image_dataset(spec, required=columns)
        feature = ds.features.get(label_column)
        data_names = list(getattr(feature, "names", None) or [])
        config_names = list(class_names or [])
        if class_names_from == "config" and config_names:
            names, info["class_names_from"] = config_names, "config"
        else:
            names = data_names or config_names
            info["class_names_from"] = "data" if data_names else ("config" if config_names else "labels")
        raw = ds.select_columns([label_column])[label_column]  # labels only: no image decoding

        def name_of(v: Any) -> str:
            if isinstance(v, str):
                return v
            if names:
                try:
                    return str(names[int(v)])
                except (IndexError, ValueError, TypeError):
                    pass
            raise ValueError(
                f"{self.name}: label {v!r} of column {label_column!r} has no class "
                "name; set class_names (index -> name) in the task config"
            )

        labels = [name_of(v) for v in raw]
        all_names = [str(n) for n in names] or sorted(set(labels))
        if concept_classes == ALL_CLASSES:
            concept_classes = all_names
        self._check_classes(concept_classes, all_names)
        concept_set = set(concept_classes)
        groups = ["concept" if lab in concept_set else "control" for lab in labels]

        def item_of(r: int, row: Mapping) -> ImageItem:
            lab = labels[r]
            return ImageItem(
                image=to_pil(row[image_column], info.get("base_dir")),
                label=lab,
                aliases=class_aliases(lab, extra_aliases.get(lab, ())),
                group=groups[r],
                meta={"id": f"row{r}:{lab}", "row": r},
            )

        items, spare = self._decode_rows(ds, groups, spec.max_rows, item_of, info["content"])
        info.update({"image_column": image_column, "label_column": label_column})
        return items, spare, all_names, info

    # --- the contract ----------------------------------------------------------------------
    def ranking_samples(self, lm: LoadedModel) -> list:
        from headpursuit.capture import CaptureSample

        def sample_of(it: ImageItem, prompt: str, answer: str) -> CaptureSample | None:
            correct = alias_match(answer, it.aliases)
            if self.ranking_filter == "correct" and not correct:
                return None
            meta = {"label": it.label, "id": it.meta.get("id"), "correct": correct, **(self._model_info or {})}
            return CaptureSample(prompt=prompt, answer=answer, image=it.image, meta=meta)

        return self.kept_samples(*self.ranking_answers(lm), sample_of)

    def score(self, outputs: TaskOutputs, **_: Any) -> dict:
        result = self._answer_scores(outputs)
        for g in GROUPS:
            go = outputs.groups[g]
            matches = [float(exact_class_match(o[0], r)) for o, r in zip(go.outputs, go.reference_lists())]
            result[ITEMS_KEY][g]["exact_match"] = matches
            result[g]["exact_match"] = sum(matches) / len(matches) if matches else math.nan
        if self.every_class_is_concept:
            result.pop("control")  # no control images: no metrics (n.control says 0)
            result[ITEMS_KEY].pop("control")
        return self._finish(result, outputs)

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "dataset": self.dataset,
                "concept_classes": list(self.concept_classes),
                "every_class_is_concept": self.every_class_is_concept,
                "n_classes": len(self.class_names),
                "list_classes": self.list_classes,
                "prompt_preset": self.prompt_preset,
                "task_object": self.task_object,
                "ranking_filter": self.ranking_filter,
                "metric": "accuracy: alias match of the class name (headpursuit.metrics.text.alias_match); "
                "exact_match: the whole answer is the class name or an alias (exact_class_match), the paper's",
            }
        )
        return p


def _register() -> None:
    from headpursuit.tasks import register_task

    register_task("classification", ImageClassificationTask)
    register_task("image_classification", ImageClassificationTask)


_register()
