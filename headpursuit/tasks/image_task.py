"""The shared base of the image tasks (classification, captioning): one instruction per image,
greedy generation through the model's processor, and the model's notes on every output.

With `tiny_vlm` the notes say "vision tower and projector are RANDOM-INITIALISED: image results
are not real"; `model_notes` is what carries that into results.

Each image task's config (`ClassificationConfig`, `CaptioningConfig`) holds its keys and their
defaults; `batch_size` must be an integer (the "auto" probe knows nothing of image tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError
from headpursuit.intervention import per_row_scales, scale_heads
from headpursuit.models.generation import generate_with_images
from headpursuit.models.inputs import image_prompt
from headpursuit.tasks.answer_task import AnswerTask
from headpursuit.tasks.base import GROUPS, GroupOutputs, TaskConfig, TaskOutputs
from headpursuit.tasks.image_data import ImageItem, images_digest, rows_needed, select_rows, spare_rows

if TYPE_CHECKING:
    from headpursuit.intervention import Head
    from headpursuit.models.handle import LoadedModel

__all__ = ["NO_GROUP", "ImageTask", "ImageTaskOutputs", "model_notes"]

#: the group of a dataset row that belongs to no group (e.g. an image without captions): never decoded
NO_GROUP = "none"


def model_notes(lm: LoadedModel) -> dict:
    """What every image-task output must carry about the model (random vision weights...)."""
    prov = lm.provenance
    return {
        "model": lm.name,
        "vision_random_init": bool(prov.get("vision_random_init", False)),
        "random_init": bool(prov.get("random_init", False)),
        "notes": list(prov.get("notes", [])),
    }


@dataclass
class ImageTaskOutputs(TaskOutputs):
    """TaskOutputs plus what the model was (random vision weights must follow the numbers)."""

    model: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)  # group -> list[ImageItem] in output order


class ImageTask(AnswerTask):
    """A task whose inputs are images with one text instruction (classification, captioning).

    Subclasses fill `self.instruction`, `self.system`, `self.max_new_tokens`, call
    `self._split(items, source)` with `ImageItem`s (from `_decode_rows` for a dataset), and
    implement `score`. Every output carries the model's notes (`model_notes`): with `tiny_vlm`
    that is "vision tower and projector are RANDOM-INITIALISED: image results are not real".
    """

    def __init__(self, config: TaskConfig, tokenizer: Any = None, *, concept: Any = None):
        super().__init__(config, tokenizer, concept=concept)
        if self.batch_size == "auto":
            # The "auto" probe runs text-only batches: it knows nothing of the image tokens.
            raise ConfigError(
                f"{self.name}: task.batch_size=auto is for text generation; image tasks need an integer "
                "(e.g. task.batch_size=8)"
            )
        self.image_batch_size = int(self.batch_size)
        self._model_info: dict | None = None

    # --- data --------------------------------------------------------------------------------
    def _decode_rows(
        self,
        ds: Any,
        groups: Sequence[str],
        max_rows: int | None,
        item_of: Callable[[int, Mapping], ImageItem],
        content: dict[str, str],
    ) -> tuple[list[ImageItem], dict[str, list[ImageItem]]]:
        """The dataset rows the splits need, decoded (`item_of(row index, row)`), and the spare
        ranking-only items of the extra rank groups (`Task.extra_rank_groups`).

        `groups` is every row's group, read without decoding an image; rows in group
        `NO_GROUP` are skipped. The spare rows are decoded on top of the selected ones, so that
        the split of the selected rows does not depend on them. `content` (the provenance's, see
        `Task.data_identity`) gets ``images``: the decoded images' digest, since a table may name
        image files by path, which its own digest does not cover.
        """
        need = {g: rows_needed(self.n_rank, self.n_eval, g, max_rows) for g in GROUPS}
        need[NO_GROUP] = 0
        rows = select_rows(groups, need, self.seed)
        extra = {
            g: spare_rows(groups, g, need[g], int(self.n_rank or 0), self.seed, max_rows)
            for g in self.extra_rank_groups()
        }
        every = rows + [r for g in extra for r in extra[g]]
        sub = ds.select(every)
        decoded = {r: item_of(r, sub[k]) for k, r in enumerate(every)}
        spare = {g: [decoded[r] for r in extra[g]] for g in extra}
        content["images"] = images_digest(decoded[r] for r in every)
        return [decoded[r] for r in rows], spare

    # --- generation --------------------------------------------------------------------------
    def prompt(self, lm: LoadedModel) -> str:
        return image_prompt(lm, self.instruction, system=self.system)

    def answer(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        self._model_info = model_notes(lm)
        prompt = self.prompt(lm)
        prompts = [prompt] * len(items)
        outs = (
            generate_with_images(
                lm,
                prompts,
                [it.image for it in items],
                max_new_tokens=self.max_new_tokens,
                batch_size=self.image_batch_size,
                desc=desc,
            )
            if items
            else []
        )
        return self._group_outputs(items, prompts, outs)

    def answer_edits(
        self, lm: LoadedModel, items: list, edits: Sequence[Mapping[Head, float]], desc: str, where: str = "all"
    ) -> list[GroupOutputs]:
        """`answer` under every edit: rows are (item, edit) pairs, item-major; each batch holds the
        items of one batch of the one-edit-at-a-time path (its padding), every edit of each, under
        per-row scales."""
        self._model_info = model_notes(lm)
        prompt = self.prompt(lm)
        edits = [dict(e) for e in edits]
        texts: list[list[str]] = [[] for _ in edits]
        size = self.image_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            rows = [(it, e) for it in chunk for e in range(len(edits))]
            with scale_heads(lm, per_row_scales([edits[e] for _, e in rows]), where=where):
                outs = generate_with_images(
                    lm,
                    [prompt] * len(rows),
                    [it.image for it, _ in rows],
                    max_new_tokens=self.max_new_tokens,
                    batch_size=len(rows),
                    desc=desc,
                )
            for (_, e), text in zip(rows, outs):
                texts[e].append(text)
        return [self._group_outputs(items, [prompt] * len(items), t) for t in texts]

    def _group_outputs(self, items: list, prompts: list[str], answers: list[str]) -> GroupOutputs:
        return GroupOutputs(
            inputs=[str(it.meta.get("id", it.label)) for it in items],
            prompts=prompts,
            outputs=[[a] for a in answers],
            references=[self.references(it) for it in items],
        )

    def references(self, item: ImageItem) -> list[str]:
        return list(item.aliases)

    def task_outputs(self, lm: LoadedModel, split: str, desc: str, groups: dict[str, GroupOutputs]) -> ImageTaskOutputs:
        return ImageTaskOutputs(
            task=self.name,
            split=split,
            desc=desc,
            groups=groups,
            model=model_notes(lm),
            items={g: self.items(split, g) for g in GROUPS},
        )

    def _finish(self, result: dict, outputs: TaskOutputs) -> dict:
        """Add examples and the model's notes to a scored result."""
        model = getattr(outputs, "model", None) or self._model_info or {}
        notes = list(model.get("notes", []))
        result["examples"] = [
            {
                "prompt": go.prompts[i],
                "image": go.inputs[i],
                "output": go.first_output(i),
                "references": (go.references or [[]] * len(go))[i],
                "group": g,
                "vision_random_init": bool(model.get("vision_random_init")),
                "notes": notes,
            }
            for g, go, i in self._example_indices(outputs)
        ]
        result["vision_random_init"] = bool(model.get("vision_random_init"))
        result["notes"] = notes
        return result

    def provenance(self) -> dict:
        p = super().provenance()
        if self._model_info is not None:
            p["vision_random_init"] = self._model_info["vision_random_init"]
            p["model_notes"] = self._model_info["notes"]
        return p
