"""Image captioning with a concept in the captions (the paper's LLaVA-NeXT captioning experiment).

The model captions each image ("Describe this image in one sentence."). The concept is a word list
(default: colours; also ``numbers``, ``sentiment`` or any list); an image belongs to the *concept*
group when one of its reference captions contains a concept word, else to the *control* group.
Suppressing the concept heads should remove concept words from the concept group's captions while
caption quality (against the references) drops as little as possible.

Config (keyword arguments; a Hydra ``task`` node passes the same keys)::

    name: captioning
    concept: colors            # Concept name (headpursuit/data/concepts) or a word list
    source: fixture            # fixture (synthetic shapes + patterns, offline) | hub | local
    data_path: null            # local: a folder of .parquet / an image folder with metadata, or a
                               #   .parquet/.jsonl/.json/.csv file with image + captions columns
    hub_id: lmms-lab/flickr30k # hub: Flickr30k as parquet (image, caption = list of 5; split
                               #   test); the whole split is downloaded (~4.4 GB). COCO: any
                               #   parquet copy with an image column and a list-of-captions column
    hub_config: null
    hub_split: test
    image_column: image
    captions_column: caption   # a list of reference captions per image (or one string)
    max_rows: null             # decode at most this many images per group
    instruction: "Describe this image in one sentence."
    system: null
    max_new_tokens: 30
    ranking_filter: none       # none | concept: keep only ranking captions with a concept word
    n_rank: 8                  # concept images for ranking (int or {concept: .., control: ..})
    n_eval: 10                 # per group
    rank_groups: null          # null / [concept]: rank on concept images; [concept, control]: also
                               #   n_rank control images (beyond those evaluation uses)
    seed: 0
    batch_size: 8

Metrics per group (`headpursuit.metrics.captions`, package ``sacrebleu``): ``concept_rate``
(captions with at least one concept word), ``concept_count`` (mean concept words per caption),
``bleu`` (corpus BLEU-4 against all references), ``chrf``, ``sentence_bleu`` (mean per-caption
BLEU), ``mean_words`` and ``empty_rate``. Results also carry the model's notes and
``vision_random_init`` (true for `tiny_vlm`, whose image results are not real).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headpursuit.metrics.captions import caption_quality, metric_signatures
from headpursuit.metrics.text import concept_rate, empty_rate
from headpursuit.tasks.base import GROUPS, TaskOutputs
from headpursuit.tasks.image_data import (
    ImageItem,
    load_image_dataset,
    pattern_items,
    rows_needed,
    select_rows,
    shape_items,
    spare_rows,
    to_pil,
)
from headpursuit.tasks.image_task import ImageTask

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["CaptioningTask", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Describe this image in one sentence."
_SOURCES = ("fixture", "hub", "local")


def _captions(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    return [c.strip() for c in (value or []) if isinstance(c, str) and c.strip()]


class CaptioningTask(ImageTask):
    name = "captioning"
    config_keys = (
        "source",
        "data_path",
        "hub_id",
        "hub_config",
        "hub_split",
        "image_column",
        "captions_column",
        "max_rows",
        "instruction",
        "system",
        "max_new_tokens",
        "ranking_filter",
    )

    def __init__(
        self,
        *,
        concept: Any = "colors",
        tokenizer: Any = None,
        source: str = "fixture",
        data_path: str | None = None,
        hub_id: str = "lmms-lab/flickr30k",
        hub_config: str | None = None,
        hub_split: str = "test",
        image_column: str = "image",
        captions_column: str = "caption",
        max_rows: int | None = None,
        instruction: str | None = DEFAULT_INSTRUCTION,
        system: str | None = None,
        max_new_tokens: int = 30,
        ranking_filter: str = "none",
        n_rank: Any = 8,
        n_eval: Any = 10,
        rank_groups: Any = None,
        seed: int = 0,
        batch_size: int = 8,
        n_examples: int = 3,
        **unknown: Any,
    ):
        if source not in _SOURCES:
            raise ValueError(f"{self.name}: unknown source {source!r}; known: {', '.join(_SOURCES)}")
        if ranking_filter not in ("none", "concept"):
            raise ValueError(f"{self.name}: ranking_filter must be 'none' or 'concept', got {ranking_filter!r}")
        if n_rank is None:
            n_rank = 8  # concept images (an int n_rank is for the concept group)
        super().__init__(
            concept=concept,
            tokenizer=tokenizer,
            n_rank=n_rank,
            n_eval=n_eval,
            rank_groups=rank_groups,
            seed=seed,
            batch_size=batch_size,
            n_examples=n_examples,
            **unknown,
        )
        self.instruction = (instruction or DEFAULT_INSTRUCTION).strip()
        self.system = system
        self.max_new_tokens = int(max_new_tokens)
        self.ranking_filter = ranking_filter

        spare: dict[str, list[ImageItem]] = {}
        if source == "fixture":
            items = shape_items("shape") + pattern_items()
            for it in items:
                it.group = self._group_of(it.captions)
            if max_rows is not None:
                items = [it for g in GROUPS for it in [x for x in items if x.group == g][: int(max_rows)]]
            data_source = {
                "source": "fixture",
                "synthetic": True,
                "fixture": "synthetic coloured shapes + black-and-white patterns with template reference captions",
            }
            label = "fixture"
        else:
            items, spare, data_source = self._load_data(
                source,
                data_path=data_path,
                hub_id=hub_id,
                hub_config=hub_config,
                hub_split=hub_split,
                image_column=image_column,
                captions_column=captions_column,
                max_rows=max_rows,
            )
            label = str(data_source.get("hub_id") or data_source.get("path"))
        data_source["n_items"] = {g: sum(it.group == g for it in items) for g in GROUPS}
        data_source["grouping"] = "concept iff a reference caption contains a concept word"
        self.data_source = data_source
        self._split(items, source=label, spare=spare)

    def _group_of(self, captions: list[str]) -> str:
        return "concept" if any(self.concept.count_in_text(c) for c in captions) else "control"

    def _load_data(self, source, *, data_path, hub_id, hub_config, hub_split, image_column, captions_column, max_rows):
        split = hub_split if source == "hub" else "train"
        ds, info = load_image_dataset(
            source,
            data_path=data_path,
            hub_id=hub_id,
            hub_config=hub_config,
            split=split,
            required=(image_column, captions_column),
        )
        caps = [_captions(v) for v in ds.select_columns([captions_column])[captions_column]]
        groups = [self._group_of(c) if c else "none" for c in caps]  # rows without captions skipped
        need = {g: rows_needed(self.n_rank, self.n_eval, g, max_rows) for g in GROUPS}
        need["none"] = 0
        rows = select_rows(groups, need, self.seed)
        # Ranking-only rows of the extra rank groups, decoded on top so the split of `rows` is unchanged.
        extra = {
            g: spare_rows(groups, g, need[g], int(self.n_rank or 0), self.seed, max_rows)
            for g in self.extra_rank_groups()
        }
        every = rows + [r for g in extra for r in extra[g]]
        sub = ds.select(every)
        decoded = {
            r: ImageItem(
                image=to_pil(sub[k][image_column], info.get("base_dir")),
                captions=caps[r],
                group=groups[r],
                meta={"id": f"row{r}", "row": r},
            )
            for k, r in enumerate(every)
        }
        info.update({"image_column": image_column, "captions_column": captions_column})
        spare = {g: [decoded[r] for r in extra[g]] for g in extra}
        return [decoded[r] for r in rows], spare, info

    def references(self, item: ImageItem) -> list[str]:
        return list(item.captions)

    # --- the contract ----------------------------------------------------------------------
    def ranking_samples(self, lm: LoadedModel) -> list:
        from headpursuit.capture import CaptureSample

        items, go = self._answers_for_ranking(lm)
        samples = []
        for it, prompt, out in zip(items, go.prompts, go.outputs):
            caption = out[0]
            n_concept = self.concept.count_in_text(caption)
            if self.ranking_filter == "concept" and not n_concept:
                continue
            samples.append(
                CaptureSample(
                    prompt=prompt,
                    answer=caption,
                    image=it.image,
                    meta={
                        "id": it.meta.get("id"),
                        "references": it.captions,
                        "concept_words": n_concept,
                        **(self._model_info or {}),
                    },
                )
            )
        if not samples:
            raise ValueError(
                f"{self.name}: no ranking samples left after ranking_filter="
                f"{self.ranking_filter!r} (no caption contains a concept word)"
            )
        return samples

    def score(self, outputs: TaskOutputs, **_: Any) -> dict:
        result: dict[str, Any] = {"n": {}}
        for g in GROUPS:
            go = outputs.groups[g]
            caps = [o[0] for o in go.outputs]
            cr = concept_rate(caps, self.concept)
            quality = caption_quality(caps, go.reference_lists()) if caps else caption_quality([], [])
            result[g] = {
                "concept_rate": float(cr.rate),
                "concept_count": float(cr.mean_count),
                **{k: float(v) for k, v in quality.items()},
                "mean_words": float(sum(len(c.split()) for c in caps) / len(caps)) if caps else float("nan"),
                "empty_rate": float(empty_rate(caps)),
            }
            result["n"][g] = len(caps)
        return self._finish(result, outputs)

    def provenance(self) -> dict:
        p = super().provenance()
        p.update({"ranking_filter": self.ranking_filter, "caption_metrics": metric_signatures()})
        return p


def _register() -> None:
    from headpursuit.tasks import register_task

    register_task("captioning", CaptioningTask)
    register_task("image_captioning", CaptioningTask)


_register()
