"""Batched generation: text prompts (`generate_batch`) and prompts with images (`generate_with_images`).

Both pad on the left (so every prompt ends where generation starts), build their decoding settings
with `generation_config`, and return only the new text, special tokens dropped and stripped.
`generate_step` is one text batch; `generate_rows` runs it over batches, optionally inside a context
per batch (per-row head edits: `headpursuit.intervention.generate_with_edits`), and returns the
texts in input order. Greedy batches hold prompts of similar token length (one long prompt pads
only its own batch); sampled batches are consecutive, so seeded samples stay what they were.
Plain greedy text batches run `headpursuit.models.greedy.greedy_decode` (finished rows leave the
batch); anything else runs `model.generate`.
``batch_size="auto"`` asks `headpursuit.models.batching` for the largest batch that fits (a greedy
batch: at its own longest prompt).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import torch

from headpursuit.models.batching import auto_batch_size, length_batches
from headpursuit.models.edit_positions import prompt_width
from headpursuit.models.greedy import greedy_decode, plain_greedy
from headpursuit.models.inputs import encode, processor_inputs, to_model

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from headpursuit.models.handle import LoadedModel

# Plain greedy batches run `greedy_decode` (finished rows leave the batch). False: every batch runs
# `model.generate` (the escape hatch for a model whose forward the loop does not drive, and the
# reference arm of experiments/bench_pipeline.py --loops).
DROP_FINISHED_ROWS = True

__all__ = [
    "DROP_FINISHED_ROWS",
    "generate_batch",
    "generate_rows",
    "generate_step",
    "generate_with_images",
    "generation_config",
    "resolve_batch_size",
    "row_batches",
]


def generation_config(
    lm: LoadedModel,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    num_return_sequences: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
) -> GenerationConfig:
    """The model's own generation config with these decoding settings (greedy unless `do_sample`).

    Every setting the caller did not choose is made explicit, so a checkpoint's defaults (beam
    search, a max_length, a sampling temperature under greedy decoding) cannot leak in.
    """
    from transformers import GenerationConfig

    base = lm.model.generation_config
    gc = copy.deepcopy(base) if base is not None else GenerationConfig()
    gc.max_new_tokens = int(max_new_tokens)
    gc.max_length = None
    gc.min_new_tokens = None
    gc.do_sample = bool(do_sample)
    gc.num_return_sequences = int(num_return_sequences)
    gc.num_beams = 1
    gc.pad_token_id = lm.pad_token_id
    if gc.eos_token_id is None and lm.tokenizer.eos_token_id is not None:
        gc.eos_token_id = lm.tokenizer.eos_token_id
    if do_sample:
        gc.temperature = 1.0 if temperature is None else float(temperature)
        gc.top_p = 1.0 if top_p is None else float(top_p)
        gc.top_k = 0 if top_k is None else int(top_k)  # 0 disables top-k filtering
    else:
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
    return gc


class GenerationProgress:
    """A progress bar in generation steps, not batches: one batch of a slow model can take minutes,
    and a bar that counts batches then shows "0/1" all along. The bar's total is batches x
    max_new_tokens; `streamer()` is handed to `generate`, which calls it once for the prompt and once
    per new token; a batch that stops early (every row ended) jumps to its full share at `end()`."""

    def __init__(self, n_batches: int, max_new_tokens: int, desc: str, enabled: bool):
        self.steps = max(1, int(max_new_tokens))
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            total = n_batches * self.steps
            self.bar = tqdm(total=total or None, desc=desc, unit="step", leave=False)
        self.done_in_batch = 0

    def streamer(self) -> Any:
        if self.bar is None:
            return None
        from transformers.generation.streamers import BaseStreamer

        progress = self

        class _Steps(BaseStreamer):
            def __init__(self) -> None:
                self.seen_prompt = False

            def put(self, value: Any) -> None:
                if not self.seen_prompt:  # the first call carries the prompt
                    self.seen_prompt = True
                    return
                progress.advance(1)

            def end(self) -> None:
                progress.advance(progress.steps - progress.done_in_batch)
                progress.done_in_batch = 0

        return _Steps()

    def advance(self, n: int) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)
            self.done_in_batch += n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Generate without dropout; a model that was training is put back into training mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _new_text(lm: LoadedModel, out: torch.Tensor, n_prompt_tokens: int) -> list[str]:
    """The generated continuation of each output row, without the (left-padded) prompt."""
    return [t.strip() for t in lm.tokenizer.batch_decode(out[:, n_prompt_tokens:], skip_special_tokens=True)]


def generate_step(lm: LoadedModel, prompts: Sequence[str], gc: GenerationConfig, streamer: Any = None) -> list[str]:
    """One batch: the prompts left-padded together, generated with `gc`, the new text of each output
    row (``len(prompts) * gc.num_return_sequences`` strings, a prompt's sequences adjacent).
    `streamer` (e.g. `GenerationProgress.streamer()`) sees each generation step."""
    enc = encode(lm, prompts, padding_side="left")
    # generate() derives position ids from the attention mask itself; pass only these two.
    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if DROP_FINISHED_ROWS and plain_greedy(gc):  # generate()'s tokens, finished rows dropped
        new = greedy_decode(lm.model, enc["input_ids"], enc["attention_mask"], gc, streamer=streamer)
        return _new_text(lm, new, 0)
    width = enc["input_ids"].shape[1]
    with prompt_width(width):  # edits with `where` tell the left-padded prompt from the new tokens
        out = lm.model.generate(**enc, generation_config=gc, streamer=streamer)
    return _new_text(lm, out, width)


def resolve_batch_size(
    lm: LoadedModel,
    prompts: Sequence[str],
    gc: GenerationConfig,
    batch_size: int | Literal["auto"],
    *,
    prompt_len: int | None = None,
) -> int:
    """`batch_size` itself, or for ``"auto"`` the largest generate batch that fits the device at
    `prompt_len` tokens (default: the longest of `prompts`) and `gc.max_new_tokens` (probed with
    that generation, remembered per shape)."""
    if batch_size != "auto":
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        return int(batch_size)
    n_ret = max(1, int(gc.num_return_sequences or 1))
    rows = auto_batch_size(
        lm,
        "generate",
        prompt_len=prompt_len if prompt_len is not None else max(len(lm.token_ids(p)) for p in set(prompts)),
        new_tokens=int(gc.max_new_tokens or 0),
        rows=len(prompts) * n_ret,
        generation_config=gc,
    )
    # The probe counts output rows; with several sequences per prompt a batch holds fewer prompts.
    return max(1, rows // n_ret)


def row_batches(
    lm: LoadedModel, prompts: Sequence[str], gc: GenerationConfig, batch_size: int | Literal["auto"]
) -> list[list[int]]:
    """The prompts' indices, batch by batch. Greedy: batches of similar token length
    (`length_batches`), so one long prompt pads only its own batch, and with ``"auto"`` each batch
    is as large as fits at its own longest prompt; a row's greedy tokens do not depend on its batch
    mates (left padding, positions counted from the mask). Sampled: consecutive batches in input
    order, because a seeded batch draws its random numbers for the rows it holds, so regrouping the
    rows would change every seeded sample."""
    if gc.do_sample:
        size = resolve_batch_size(lm, prompts, gc, batch_size)
        return [list(range(start, min(start + size, len(prompts)))) for start in range(0, len(prompts), size)]
    lengths = {p: len(lm.token_ids(p)) for p in set(prompts)}

    def size_at(longest: int) -> int:
        return resolve_batch_size(lm, prompts, gc, batch_size, prompt_len=longest)

    return length_batches([lengths[p] for p in prompts], size_at)


@torch.no_grad()
def generate_rows(
    lm: LoadedModel,
    prompts: Sequence[str],
    gc: GenerationConfig,
    *,
    batch_size: int | Literal["auto"] = 8,
    seed: int | None = None,
    around_batch: Callable[[list[int]], AbstractContextManager[Any]] | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[str]:
    """`generate_step` over batches of `batch_size` prompts (in eval mode): the flat list of new
    texts, in the order of `prompts` (a prompt's sequences adjacent).

    Greedy batches hold prompts of similar length (`row_batches`); sampled batches are consecutive.
    With a `seed` and ``gc.do_sample``, ``torch.manual_seed(seed + b)`` is called before batch b.
    `around_batch(rows)`, when given, is entered around the batch of ``[prompts[r] for r in rows]``
    (rows: input indices, in the batch's order; e.g. `scale_heads` with per-row scales: one edit
    per row).
    """
    prompts = list(prompts)
    if not prompts:
        return []
    batches = row_batches(lm, prompts, gc, batch_size)
    n_ret = max(1, int(gc.num_return_sequences or 1))
    texts: list[list[str]] = [[] for _ in prompts]
    with _eval_mode(lm.model):
        bar = GenerationProgress(len(batches), int(gc.max_new_tokens or 1), desc, progress)
        try:
            for b, rows in enumerate(batches):
                if gc.do_sample and seed is not None:
                    torch.manual_seed(int(seed) + b)
                with around_batch(rows) if around_batch is not None else nullcontext():
                    new = generate_step(lm, [prompts[r] for r in rows], gc, bar.streamer())
                for j, r in enumerate(rows):
                    texts[r] = new[j * n_ret : (j + 1) * n_ret]
        finally:
            bar.close()
    return [t for row in texts for t in row]


@torch.no_grad()
def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int | Literal["auto"] = 8,
    do_sample: bool = False,
    seed: int | None = None,
    num_return_sequences: int = 1,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[str] | list[list[str]]:
    """Batched generation with left padding; returns only the new text (special tokens dropped).

    Greedy by default; greedy batches hold prompts of similar token length, the outputs come back in
    input order. With ``do_sample=True`` and a `seed`, ``torch.manual_seed(seed + b)`` is called
    before batch b of consecutive prompts, so results are reproducible for a given batch size. Returns one string
    per prompt when ``num_return_sequences == 1``, else one list of strings per prompt.
    ``batch_size="auto"``: the largest batch that fits the device (`headpursuit.models.batching`).
    """
    prompts = list(prompts)
    n_ret = int(num_return_sequences)
    if n_ret < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {n_ret}")
    if not do_sample and n_ret > 1:
        raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy repeats itself)")
    gc = generation_config(
        lm,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=n_ret,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
    )
    texts = generate_rows(lm, prompts, gc, batch_size=batch_size, seed=seed, desc=desc, progress=progress)
    if n_ret == 1:
        return texts
    return [texts[i * n_ret : (i + 1) * n_ret] for i in range(len(prompts))]


@torch.no_grad()
def generate_with_images(
    lm: LoadedModel,
    prompts: Sequence[str],
    images: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    desc: str = "generate",
    progress: bool = True,
) -> list[str]:
    """Greedy batched generation (left padding) for prompts with one image each; new text only.

    Each prompt must hold the model's image placeholder once (`headpursuit.models.inputs.image_prompt`).
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    gc = generation_config(lm, max_new_tokens=max_new_tokens)
    outputs: list[str] = []
    with _eval_mode(lm.model):
        bar = GenerationProgress(math.ceil(len(prompts) / batch_size), max_new_tokens, desc, progress)
        try:
            for start in range(0, len(prompts), batch_size):
                enc = to_model(
                    lm,
                    processor_inputs(
                        lm, prompts[start : start + batch_size], images[start : start + batch_size], padding_side="left"
                    ),
                )
                width = enc["input_ids"].shape[1]
                with prompt_width(width):  # edits with `where`: the prompt's columns
                    out = lm.model.generate(**enc, generation_config=gc, streamer=bar.streamer())
                outputs += _new_text(lm, out, width)
        finally:
            bar.close()
    return outputs
