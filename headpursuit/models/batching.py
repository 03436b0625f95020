"""Right-sized batches: ``batch_size="auto"`` means the largest batch that fits the model's device.

* On CUDA, `auto_batch_size` probes once per (model, kind, device, dtype, length bucket): it runs the
  real step (a generate of the requested length, or a forward pass) on dummy tokens at the bucket's
  longest length, starting from an estimate drawn from the free memory (`torch.cuda.mem_get_info`),
  doubling while it fits and halving on `torch.cuda.OutOfMemoryError`. The choice is remembered in
  this process (`chosen_batch_sizes` lists it, for provenance).
* On CPU there is nothing to run out of but time: a measured default per kind (`CPU_BATCH_SIZES`).

Kinds: ``"generate"`` (greedy/sampled generation, KV cache) and ``"forward"`` (one teacher-forced
pass: capture, scoring); any other kind needs its own `probe`.

`length_batches` cuts rows into batches of similar token length (longest first), so one long
prompt pads only the batch it sits in; callers put the results back in input order.
"""

from __future__ import annotations

import copy
import gc as garbage
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headpursuit.models.edit_positions import prompt_width

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from headpursuit.models.handle import LoadedModel

__all__ = [
    "CPU_BATCH_SIZES",
    "MAX_BATCH_SIZE",
    "ChosenBatchSize",
    "auto_batch_size",
    "chosen_batch_sizes",
    "largest_fitting",
    "length_batches",
    "length_bucket",
    "start_estimate",
]

# Measured on SmolLM2 (float32, 2 CPU threads, one process, a shared machine): 4 edits x 16 QA prompts
# x 12 new tokens took 66 CPU s at 16 rows per batch and 55 at 64 (95 one edit at a time at 16);
# issue 15 saw batch 64 take 0.69x the time of 16 with the same metrics. "forward" is not measured yet.
CPU_BATCH_SIZES: dict[str, int] = {"generate": 64, "forward": 32}
# No probe goes beyond this many rows (nor beyond the rows a caller has).
MAX_BATCH_SIZE = 1024


@dataclass(frozen=True)
class ChosenBatchSize:
    """A probed choice: `size` rows fit; `limit` is the most that was tried (size == limit: maybe more)."""

    kind: str
    device: str
    dtype: str
    prompt_len: int
    new_tokens: int
    size: int
    limit: int


_CHOSEN: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, ChosenBatchSize]] = weakref.WeakKeyDictionary()


def length_batches(lengths: Sequence[int], size: int | Callable[[int], int]) -> list[list[int]]:
    """Row indices in batches cut from the rows sorted by length, longest first (an out-of-memory
    error shows up in the first batch); rows of equal length keep their input order (a stable
    sort), so rows that belong together (a prompt's edits) stay adjacent. Each batch is padded only
    to its own longest row, not to the longest of all.

    `size`: rows per batch, or a function of a batch's longest row (in tokens) giving its rows (with
    ``batch_size="auto"``: one long prompt gets a batch that fits it, the short ones larger ones)."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        rows = int(size(int(lengths[order[start]])) if callable(size) else size)
        if rows < 1:
            raise ValueError(f"batch size must be >= 1, got {rows}")
        batches.append(order[start : start + rows])
        start += rows
    return batches


def length_bucket(n: int) -> int:
    """The power of two at or above `n` (at least 16): lengths within one bucket share a probe."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


def chosen_batch_sizes(lm: LoadedModel) -> list[ChosenBatchSize]:
    """The batch sizes probed for this model in this process (for results provenance)."""
    return list(_CHOSEN.get(lm.model, {}).values())


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def largest_fitting(probe: Callable[[int], object], *, start: int, limit: int) -> int:
    """The largest power-of-two multiple of `start` (or `start` halved) up to `limit` for which
    ``probe(n)`` runs without an out-of-memory error: double while it fits, halve on OOM.

    Raises the out-of-memory error when even one row does not fit; other errors pass through.
    """
    limit = max(1, int(limit))
    n = max(1, min(int(start), limit))
    best, failed = 0, False
    while True:
        try:
            probe(n)
            fits = True
        except Exception as exc:
            if not _is_oom(exc) or n == 1:
                raise
            fits = False
        if fits:
            best = n
            if failed or n >= limit:  # n * 2 did not fit, or nothing more is wanted
                return best
            n = min(n * 2, limit)
        else:
            _release_cuda_memory()  # outside the except block: the traceback no longer pins tensors
            failed = True
            if best:
                return best
            n //= 2


def _release_cuda_memory() -> None:
    garbage.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_estimate(lm: LoadedModel, *, seq_len: int, free_bytes: int, with_cache: bool) -> int:
    """A first guess at how many rows of `seq_len` tokens fit in `free_bytes`: the KV cache (when
    generating), the widest activations (the MLP, ~8 d_model wide), the attention scores of an
    unfused kernel and the float32 logits of the last position, with 30% kept free."""
    lay = lm.layout
    elem = torch.finfo(lm.dtype).bits // 8
    vocab = lm.unembedding().shape[0]
    kv = 2 * lay.n_layers * lay.n_kv_heads * lay.head_dim * seq_len * elem if with_cache else 0
    acts = seq_len * lay.d_model * 8 * elem
    scores = lay.n_heads * seq_len * seq_len * elem
    logits = vocab * 4 * (1 if with_cache else seq_len)
    per_row = max(1, kv + acts + scores + logits)
    guess = int(0.7 * free_bytes) // per_row
    return max(1, 1 << max(0, guess.bit_length() - 1))  # a power of two at or below the guess


def _dummy_ids(lm: LoadedModel, n: int, length: int) -> dict[str, torch.Tensor]:
    """`n` rows of `length` real tokens (a common, non-special token) on the model's device."""
    token = lm.token_ids("the", special=False)[-1]
    ids = torch.full((n, length), token, dtype=torch.long, device=lm.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _generate_probe(lm: LoadedModel, gc: GenerationConfig, prompt_len: int) -> Callable[[int], object]:
    probe_gc = copy.deepcopy(gc)
    probe_gc.min_new_tokens = gc.max_new_tokens  # the probe must not stop early at an EOS
    n_ret = max(1, int(gc.num_return_sequences or 1))

    @torch.no_grad()
    def probe(n: int) -> object:
        with prompt_width(prompt_len):  # under an edit with `where`: the dummy prompt, then new tokens
            return lm.model.generate(**_dummy_ids(lm, max(1, n // n_ret), prompt_len), generation_config=probe_gc)

    return probe


def _forward_probe(lm: LoadedModel, seq_len: int) -> Callable[[int], object]:
    @torch.no_grad()
    def probe(n: int) -> object:
        with prompt_width(seq_len):  # a forward over a prompt (an edit with `where` needs to know)
            return lm.model(**_dummy_ids(lm, n, seq_len), use_cache=False)

    return probe


def auto_batch_size(
    lm: LoadedModel,
    kind: str,
    *,
    prompt_len: int,
    new_tokens: int = 0,
    rows: int | None = None,
    generation_config: GenerationConfig | None = None,
    probe: Callable[[int], object] | None = None,
) -> int:
    """The largest batch (in rows) of `kind` that fits `lm`'s device, at most `rows` (the rows the
    caller has) and `MAX_BATCH_SIZE`.

    `prompt_len`: the longest prompt in tokens; `new_tokens`: tokens generated per row. On CUDA the
    probe runs at the length bucket's upper end (`length_bucket`), so the answer holds for every
    prompt of that bucket; the default probes need `generation_config` for ``"generate"``. A custom
    ``probe(n)`` must run n rows and raise `torch.cuda.OutOfMemoryError` when they do not fit.
    On CPU: ``CPU_BATCH_SIZES[kind]`` (capped at `rows`).
    """
    cap = MAX_BATCH_SIZE if rows is None else max(1, min(int(rows), MAX_BATCH_SIZE))
    device = lm.device
    if device.type != "cuda":
        if kind not in CPU_BATCH_SIZES:
            raise ValueError(f"no CPU batch size for kind {kind!r}; known: {', '.join(CPU_BATCH_SIZES)}")
        return min(CPU_BATCH_SIZES[kind], cap)
    p_len, n_new = length_bucket(prompt_len), (length_bucket(new_tokens) if new_tokens > 0 else 0)
    key = (kind, str(device), str(lm.dtype), p_len, n_new)
    memo = _CHOSEN.setdefault(lm.model, {})
    known = memo.get(key)
    if known is not None and (known.size < known.limit or cap <= known.limit):
        return min(known.size, cap)
    if probe is None:
        if kind == "generate":
            if generation_config is None:
                raise ValueError("auto_batch_size(kind='generate') needs the generation_config to probe with")
            gen_cfg = copy.deepcopy(generation_config)
            gen_cfg.max_new_tokens = max(1, n_new)
            probe = _generate_probe(lm, gen_cfg, p_len)
        elif kind == "forward":
            probe = _forward_probe(lm, p_len)
        else:
            raise ValueError(f"auto_batch_size: kind {kind!r} needs a probe (known kinds: generate, forward)")
    free, _total = torch.cuda.mem_get_info(device)
    start = start_estimate(lm, seq_len=p_len + n_new, free_bytes=free, with_cache=kind == "generate")
    if known is not None:
        start = max(start, known.size)
    size = largest_fitting(probe, start=start, limit=cap)
    _release_cuda_memory()
    memo[key] = ChosenBatchSize(kind, str(device), str(lm.dtype), p_len, n_new, size, cap)
    return size
