"""Image classification by generated label (the paper's LLaVA-NeXT classification experiment).

The model sees an image and an instruction ("What shape is shown in this image? Answer with one
word.") and answers in words; an answer is correct when one of the true class's aliases occurs in
it as whole words (`headpursuit.metrics.text.alias_match`: "It is a Pickup truck." matches
``pickup_truck``). The concept is the class names of a configurable group of classes
(`concept_classes`, e.g. CIFAR-100's vehicles); the *concept* group is the images of those
classes, the *control* group every other image. Suppressing the concept heads should make the
model stop naming concept classes (concept accuracy drops) while control accuracy holds.

Config (keyword arguments; a Hydra ``task`` node passes the same keys)::

    name: classification
    source: fixture            # fixture (synthetic shapes, offline) | hub | local
    fixture_label: shape       # fixture: the class is the shape (circle, square...) or the colour
    data_path: null            # local: an image folder (class sub-folders), a folder of .parquet,
                               #   or a .parquet/.jsonl/.json/.csv file with image + label columns
    hub_id: uoft-cs/cifar100   # hub (default CIFAR-100: image column img, label fine_label)
    hub_config: null
    hub_split: test
    image_column: img          # default: img for CIFAR-100, image otherwise
    label_column: fine_label   # default: fine_label for CIFAR-100, label otherwise
    class_names: null          # index -> name when the label column holds ints without names
    concept_classes: null      # class names of the concept group (default: CIFAR-100 vehicles;
                               #   fixture: circle, square, triangle / red, orange, yellow)
    concept: null              # Concept for ranking (default: the concept classes' names)
    aliases: {}                # extra accepted answers per class: {pickup_truck: [truck]}
    max_rows: null             # decode at most this many images per group
    instruction: null          # default depends on the data (see DEFAULT_INSTRUCTIONS)
    list_classes: false        # append "Choose one of: ..." with every class name
    system: null
    max_new_tokens: 12
    ranking_filter: none       # none | correct: keep ranking answers that name the true class
    # + the keys every image task shares (n_rank, n_eval, rank_groups, seed, batch_size):
    #   see `headpursuit.tasks.image_task`

Metrics per group: ``accuracy``, ``concept_rate`` (answers naming a concept class),
``concept_count`` and ``empty_rate``. Results also carry the model's notes and
``vision_random_init`` (true for `tiny_vlm`, whose image results are not real).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.metrics.text import alias_match
from headpursuit.tasks.base import TaskOutputs, group_counts, parse_rank_groups
from headpursuit.tasks.image_data import IMAGE_SOURCES, ImageItem, load_image_dataset, shape_items, to_pil
from headpursuit.tasks.image_task import ImageTask
from headpursuit.tasks.sources import DataSpec

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["ImageClassificationTask", "CIFAR100_VEHICLES", "DEFAULT_INSTRUCTIONS", "class_aliases"]

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


class ImageClassificationTask(ImageTask):
    name = "classification"

    def __init__(
        self,
        *,
        concept: Any = None,
        tokenizer: Any = None,
        source: str = "fixture",
        fixture_label: str = "shape",
        data_path: str | None = None,
        hub_id: str = CIFAR100_ID,
        hub_config: str | None = None,
        hub_split: str = "test",
        image_column: str | None = None,
        label_column: str | None = None,
        class_names: Sequence[str] | None = None,
        concept_classes: Sequence[str] | None = None,
        aliases: Mapping[str, Sequence[str]] | None = None,
        max_rows: int | None = None,
        instruction: str | None = None,
        list_classes: bool = False,
        system: str | None = None,
        max_new_tokens: int = 12,
        ranking_filter: str = "none",
        n_rank: Any = 8,
        n_eval: Any = 10,
        rank_groups: Any = None,
        seed: int = 0,
        **base: Any,  # the other `Task` keys (batch_size, n_examples)
    ):
        spec = DataSpec(source, data_path, hub_id, hub_config, hub_split, max_rows).checked(self.name, IMAGE_SOURCES)
        self._check_ranking_filter(ranking_filter)
        self.seed = int(seed)
        self.n_rank, self.n_eval = n_rank, n_eval
        self.rank_groups = parse_rank_groups(rank_groups)  # _load_data needs it before super().__init__
        spare: dict[str, list[ImageItem]] = {}
        extra_aliases = {str(k): list(v) for k, v in (aliases or {}).items()}

        if source == "fixture":
            if fixture_label not in FIXTURE_CONCEPT:
                raise ValueError(f"{self.name}: fixture_label must be 'shape' or 'color', got {fixture_label!r}")
            concept_classes = list(concept_classes or FIXTURE_CONCEPT[fixture_label])
            items = shape_items(fixture_label)
            all_names = list(dict.fromkeys(_label(it) for it in items))
            self._check_classes(concept_classes, all_names)
            for it in items:
                it.aliases = class_aliases(_label(it), extra_aliases.get(_label(it), ()))
                it.group = "concept" if it.label in concept_classes else "control"
            items = spec.head_per_group(items)
            data_source = {
                "source": "fixture",
                "fixture": f"synthetic shapes (label: {fixture_label})",
                "synthetic": True,
            }
            default_instruction = DEFAULT_INSTRUCTIONS[fixture_label]
        else:
            is_cifar = source == "hub" and hub_id == CIFAR100_ID
            columns = (
                image_column or ("img" if is_cifar else "image"),
                label_column or ("fine_label" if is_cifar else "label"),
            )
            if concept_classes is None:
                if not is_cifar:
                    raise ValueError(
                        f"{self.name}: set concept_classes (the class names of the "
                        f"concept group) for data other than {CIFAR100_ID}"
                    )
                concept_classes = CIFAR100_VEHICLES
            concept_classes = list(concept_classes)
            items, spare, all_names, data_source = self._load_data(
                spec, columns, class_names, concept_classes, extra_aliases
            )
            default_instruction = DEFAULT_INSTRUCTIONS["data"]

        if concept is None:
            concept = [_display(c) for c in concept_classes]
            if tokenizer is not None:
                from headpursuit.concepts import load_concept

                concept = load_concept(concept, tokenizer, name="concept_classes")
        super().__init__(
            concept=concept,
            tokenizer=tokenizer,
            n_rank=n_rank,
            n_eval=n_eval,
            rank_groups=rank_groups,
            seed=seed,
            **base,
        )
        self.concept_classes = concept_classes
        self.class_names = all_names
        self.list_classes = bool(list_classes)
        self.system = system
        self.max_new_tokens = int(max_new_tokens)
        self.ranking_filter = ranking_filter
        instr = (instruction if instruction is not None else default_instruction).strip()
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
        concept_classes: Sequence[str],
        extra_aliases: Mapping[str, Sequence[str]],
    ) -> tuple[list[ImageItem], dict[str, list[ImageItem]], list[str], dict]:
        """The selected and spare items, every class name and the provenance; `columns` is
        (image column, label column)."""
        image_column, label_column = columns
        ds, info = load_image_dataset(spec, required=columns)
        feature = ds.features.get(label_column)
        names = list(getattr(feature, "names", None) or class_names or [])
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
        all_names = names or sorted(set(labels))
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

        items, spare = self._decode_rows(ds, groups, spec.max_rows, item_of)
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
        return self._finish(result, outputs)

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "concept_classes": list(self.concept_classes),
                "n_classes": len(self.class_names),
                "list_classes": self.list_classes,
                "ranking_filter": self.ranking_filter,
                "metric": "alias match of the class name (headpursuit.metrics.text.alias_match)",
            }
        )
        return p


def _register() -> None:
    from headpursuit.tasks import register_task

    register_task("classification", ImageClassificationTask)
    register_task("image_classification", ImageClassificationTask)


_register()
