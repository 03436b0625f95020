"""Causal check of a ranking: what rescaling each head ALONE does to the model's answers.

    effects = head_effects(lm, {"concept": concept_samples, "control": control_samples}, alpha=-1)
    effects.table     # layer, head, delta_concept, delta_control (mean change in answer log-prob)

A SOMP ranking says what a head *writes*; this says what the model *loses* without it. For every
head (or the given ones) the samples are run teacher-forced on their answers with that head scaled
by `alpha`, and the mean per-token log-probability of the answer tokens is compared with the
unedited model. Samples are `CaptureSample`s with an ``answer`` (e.g. the model's own correct
greedy answers). One forward pass per head and group batch: 270 heads x 60 short samples take a
few minutes on 2 CPU cores.

The independent reference in the tests is the same quantity with the head's W_O columns scaled
in the weights, instead of the hook.

`where` (`scale_heads`) reads teacher forcing as a generation: ``"prompt"`` edits the positions
before the answer (the last prompt token, which predicts the answer's first token, included),
``"generated"`` the answer's own positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from headpursuit.capture import CaptureSample
from headpursuit.intervention import Head, Where, scale_heads
from headpursuit.models.edit_positions import prompt_width
from headpursuit.models.handle import LoadedModel
from headpursuit.models.inputs import pad_batch, teacher_forced_ids

__all__ = ["HeadEffects", "answer_logprob", "head_effects"]


@dataclass
class HeadEffects:
    """Per-head effect of rescaling that head alone.

    ``table``: layer, head, and per group ``delta_<group>`` = mean over samples of (edited minus
    unedited) mean answer-token log-probability; negative = the head's edit hurts those answers.
    ``baseline``: the unedited mean log-probability per group.
    """

    table: pd.DataFrame
    baseline: dict[str, float]
    alpha: float
    meta: dict = field(default_factory=dict)

    def groups(self) -> list[str]:
        return list(self.baseline)


def _batches(lm: LoadedModel, samples: Sequence[CaptureSample], batch_size: int):
    """Per batch: padded teacher-forced inputs, how many final positions need logits, the mask
    (over those positions, last one dropped) of the positions that predict an answer token, and
    each row's first answer column (its prompt's columns come before)."""
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        seqs, alens = [], []
        for s in chunk:
            if not s.answer:
                raise ValueError(f"head_effects needs each sample's answer; sample {s.prompt[:60]!r} has none")
            # The same prompt + teacher-forced answer ids that capture_heads builds.
            tf = teacher_forced_ids(lm, s.prompt, s.answer)
            if tf.answer_len == 0:
                raise ValueError(f"empty answer after tokenisation: {s.prompt[:60]!r} -> {s.answer!r}")
            seqs.append(tf.ids)
            alens.append(tf.answer_len)
        # Left padding aligns every answer at the end, so only the last max(answer)+1 positions
        # need the (vocab-sized) unembedding: position t predicts token t+1.
        inputs = pad_batch(seqs, lm.pad_token_id, "left", device=lm.device)
        keep = max(alens) + 1
        mask = torch.zeros(len(seqs), keep - 1, dtype=torch.bool)
        for i, n in enumerate(alens):
            mask[i, keep - 1 - n :] = True
        answer_start = inputs["input_ids"].shape[1] - torch.tensor(alens)
        out.append((inputs, keep, mask, answer_start))
    return out


@torch.inference_mode()
def _mean_logprob(lm: LoadedModel, batches) -> torch.Tensor:
    """(n_samples,) mean log-probability of each sample's answer tokens."""
    # Asked once, not by catching a TypeError per batch (which could also hide a real one).
    tail_only = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
    vals = []
    for inputs, keep, mask, answer_start in batches:
        extra = {"logits_to_keep": keep} if tail_only else {}  # else compute all, keep the tail
        with prompt_width(answer_start):  # an edit with `where`: the answer counts as generated
            logits = lm.model(**inputs, use_cache=False, **extra).logits
        logits = logits[:, -keep:-1].float()
        targets = inputs["input_ids"][:, -keep + 1 :]
        lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0].cpu()
        vals.append((lp * mask).sum(1) / mask.sum(1))
    return torch.cat(vals)


def answer_logprob(
    lm: LoadedModel,
    samples: Sequence[CaptureSample],
    *,
    batch_size: int = 16,
    scales: Mapping[Head, float] | None = None,
    where: Where = "all",
) -> torch.Tensor:
    """(n_samples,) mean per-token log-probability of each sample's answer, optionally edited (at
    `where`: ``"prompt"`` = the positions before the answer, ``"generated"`` = the answer's)."""
    if not samples:
        raise ValueError("answer_logprob got no samples")
    batches = _batches(lm, list(samples), batch_size)
    with scale_heads(lm, dict(scales or {}), where=where):
        return _mean_logprob(lm, batches)


def head_effects(
    lm: LoadedModel,
    samples: Mapping[str, Sequence[CaptureSample]],
    *,
    alpha: float = -1.0,
    heads: Sequence[Head] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    where: Where = "all",
) -> HeadEffects:
    """Rescale each head alone by `alpha` (at `where`, see `answer_logprob`) and record the change
    in answer log-probability per group.

    samples: ``{group: [CaptureSample with answer, ...]}``, e.g. concept and control questions
        with the model's own correct answers. heads: default every head of the model.
    """
    if not samples or any(len(v) == 0 for v in samples.values()):
        empty = [g for g, v in (samples or {}).items() if not v] or ["(no groups)"]
        raise ValueError(
            f"head_effects: no samples for {', '.join(empty)}; give each group at least one "
            "CaptureSample with an answer"
        )
    L, H = lm.layout.n_layers, lm.layout.n_heads
    heads = [(int(a), int(b)) for a, b in heads] if heads is not None else [(a, b) for a in range(L) for b in range(H)]
    batches = {g: _batches(lm, list(v), batch_size) for g, v in samples.items()}
    base = {g: _mean_logprob(lm, b) for g, b in batches.items()}
    rows = []
    for head in tqdm(heads, desc=f"head effects {lm.name} (alpha={alpha:g})", disable=not progress, unit="head"):
        row: dict[str, Any] = {"layer": head[0], "head": head[1]}
        with scale_heads(lm, {head: float(alpha)}, where=where):
            for g, b in batches.items():
                row[f"delta_{g}"] = float((_mean_logprob(lm, b) - base[g]).mean())
        rows.append(row)
    return HeadEffects(
        pd.DataFrame(rows),
        {g: float(v.mean()) for g, v in base.items()},
        float(alpha),
        meta={"model": lm.name, "n_samples": {g: len(v) for g, v in samples.items()}, "provenance": lm.provenance},
    )
