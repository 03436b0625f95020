"""The shared base of the image tasks (classification, captioning): one instruction per image,
greedy generation through the model's processor, and the model's notes on every output.

With `tiny_vlm` the notes say "vision tower and projector are RANDOM-INITIALISED: image results
are not real"; `model_notes` is what carries that into results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headpursuit.models.generation import generate_with_images
from headpursuit.models.inputs import image_prompt
from headpursuit.tasks.base import GROUPS, GroupOutputs, Task, TaskOutputs
from headpursuit.tasks.image_data import ImageItem

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["ImageTask", "ImageTaskOutputs", "model_notes"]


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


class ImageTask(Task):
    """A task whose inputs are images with one text instruction (classification, captioning).

    Subclasses fill `self.instruction`, `self.system`, `self.max_new_tokens`, call
    `self._split(items, source)` with `ImageItem`s, and implement `score`. Every output carries
    the model's notes (`model_notes`): with `tiny_vlm` that is "vision tower and projector are
    RANDOM-INITIALISED: image results are not real".
    """

    instruction: str = ""
    system: str | None = None
    max_new_tokens: int = 16

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._model_info: dict | None = None

    def prompt(self, lm: LoadedModel) -> str:
        return image_prompt(lm, self.instruction, system=self.system)

    def _run(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        self._model_info = model_notes(lm)
        prompt = self.prompt(lm)
        prompts = [prompt] * len(items)
        outs = (
            generate_with_images(
                lm,
                prompts,
                [it.image for it in items],
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                desc=desc,
            )
            if items
            else []
        )
        return GroupOutputs(
            inputs=[str(it.meta.get("id", it.label)) for it in items],
            prompts=prompts,
            outputs=[[o] for o in outs],
            references=[self.references(it) for it in items],
        )

    def references(self, item: ImageItem) -> list[str]:
        return list(item.aliases)

    def generate(self, lm: LoadedModel, *, split: str = "eval", desc: str = "") -> ImageTaskOutputs:
        out = ImageTaskOutputs(task=self.name, split=split, desc=desc)
        for g in GROUPS:
            label = " ".join(x for x in (self.name, desc, g) if x)
            items = self.items(split, g)
            out.groups[g] = self._run(lm, items, desc=label)
            out.items[g] = items
        out.model = model_notes(lm)
        return out

    def _answers_for_ranking(self, lm: LoadedModel) -> tuple[list, GroupOutputs]:
        items = self.ranking_items()
        return items, self._run(lm, items, desc=f"{self.name} ranking answers")

    def _finish(self, result: dict, outputs: TaskOutputs) -> dict:
        """Add examples and the model's notes to a scored result."""
        model = getattr(outputs, "model", None) or self._model_info or {}
        notes = list(model.get("notes", []))
        examples = []
        for g in GROUPS:
            go = outputs.groups.get(g)
            if go is None:
                continue
            for i in range(min(self.n_examples, len(go))):
                examples.append(
                    {
                        "prompt": go.prompts[i],
                        "image": go.inputs[i],
                        "output": go.outputs[i][0] if go.outputs[i] else "",
                        "references": (go.references or [[]] * len(go))[i],
                        "group": g,
                        "vision_random_init": bool(model.get("vision_random_init")),
                        "notes": notes,
                    }
                )
        result["examples"] = examples
        result["vision_random_init"] = bool(model.get("vision_random_init"))
        result["notes"] = notes
        return result

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
        if self._model_info is not None:
            p["vision_random_init"] = self._model_info["vision_random_init"]
            p["model_notes"] = self._model_info["notes"]
        return p
