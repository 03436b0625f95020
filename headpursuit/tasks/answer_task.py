"""The shared base of the tasks that answer every item once, greedily, to an instructed prompt
(question answering, image classification, captioning).

What they share: the prompting settings (`instruction`, `system`, `max_new_tokens`, greedy
decoding, all in the provenance), generation per group, and ranking samples made from the model's
own answers to the ranking split, of which `ranking_filter` may keep only some.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from headpursuit.tasks.base import GROUPS, GroupOutputs, Task, TaskOutputs

if TYPE_CHECKING:
    from headpursuit.capture import CaptureSample
    from headpursuit.models.handle import LoadedModel

__all__ = ["AnswerTask"]


class AnswerTask(Task):
    """A task whose model output per item is one greedy answer, scored against references.

    Subclasses set `instruction`, `system`, `max_new_tokens` and `ranking_filter` (checked with
    `_check_ranking_filter` against `ranking_filters`), and implement `answer`.
    """

    instruction: str = ""
    system: str | None = None
    max_new_tokens: int = 16
    ranking_filter: str = "none"
    #: the accepted `ranking_filter` values ("none" keeps every ranking answer)
    ranking_filters: tuple[str, ...] = ("none", "correct")

    def _check_ranking_filter(self, ranking_filter: str) -> None:
        if ranking_filter not in self.ranking_filters:
            choices = " or ".join(repr(c) for c in self.ranking_filters)
            raise ValueError(f"{self.name}: ranking_filter must be {choices}, got {ranking_filter!r}")

    @abc.abstractmethod
    def answer(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        """The model's greedy answer to each of `items` (`desc` labels the progress bar)."""

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
        out = TaskOutputs(task=self.name, split=split, desc=desc)
        for g in GROUPS:
            out.groups[g] = self.answer(lm, self.items(split, g), desc=self._group_desc(desc, g))
        return out

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
