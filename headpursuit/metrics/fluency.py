"""Fluency: perplexity of continuations given their prompts under a reference language model.

Use the UNEDITED model (or a separate, larger reference model): perplexity under the edited model
would reward an edit for being self-consistent rather than fluent. Tasks arrange this by scoring
outside any `scale_heads` context (see `headpursuit.tasks.toxicity`).

Tokenisation: the prompt is tokenised exactly as for generation (`lm.token_ids(prompt)`, i.e. with
the model's special-token convention), the continuation without special tokens, and the two id
lists are concatenated; only continuation tokens are scored. Sequences are right-padded (so
position ids are the plain arange) and batched. Empty/whitespace-only continuations (or ones that
tokenise to nothing) are excluded and counted in ``n_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from headpursuit.models.inputs import pad_batch

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "perplexity",
    progress: bool = True,
) -> dict:
    """Perplexity of each continuation given its prompt.

    `lm` is a `LoadedModel`. Returns::

        {"perplexity": exp(total NLL / total continuation tokens)   # corpus-level, token-weighted
         "mean_perplexity": mean of per-continuation perplexities,
         "mean_nll": total NLL / total tokens,
         "n_scored": int, "n_empty": int, "n_tokens": int,
         "per_sample": [float | None]}   # None for excluded (empty) continuations

    Aggregates are NaN when nothing could be scored. ``max_length`` truncates the prompt from the
    left so that prompt + continuation fits.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"perplexity: {len(prompts)} prompts but {len(continuations)} continuations")
    tok = lm.tokenizer
    model = lm.model
    device = lm.device
    pad_id = lm.pad_token_id

    items: list[tuple[int, list[int], int]] = []  # (index, ids, n_prompt_tokens)
    per_sample: list[float | None] = [None] * len(prompts)
    n_empty = 0
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not (c or "").strip():
            n_empty += 1
            continue
        c_ids = lm.token_ids(c, special=False)
        if not c_ids:
            n_empty += 1
            continue
        p_ids = lm.token_ids(p)
        if max_length is not None and len(p_ids) + len(c_ids) > max_length:
            keep = max(max_length - len(c_ids), 1)
            p_ids = p_ids[-keep:]
            c_ids = c_ids[: max_length - len(p_ids)]
        if not p_ids:  # the first continuation token needs something to be predicted from
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            p_ids = [bos if bos is not None else pad_id]
        items.append((i, p_ids + c_ids, len(p_ids)))

    # Longest first: uniform batches, and an out-of-memory error shows up at once.
    order = sorted(range(len(items)), key=lambda k: -len(items[k][1]))
    total_nll = 0.0
    total_tokens = 0
    was_training = model.training
    model.eval()
    iterator = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, total=math.ceil(len(order) / batch_size) or None, leave=False)
    try:
        for start in iterator:
            batch = [items[k] for k in order[start : start + batch_size]]
            # Right padding: real tokens sit at positions 0..n-1, the model's default position ids.
            enc = pad_batch([ids for _, ids, _ in batch], pad_id, "right", device=device)
            input_ids, mask = enc["input_ids"], enc["attention_mask"]
            target_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
            for r, (_, ids, n_p) in enumerate(batch):
                target_mask[r, n_p : len(ids)] = True
            target_mask = target_mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = input_ids[:, 1:]
            nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            tmask = target_mask[:, 1:]
            nll = nll * tmask
            for r, (i, _, _) in enumerate(batch):
                n_tok = int(tmask[r].sum())
                s = float(nll[r].sum())
                per_sample[i] = math.exp(s / n_tok)
                total_nll += s
                total_tokens += n_tok
    finally:
        if was_training:
            model.train()

    scored = [x for x in per_sample if x is not None]
    mean_nll = total_nll / total_tokens if total_tokens else math.nan
    return {
        "perplexity": math.exp(mean_nll) if total_tokens else math.nan,
        "mean_perplexity": sum(scored) / len(scored) if scored else math.nan,
        "mean_nll": mean_nll,
        "n_scored": len(scored),
        "n_empty": n_empty,
        "n_tokens": total_tokens,
        "per_sample": per_sample,
    }
