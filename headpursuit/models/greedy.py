"""Greedy decoding that drops finished rows from the batch (`greedy_decode`).

`model.generate` keeps a row that has emitted EOS in the batch until every row has: it is fed pad
tokens and costs a full row of compute at every remaining step. For the batched-edit pass (each
prompt under each of 11 edits, hundreds of rows, most QA answers a few tokens long) that dominates
on a CPU, where a step's cost grows with its rows. This loop runs the same greedy decoding, but
after each step it keeps only the rows still going: their slice of the KV cache, their attention
mask and positions, and, through `RowFollower.keep_rows`, their slice of any per-row state a
hook on the model holds (the per-row head scales of `headpursuit.intervention`).

Each kept row's computation is the one `generate` does (left padding, positions counted from the
attention mask, the model's own causal / sliding-window masks, argmax on float32 logits, pad after
EOS); `plain_greedy(gc)` says whether a generation config asks for nothing more (no logits
processor, no stopping rule besides EOS and the length). Otherwise the caller uses `generate`.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from headpursuit.models.edit_positions import generation_phase
from headpursuit.models.hooks import live_hooks
from headpursuit.models.inputs import position_ids_from_mask

if TYPE_CHECKING:
    from transformers import GenerationConfig

__all__ = ["RowFollower", "greedy_decode", "plain_greedy"]


@runtime_checkable
class RowFollower(Protocol):
    """A forward pre-hook with per-row state that must shrink with the batch (the per-row scales
    of `headpursuit.intervention.scale_heads`), registered through
    `headpursuit.models.hooks.add_pre_hook` so that the loop finds it: `keep_rows(index)` is called with the positions, in
    the current batch, of the rows that go on; `reset_rows()` when the decode ends (also on error),
    so that the hook holds every row again. `row_keys()` is (rows, d) values that are equal for rows
    the hook treats alike (None: it treats every row alike), so rows can share a prompt prefix."""

    def keep_rows(self, index: torch.Tensor) -> None: ...

    def reset_rows(self) -> None: ...

    def row_keys(self) -> torch.Tensor | None: ...


# GenerationConfig fields that add a logits processor or a stopping rule when set; the value that
# leaves them off. A config with any other value goes to `model.generate`.
_NEUTRAL: dict[str, Any] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "max_length": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "stop_strings": (None,),
    "max_time": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "constraints": (None,),
    "force_words_ids": (None,),
    "assistant_model": (None,),
    "prompt_lookup_num_tokens": (None,),
    "cache_implementation": (None, "dynamic"),
    "use_cache": (None, True),  # the loop always caches; a config without the cache goes to generate
}


def plain_greedy(gc: GenerationConfig) -> bool:
    """Whether `gc` is plain greedy decoding (one beam, one sequence, no sampling, no logits
    processor, stopping only at EOS or `max_new_tokens`): what `greedy_decode` reproduces."""
    if gc.do_sample or (gc.num_beams or 1) != 1 or (gc.num_return_sequences or 1) != 1:
        return False
    if (getattr(gc, "num_beam_groups", None) or 1) != 1 or getattr(gc, "penalty_alpha", None):
        return False
    if not gc.max_new_tokens:
        return False
    return all(getattr(gc, name, None) in allowed for name, allowed in _NEUTRAL.items())


def _eos_ids(gc: GenerationConfig) -> list[int]:
    eos = gc.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _row_followers(model: torch.nn.Module) -> list[RowFollower]:
    """The live hooks on `model`'s modules that hold per-row state (hooks do not change mid-decode)."""
    found: list[RowFollower] = []
    for hook in live_hooks(model):
        if isinstance(hook, RowFollower):
            found.append(hook)
    return found


# A shared prompt prefix shorter than this is not worth a separate forward pass.
MIN_SHARED_PREFIX = 4


def _edit_groups(followers: list[RowFollower], n_rows: int, device: torch.device) -> torch.Tensor:
    """(rows,) group ids: rows in one group are treated alike by every hook (the same head scales)."""
    keys = [k for k in (f.row_keys() for f in followers) if k is not None]
    if not keys:
        return torch.zeros(n_rows, dtype=torch.long, device=device)
    _, groups = torch.unique(torch.cat([k.float().cpu() for k in keys], dim=1), dim=0, return_inverse=True)
    return groups.to(device)


def _shared_prefix_length(input_ids: torch.Tensor, mask: torch.Tensor) -> int:
    """How many leading real tokens every row of a left-padded batch has in common, leaving each
    row at least one token of its own (0 when the padding is not all on the left)."""
    n_rows, width = mask.shape
    lengths = mask.sum(1)
    if not bool((mask.flip(1).cumprod(1).sum(1) == lengths).all()):  # real tokens not all at the end
        return 0
    span = int(lengths.min()) - 1
    if span <= 0:
        return 0
    first = input_ids.gather(1, (width - lengths)[:, None] + torch.arange(span, device=mask.device)[None])
    differs = (first != first[:1]).any(0)
    return int(differs.nonzero()[0]) if bool(differs.any()) else span


def _prefix_sharing_is_exact(model: torch.nn.Module, total_length: int) -> bool:
    """Whether moving the padding between the shared prefix and the rest leaves every row's attention
    unchanged: masked keys add exact zeros under eager/SDPA attention, but a sliding window counts
    cache slots, padding included, so the sequence must fit inside the window."""
    config = model.config.get_text_config(decoder=True)
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return False
    window = getattr(config, "sliding_window", None)
    return not window or total_length <= int(window)


def _forward(
    model: torch.nn.Module, cache: Any, cache_arg: str, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """One cached forward pass: the logits at the last position of each row."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: cache},
    )
    return out.logits[:, -1]


def _prefill(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    cache: Any,
    cache_arg: str,
    followers: list[RowFollower],
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prompt pass: (last-position logits, attention mask, position ids of the inputs).

    Rows share a prompt prefix (a chat template's system turn, an instruction) and are edited by a
    few distinct head edits: the prefix is run once per edit, its cache copied to that edit's rows,
    and only each row's own tokens are run on top, left-padded after the prefix. The cache then reads
    [prefix | padding | own tokens], the same keys at the same positions as [padding | prompt].
    """
    n_rows, width = input_ids.shape
    shared = _shared_prefix_length(input_ids, mask)
    groups = _edit_groups(followers, n_rows, input_ids.device) if shared >= MIN_SHARED_PREFIX else None
    n_groups = int(groups.max()) + 1 if groups is not None else n_rows
    if groups is None or n_groups == n_rows or not _prefix_sharing_is_exact(model, width + steps):
        positions = position_ids_from_mask(mask)
        return _forward(model, cache, cache_arg, input_ids, mask, positions), mask, positions
    lengths = mask.sum(1)
    own_width = int(lengths.max()) - shared  # the longest row's own tokens
    first_of_group = torch.stack([(groups == g).nonzero()[0, 0] for g in range(n_groups)])
    prefix = input_ids[first_of_group[0], width - int(lengths[first_of_group[0]]) :][:shared]
    for follower in followers:
        follower.keep_rows(first_of_group)
    try:
        _forward(
            model,
            cache,
            cache_arg,
            prefix[None].expand(n_groups, -1),
            torch.ones((n_groups, shared), dtype=mask.dtype, device=mask.device),
            torch.arange(shared, device=mask.device)[None].expand(n_groups, -1),
        )
    finally:
        for follower in followers:
            follower.reset_rows()
    cache.batch_select_indices(groups)  # each row gets its edit's prefix
    # Each row's own tokens, left-padded to the longest: the tail of its prompt after the prefix.
    own = input_ids[:, width - own_width :]
    # A shorter row's window also holds the end of its prefix: masked, like padding.
    own_mask = (torch.arange(own_width, device=mask.device)[None] >= (own_width - (lengths - shared))[:, None]).to(
        mask.dtype
    )
    full_mask = torch.cat([mask.new_ones((n_rows, shared)), own_mask], dim=1)
    positions = shared + position_ids_from_mask(own_mask)
    return _forward(model, cache, cache_arg, own, full_mask, positions), full_mask, positions


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    gc: GenerationConfig,
    *,
    streamer: Any = None,
) -> torch.Tensor:
    """Greedy continuations of a left-padded batch, rows dropped as they finish.

    Returns (rows, max_new_tokens) new token ids: each row's tokens up to and including its EOS,
    then `gc.pad_token_id` (what `model.generate` returns after the prompt, padded to full length).
    Whenever rows are dropped, every forward (pre-)hook on the model that is a `RowFollower` is told
    (`keep_rows(index)`). `streamer` sees the prompt, then one put per step, then `end()`, as with
    `generate`.
    """
    from transformers import DynamicCache

    if not plain_greedy(gc):
        raise ValueError("greedy_decode reproduces plain greedy decoding only; use model.generate for this config")
    device = input_ids.device
    n_rows = input_ids.shape[0]
    steps = int(gc.max_new_tokens)
    pad = int(gc.pad_token_id if gc.pad_token_id is not None else 0)
    eos = torch.tensor(_eos_ids(gc), dtype=torch.long, device=device)
    out = torch.full((n_rows, steps), pad, dtype=torch.long, device=device)
    alive = torch.arange(n_rows, device=device)  # rows of `out` still being decoded
    mask = attention_mask.long()
    followers = _row_followers(model)
    config = model.config.get_text_config(decoder=True)
    cache = DynamicCache(config=config)
    # transformers 5 names the cache argument `cache`; 4.x called it `past_key_values`.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    if streamer is not None:
        streamer.put(input_ids.cpu())
    try:
        # The phases tell head edits with `where` (prompt / generated) what each forward holds.
        with generation_phase("prompt"):
            logits, mask, step_positions = _prefill(model, input_ids, mask, cache, cache_arg, followers, steps)
        tokens = input_ids[:, -1:]  # the next step's inputs (set after each step)
        for step in range(steps):
            if step > 0:
                with generation_phase("generated"):
                    logits = _forward(model, cache, cache_arg, tokens, mask, step_positions)
            nxt = torch.argmax(logits.to(torch.float32), dim=-1)
            out[alive, step] = nxt
            if streamer is not None:
                streamer.put(nxt.cpu())
            if step + 1 == steps:
                break
            going = ~torch.isin(nxt, eos) if eos.numel() else torch.ones_like(nxt, dtype=torch.bool)
            if not bool(going.any()):
                break
            last_positions = step_positions[:, -1:]
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                alive, nxt, mask, last_positions = alive[keep], nxt[keep], mask[keep], last_positions[keep]
                cache.batch_select_indices(keep)
                for follower in followers:
                    follower.keep_rows(keep)
            tokens = nxt[:, None]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            step_positions = last_positions + 1
        if streamer is not None:
            streamer.end()
    finally:
        for follower in followers:
            follower.reset_rows()
    return out
