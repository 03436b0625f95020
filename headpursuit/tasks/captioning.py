"""Image captioning with a concept in the captions (the paper's LLaVA-NeXT captioning experiment).

The model captions each image ("Describe this image in one sentence."; with ``prompt_preset:
paper`` the paper's instruction for the model's family, `headpursuit.tasks.prompts.caption_prompt`).
The concept is a word list (default: colours; also ``quantity``, ``sentiment``, ``numbers`` or any
list: the paper's three are colours, sentiments and quantity); an image belongs to the *concept*
group when one of its reference captions contains a concept word, else to the *control* group.
Suppressing the concept heads should remove concept words from the concept group's captions while
caption quality (against the references) drops as little as possible.

Config: `CaptioningConfig` (a Hydra ``task`` node holds the same keys)::

    task = CaptioningTask(CaptioningConfig(concept="quantity", n_rank=8, n_eval=10), lm.tokenizer)

Metrics per group (`headpursuit.metrics.captions`): ``concept_rate`` (captions with at least one
concept word), ``concept_count`` (mean concept words per caption, the paper's keyword count),
``cider`` (CIDEr-D of the group's captions against their references, `headpursuit.metrics.cider`,
the paper's quality metric), ``bleu`` (corpus BLEU-4 against all references, sacrebleu), ``chrf``,
``sentence_bleu`` (mean per-caption BLEU), ``mean_words`` and ``empty_rate``. Results also carry the model's notes and
``vision_random_init`` (true for `tiny_vlm`, whose image results are not real).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headpursuit.metrics.captions import caption_quality, metric_signatures
from headpursuit.metrics.text import count_concept_words, mean_of_items
from headpursuit.tasks.base import GROUPS, ITEMS_KEY, TaskConfig, TaskOutputs, group_counts
from headpursuit.tasks.image_data import (
    IMAGE_SOURCES,
    ImageItem,
    load_image_dataset,
    pattern_items,
    shape_items,
    to_pil,
)
from headpursuit.tasks.image_task import NO_GROUP, ImageTask
from headpursuit.tasks.prompts import CAPTION_PAPER, caption_prompt, check_preset
from headpursuit.tasks.sources import DataSpec

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["CaptioningConfig", "CaptioningTask", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Describe this image in one sentence."


def _captions(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return [c.strip() for c in (value or []) if isinstance(c, str) and c.strip()]


def single_token_concept(concept: Any, tokenizer: Any) -> Any:
    """`concept` (a name, a word list or a Concept) with only its single-token words in the token
    set (`headpursuit.concepts.build_concept`'s `single_token_only`)."""
    from headpursuit.concepts import build_concept, load_concept

    if tokenizer is None:
        raise ValueError("single_token_only needs a tokenizer: construct the task with build_task(cfg, lm)")
    if hasattr(concept, "words") and hasattr(concept, "count_in_text"):
        return build_concept(concept.words, tokenizer, concept.name, single_token_only=True)
    words = list(concept) if isinstance(concept, (list, tuple)) else concept
    return load_concept(words, tokenizer, single_token_only=True)


@dataclass(kw_only=True)
class CaptioningConfig(TaskConfig):
    """Image captioning's keys (the `TaskConfig` keys with its defaults, and its own)."""

    name: str = "captioning"
    #: colors (the default), quantity, sentiment, numbers or any word list (the paper's three are
    #: colours, sentiments and quantity)
    concept: Any = "colors"
    #: true: only single-token words feed the ranking dictionary; every word still counts in the
    #: captions (the paper's Gemma 3 sentiments)
    single_token_only: bool = False
    #: fixture (synthetic shapes and patterns, offline) | hub | local
    source: str = "fixture"
    #: source local: a folder of .parquet / an image folder with metadata, or a
    #: .parquet/.jsonl/.json/.csv file with image + captions columns
    data_path: str | None = None
    #: source hub: Flickr30k as parquet (image, caption = a list of 5; split test; the whole split is
    #: downloaded, ~4.4 GB). COCO: any parquet copy with an image and a list-of-captions column
    hub_id: str = "lmms-lab/flickr30k"
    hub_config: str | None = None
    hub_split: str = "test"
    image_column: str = "image"
    #: a list of reference captions per image (or one string)
    captions_column: str = "caption"
    #: decode at most this many images per group
    max_rows: int | None = None
    n_rank: Any = 8
    n_eval: Any = 10
    #: ours: `instruction` | paper: the paper's caption prompt for the model's family (Table 4)
    prompt_preset: str = "ours"
    #: ours: the caption request (null or "": the default)
    instruction: str | None = DEFAULT_INSTRUCTION
    system: str | None = None
    max_new_tokens: int = 30
    #: none | concept: keep only the ranking captions with a concept word
    ranking_filter: str = "none"
    #: rows per generate batch (an integer: auto does not model image tokens)
    batch_size: Any = 8


class CaptioningTask(ImageTask):
    name = "captioning"
    config_class = CaptioningConfig
    headline_metric = "concept_rate"
    ranking_filters = ("none", "concept")

    def __init__(self, config: CaptioningConfig, tokenizer: Any = None):
        c = config
        spec = DataSpec(c.source, c.data_path, c.hub_id, c.hub_config, c.hub_split, c.max_rows)
        spec = spec.checked(self.name, IMAGE_SOURCES)
        self._check_ranking_filter(c.ranking_filter)
        self.prompt_preset = check_preset(self.name, c.prompt_preset)
        self.single_token_only = bool(c.single_token_only)
        concept = single_token_concept(c.concept, tokenizer) if self.single_token_only else None
        super().__init__(c, tokenizer, concept=concept)
        # paper: set per model family when prompting (`prompt`); ours: the configured instruction
        self.instruction = "" if self.prompt_preset == "paper" else (c.instruction or DEFAULT_INSTRUCTION).strip()
        self.prompt_family: str | None = None
        self.system = c.system
        self.max_new_tokens = int(c.max_new_tokens)
        self.ranking_filter = c.ranking_filter

        spare: dict[str, list[ImageItem]] = {}
        if c.source == "fixture":
            items = shape_items("shape") + pattern_items()
            for it in items:
                it.group = self._group_of(it.captions)
            items = spec.head_per_group(items)
            data_source = {
                "source": "fixture",
                "synthetic": True,
                "fixture": "synthetic coloured shapes + black-and-white patterns with template reference captions",
            }
            label = "fixture"
        else:
            items, spare, data_source = self._load_data(spec, c.image_column, c.captions_column)
            label = str(data_source.get("hub_id") or data_source.get("path"))
        data_source["n_items"] = group_counts(items)
        data_source["grouping"] = "concept iff a reference caption contains a concept word"
        self.data_source = data_source
        self._split(items, source=label, spare=spare)

    def _group_of(self, captions: list[str]) -> str:
        return "concept" if any(self.concept.count_in_text(c) for c in captions) else "control"

    def _load_data(
        self, spec: DataSpec, image_column: str, captions_column: str
    ) -> tuple[list[ImageItem], dict[str, list[ImageItem]], dict]:
        ds, info = load_image_dataset(spec, required=(image_column, captions_column))
        caps = [_captions(v) for v in ds.select_columns([captions_column])[captions_column]]
        groups = [self._group_of(c) if c else NO_GROUP for c in caps]  # rows without captions skipped

        def item_of(r: int, row: Mapping) -> ImageItem:
            image = to_pil(row[image_column], info.get("base_dir"))
            return ImageItem(image=image, captions=caps[r], group=groups[r], meta={"id": f"row{r}", "row": r})

        items, spare = self._decode_rows(ds, groups, spec.max_rows, item_of, info["content"])
        info.update({"image_column": image_column, "captions_column": captions_column})
        return items, spare, info

    def references(self, item: ImageItem) -> list[str]:
        return list(item.captions)

    # --- prompting ---------------------------------------------------------------------------
    def instruction_for(self, family: str) -> str:
        """The caption instruction for a model family: the paper's (`caption_prompt`) under
        ``prompt_preset: paper``, else `instruction`."""
        return caption_prompt(family) if self.prompt_preset == "paper" else self.instruction

    def prompt(self, lm: LoadedModel) -> str:
        self.prompt_family = lm.family.name
        self.instruction = self.instruction_for(lm.family.name)  # what the provenance records
        return super().prompt(lm)

    # --- the contract ----------------------------------------------------------------------
    def ranking_samples(self, lm: LoadedModel) -> list:
        from headpursuit.capture import CaptureSample

        def sample_of(it: ImageItem, prompt: str, caption: str) -> CaptureSample | None:
            n_concept = self.concept.count_in_text(caption)
            if self.ranking_filter == "concept" and not n_concept:
                return None
            meta = {"id": it.meta.get("id"), "references": it.captions, "concept_words": n_concept}
            return CaptureSample(
                prompt=prompt, answer=caption, image=it.image, meta={**meta, **(self._model_info or {})}
            )

        return self.kept_samples(*self.ranking_answers(lm), sample_of, why_none=" (no caption contains a concept word)")

    def score(self, outputs: TaskOutputs, **_: Any) -> dict:
        result: dict[str, Any] = {"n": {}, ITEMS_KEY: {}}
        for g in GROUPS:
            go = outputs.groups[g]
            caps = [o[0] for o in go.outputs]
            quality = caption_quality(caps, go.reference_lists()) if caps else caption_quality([], [])
            # Per caption; the corpus metrics (BLEU, chrF, CIDEr-D's document frequencies) are no item mean.
            counts = [count_concept_words(c, self.concept) for c in caps]
            items = {
                "concept_rate": [float(c > 0) for c in counts],
                "concept_count": [float(c) for c in counts],
                "mean_words": [float(len(c.split())) for c in caps],
                "empty_rate": [float(not c.strip()) for c in caps],
            }
            result[ITEMS_KEY][g] = items
            means = mean_of_items(items)
            result[g] = {
                "concept_rate": means["concept_rate"],
                "concept_count": means["concept_count"],
                **{k: float(v) for k, v in quality.items()},
                "mean_words": means["mean_words"],
                "empty_rate": means["empty_rate"],
            }
            result["n"][g] = len(caps)
        return self._finish(result, outputs)

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "ranking_filter": self.ranking_filter,
                "caption_metrics": metric_signatures(),
                "prompt_preset": self.prompt_preset,
                # the family prompted in this process (None when every generation came from a cache)
                "prompt_family": self.prompt_family,
                "single_token_only": self.single_token_only,
            }
        )
        if self.prompt_preset == "paper":  # the prompt of any family, with or without prompting here
            p["paper_caption_prompts"] = dict(CAPTION_PAPER)
        return p


def _register() -> None:
    from headpursuit.tasks import register_task

    register_task("captioning", CaptioningTask)
    register_task("image_captioning", CaptioningTask)


_register()
