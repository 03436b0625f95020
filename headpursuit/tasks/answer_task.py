"""The shared base of the tasks that answer every item once, greedily, to an instructed prompt
(question answering, image classification, captioning).

What they share: the prompting settings (`instruction`, `system`, `max_new_tokens`, greedy
decoding, all in the provenance), generation per group, and ranking samples made from the model's
own answers to the ranking split, of which `ranking_filter` may keep only some.

Greedy answers do not depend on which rows share a batch, so `generate_many` evaluates many head
edits in the same batches (rows = (item, edit) pairs, per-row scales): with an integer `batch_size`
b, a batch of n edits holds n * b rows, the very items of one batch of the one-edit-at-a-time path,
so the padding and the greedy tokens are those of that path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.tasks.base import GROUPS, BatchSize, GroupOutputs, Task, TaskOutputs

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample
    from headpursuit.intervention import Head
    from headpursuit.models.handle import LoadedModel

__all__ = ["AnswerTask"]


class AnswerTask(Task):
    """A task whose model output per item is one greedy answer, scored against references.

    Subclasses set `instruction`, `system`, `max_new_tokens` and `ranking_filter` (checked with
    `_check_ranking_filter` against `ranking_filters`), and implement `answer` and `answer_edits`.
    """

    shares_edit_batches = True
    headline_metric = "accuracy"

    # set by each subclass's __init__ from its config
    instruction: str
    system: str | None
    max_new_tokens: int
    ranking_filter: str
    #: the accepted `ranking_filter` values ("none" keeps every ranking answer)
    ranking_filters: tuple[str, ...] = ("none", "correct")

    def _check_ranking_filter(self, ranking_filter: str) -> None:
        if ranking_filter not in self.ranking_filters:
            choices = " or ".join(repr(c) for c in self.ranking_filters)
            raise ValueError(f"{self.name}: ranking_filter must be {choices}, got {ranking_filter!r}")

    @abc.abstractmethod
    def answer(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        """The model's greedy answer to each of `items` (`desc` labels the progress bar)."""

    @abc.abstractmethod
    def answer_edits(
        self, lm: LoadedModel, items: list, edits: Sequence[Mapping[Head, float]], desc: str, where: str = "all"
    ) -> list[GroupOutputs]:
        """`answer` under each of `edits` (``{}``: unedited), every edit in the same batches:
        element e equals ``answer`` inside ``scale_heads(lm, edits[e], where=where)``."""

    def edit_batch_rows(self, n_edits: int) -> BatchSize:
        """Rows per batch when `n_edits` edits share the batches: `n_edits` x `batch_size` (each
        batch then holds the items of one batch of the one-edit-at-a-time path: same padding), or
        "auto"."""
        return "auto" if self.batch_size == "auto" else max(1, n_edits) * self.batch_size

    def ranking_answers(self, lm: LoadedModel) -> tuple[list, GroupOutputs]:
        """The ranking items and the model's answers to them."""
        items = self.ranking_items()
        return items, self.answer(lm, items, desc=f"{self.name} ranking answers")

    def kept_samples(
        self,
        items: list,
        answers: GroupOutputs,
        sample_of: Callable[[Any, str, str], CaptureSample | None],
        why_none: str = "",
    ) -> list[CaptureSample]:
        """`sample_of(item, prompt, answer)` for every ranking answer, without those it returns None
        for (what `ranking_filter` drops); a ValueError, ending with `why_none`, if none is left."""
        samples = [
            sample
            for it, prompt, out in zip(items, answers.prompts, answers.outputs)
            if (sample := sample_of(it, prompt, out[0])) is not None
        ]
        if not samples:
            raise ValueError(
                f"{self.name}: no ranking samples left after ranking_filter={self.ranking_filter!r}{why_none}"
            )
        return samples

    def generate(self, lm: LoadedModel, *, split: str = "eval", desc: str = "") -> TaskOutputs:
        groups = {g: self.answer(lm, self.items(split, g), desc=self._group_desc(desc, g)) for g in GROUPS}
        return self.task_outputs(lm, split, desc, groups)

    def generate_many(
        self,
        lm: LoadedModel,
        edits: Sequence[Mapping[Head, float]],
        *,
        split: str = "eval",
        desc: str = "",
        where: str = "all",
    ) -> list[TaskOutputs]:
        """`generate` under each of `edits` (acting on `where`), all edits in the same batches (one
        pass per group)."""
        edits = [dict(e) for e in edits]
        if not edits:
            return []
        per_group = {
            g: self.answer_edits(lm, self.items(split, g), edits, desc=self._group_desc(desc, g), where=where)
            for g in GROUPS
        }
        return [self.task_outputs(lm, split, desc, {g: per_group[g][e] for g in GROUPS}) for e in range(len(edits))]

    def task_outputs(self, lm: LoadedModel, split: str, desc: str, groups: dict[str, GroupOutputs]) -> TaskOutputs:
        """The outputs of one evaluation from its groups' answers (image tasks add the model's notes)."""
        return TaskOutputs(task=self.name, split=split, desc=desc, groups=groups)

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "instruction": self.instruction,
                "system": self.system,
                "max_new_tokens": self.max_new_tokens,
                "decoding": "greedy",
            }
        )
        return p
