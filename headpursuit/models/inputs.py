"""Model inputs: the one place that says how prompts (and images) become tensors for a model.

* `pad_id_for(tokenizer)`: the pad-id rule (pad token, else EOS, else 0);
* `pad_batch` / `encode`: padded token batches whose position ids count only real tokens, so left
  padding changes nothing;
* `teacher_forced_ids`: prompt ids + answer ids and where the answer starts (capture, effects);
* `image_prompt` / `processor_inputs`: a VLM prompt with one image placeholder, and the processor
  run on prompts with their images;
* `to_model`: tensors onto the model's device, floating ones (pixel values) in its dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = [
    "TeacherForcedIds",
    "answer_token_ids",
    "encode",
    "image_prompt",
    "pad_batch",
    "pad_id_for",
    "position_ids_from_mask",
    "processor_inputs",
    "teacher_forced_ids",
    "to_model",
]


def pad_id_for(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS token, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real (mask 1) tokens; padding gets clamped, unused values."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_batch(ids: list[list[int]], pad_id: int, padding_side: str = "left", device=None) -> dict[str, torch.Tensor]:
    """Pad token id lists; position ids count only real tokens, so left padding changes nothing."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not ids or any(len(x) == 0 for x in ids):
        raise ValueError("pad_batch needs at least one non-empty token sequence")
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(T - len(x), T) if padding_side == "left" else slice(0, len(x))
        input_ids[i, sl] = torch.tensor(x, dtype=torch.long)
        mask[i, sl] = 1
    out = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask)}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def encode(lm: LoadedModel, texts: Sequence[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Already-formatted prompts as a padded batch on the model's device, with position ids."""
    return pad_batch([lm.token_ids(t) for t in texts], lm.pad_token_id, padding_side, device=lm.device)


# ------------------------------------------------------------------------------------------
# Teacher forcing: prompt + answer ids
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherForcedIds:
    """A prompt's ids followed by its answer's ids; the answer starts at `prompt_len`."""

    ids: list[int]
    prompt_len: int

    @property
    def answer_len(self) -> int:
        return len(self.ids) - self.prompt_len


def answer_token_ids(lm: LoadedModel, answer: str | None) -> list[int]:
    """An answer's ids as appended after a prompt: no special tokens (the prompt has them)."""
    return lm.token_ids(answer, special=False) if answer else []


def teacher_forced_ids(lm: LoadedModel, prompt: str, answer: str | None) -> TeacherForcedIds:
    """Prompt ids (the model's special-token convention) + answer ids, tokenised separately so the
    answer boundary is exact. Raises a ValueError for a prompt that tokenises to nothing."""
    prompt_ids = lm.token_ids(prompt)
    if not prompt_ids:
        raise ValueError(f"Empty prompt after tokenisation: {prompt!r}")
    return TeacherForcedIds(prompt_ids + answer_token_ids(lm, answer), len(prompt_ids))


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def _processor(lm: LoadedModel) -> Any:
    if lm.processor is None:
        raise ValueError(
            f"{lm.name} has no processor: it cannot take images (load a vision-language model, e.g. model=tiny_vlm)"
        )
    return lm.processor


def image_prompt(lm: LoadedModel, user_text: str, system: str | None = None) -> str:
    """One user turn with an image then `user_text`, formatted by the processor's chat template.

    Without a chat template: ``"<image>\\nQ: {text}\\nA:"`` with the processor's image token.
    """
    proc = _processor(lm)
    if proc.chat_template:
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]})
        return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Not every processor names its image token; LLaVA's "<image>" is the common default.
    token = getattr(proc, "image_token", None) or "<image>"
    prefix = f"{system}\n\n" if system else ""
    return f"{prefix}{token}\nQ: {user_text}\nA:"


def processor_inputs(
    lm: LoadedModel, prompts: Sequence[str], images: Sequence[Any], padding_side: str = "left"
) -> dict:
    """Run the processor on prompts (each with one image placeholder) and their images (on CPU)."""
    proc = _processor(lm)
    # One list of images per text: Idefics3/SmolVLM and Gemma 3 need it, the others flatten it.
    imgs = [[im] for im in images]
    tok = proc.tokenizer
    old = tok.padding_side
    try:
        tok.padding_side = padding_side
        enc = proc(text=list(prompts), images=imgs, return_tensors="pt", padding=True)
    except Exception as e:
        raise ValueError(
            f"the processor of {lm.name} rejected the inputs ({type(e).__name__}: {e}). Each prompt "
            "must contain the model's image placeholder exactly once per image: build it with "
            "headpursuit.models.inputs.image_prompt(lm, text)."
        ) from e
    finally:
        tok.padding_side = old
    return dict(enc)


def to_model(lm: LoadedModel, enc: Mapping[str, Any]) -> dict:
    """Tensors to the model's device; floating tensors (pixel values) to its dtype."""
    out = {}
    for k, v in enc.items():
        if torch.is_tensor(v):
            v = v.to(lm.device)
            if v.is_floating_point():
                v = v.to(lm.dtype)
        out[k] = v
    return out
