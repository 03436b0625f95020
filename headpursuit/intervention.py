"""Rescale chosen attention heads: multiply their `z` (hence their contribution) by alpha.

The edit is a forward pre-hook on `o_proj`, after the attention kernel: it works with SDPA /
FlashAttention, with the KV cache inside `generate()` (every new position passes through it), and
it never touches the weights, so restoring the model is just removing the hooks.

A scale is one number (every row of the batch) or one number per row of the batch: with per-row
scales one forward/generate call evaluates several edits side by side (`generate_with_edits`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal, Union

import torch

from headpursuit.capture import image_token_id
from headpursuit.models import LoadedModel
from headpursuit.models.edit_positions import WHERE, prompt_mask
from headpursuit.models.generation import generate_rows, generation_config
from headpursuit.models.hooks import add_pre_hook, live_hooks

if TYPE_CHECKING:
    import numpy as np

#: an attention head: (layer, head index within the layer); the one definition, imported everywhere
Head = tuple[int, int]
# One factor for every row of the batch, or one per row (a 1-D sequence or tensor of length batch).
Scale = Union[float, Sequence[float], torch.Tensor, "np.ndarray"]
# Where an edit acts (one of `WHERE`): one value for every row, or one per row of the batch.
Where = str | Sequence[str]

__all__ = [
    "WHERE",
    "Head",
    "Scale",
    "Where",
    "edits_active",
    "generate_with_edits",
    "per_row_scales",
    "scale_heads",
    "uniform_scales",
]

_ALL, _PROMPT, _GENERATED, _IMAGE, _TEXT = (WHERE.index(w) for w in ("all", "prompt", "generated", "image", "text"))


def _head_index(value: object, what: str, key: object) -> int:
    """An integer index; floats and bools are refused (1.0 or True as a head is a bug upstream)."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        raise ValueError(f"Head keys must be (layer, head) pairs of integers, got a bool {what} in {key!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"Head keys must be (layer, head) pairs of integers, got {what} {value!r} in {key!r}"
        ) from None


def _finite(alpha: float, head: Head) -> float:
    if not math.isfinite(alpha):
        raise ValueError(f"Scale for head {head} must be finite, got {alpha!r}")
    return alpha


def _scale_value(alpha: object, head: Head) -> float | torch.Tensor:
    """A float, or a 1-D float32 tensor of per-row factors; every value checked to be a finite number."""
    if isinstance(alpha, (str, bytes)):
        raise ValueError(f"Scale for head {head} must be a number, got {alpha!r}")
    if torch.is_tensor(alpha) or isinstance(alpha, Sequence) or hasattr(alpha, "__array__"):
        if torch.is_tensor(alpha) and alpha.dim() == 0:
            return _finite(float(alpha), head)
        try:
            rows = torch.as_tensor(alpha, dtype=torch.float32, device="cpu")
        except (TypeError, ValueError):
            raise ValueError(
                f"Scale for head {head} must be a number or a 1-D sequence of numbers, got {alpha!r}"
            ) from None
        if rows.dim() == 0:
            return _finite(float(rows), head)
        if rows.dim() != 1 or rows.numel() == 0:
            raise ValueError(
                f"Per-row scales for head {head} must be 1-D with one value per row, got shape {tuple(rows.shape)}"
            )
        if not torch.isfinite(rows).all():
            raise ValueError(f"Scale for head {head} must be finite, got {rows.tolist()}")
        return rows
    try:
        value = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"Scale for head {head} must be a number, got {alpha!r}") from None
    return _finite(value, head)


def _scales_by_layer(
    lm: LoadedModel, scales: Mapping[Head, Scale]
) -> tuple[dict[int, dict[int, float | torch.Tensor]], int | None]:
    """({layer: {head: alpha}}, rows): every key checked to be a head of ``lm`` and every scale a
    finite number or a 1-D sequence of them; `rows` is the length shared by every per-row scale
    (None when all scales are plain numbers)."""
    by_layer: dict[int, dict[int, float | torch.Tensor]] = {}
    rows: int | None = None
    L, H = lm.layout.n_layers, lm.layout.n_heads
    for key, alpha in scales.items():
        try:
            raw_layer, raw_head = key
        except (TypeError, ValueError):
            raise ValueError(f"Head keys must be (layer, head) pairs, got {key!r}") from None
        layer, head = _head_index(raw_layer, "layer", key), _head_index(raw_head, "head", key)
        if not (0 <= layer < L and 0 <= head < H):
            raise ValueError(f"Head ({layer}, {head}) does not exist in {lm.name}: layers 0..{L - 1}, heads 0..{H - 1}")
        value = _scale_value(alpha, (layer, head))
        if isinstance(value, torch.Tensor):
            if rows is not None and value.numel() != rows:
                raise ValueError(
                    f"Per-row scales must all have one value per row of the same batch: head ({layer}, {head}) "
                    f"has {value.numel()}, an earlier head has {rows}"
                )
            rows = value.numel()
        by_layer.setdefault(layer, {})[head] = value
    return by_layer, rows


def _layer_factor(heads: Mapping[int, float | torch.Tensor], n_heads: int, rows: int | None) -> torch.Tensor:
    """(n_heads,) factors when every scale is one number, else (rows, n_heads): row r of the batch
    gets row r. Heads not named keep 1."""
    if all(not isinstance(a, torch.Tensor) for a in heads.values()):
        factor = torch.ones(n_heads)
        for h, a in heads.items():
            factor[h] = a
        return factor
    assert rows is not None
    factor = torch.ones(rows, n_heads)
    for h, a in heads.items():
        factor[:, h] = a
    return factor


def _where_code(where: object) -> int:
    if not isinstance(where, str) or where not in WHERE:
        raise ValueError(
            f"where={where!r} is not one of {', '.join(WHERE)} (intervention.where in the pipeline); "
            "'all' edits every position"
        )
    return WHERE.index(where)


def _where_codes(where: Where) -> int | torch.Tensor:
    """The index in `WHERE` of where the edit acts: one int for every row, or (rows,) long codes."""
    if isinstance(where, str):
        return _where_code(where)
    codes = [_where_code(w) for w in where]
    if not codes:
        raise ValueError(f"where must be one of {', '.join(WHERE)} or one such value per row, got an empty sequence")
    return torch.tensor(codes, dtype=torch.long)


def _image_id_for(lm: LoadedModel, codes: int | torch.Tensor) -> int | None:
    """The image-patch token id when some row edits image or text tokens (a ValueError naming the
    fix on a text-only model), else None."""
    used = {codes} if isinstance(codes, int) else set(codes.tolist())
    if not used & {_IMAGE, _TEXT}:
        return None
    return image_token_id(
        lm,
        needed_by="where='image' / 'text' (intervention.where)",
        fix=" Use where='all', 'prompt' or 'generated' (intervention.where=all|prompt|generated) on a text model.",
    )


class _EditPositions:
    """The forward pre-hook (with keyword arguments) on the whole model of an edit with `where`:
    before each forward it sets `mask`, (rows, seq) bool, the positions of each row the edit reaches,
    which every layer's `_HeadScaler` reads. Prompt vs generated positions come from the context the
    generation loop sets (`headpursuit.models.edit_positions`); image vs text from the input ids.
    Per-row codes follow the rows of a greedy batch like per-row scales (`RowFollower`)."""

    def __init__(self, codes: int | torch.Tensor, image_id: int | None):
        self.codes = codes
        self.image_id = image_id
        self.rows: torch.Tensor | None = None  # the original rows still in the batch (None: all)
        self.mask: torch.Tensor | None = None  # this forward's edited positions (None between forwards)

    def keep_rows(self, index: torch.Tensor) -> None:
        index = index.cpu()
        self.rows = index if self.rows is None else self.rows[index]

    def row_keys(self) -> torch.Tensor | None:
        """Per-row codes (rows with the same `where` alike); None when every row has the same."""
        if isinstance(self.codes, int):
            return None
        codes = self.codes if self.rows is None else self.codes[self.rows]
        return codes[:, None]

    def reset_rows(self) -> None:
        self.rows = None

    def _row_codes(self, rows: int) -> torch.Tensor | None:
        """The codes of the rows in the batch now (None: one code for every row)."""
        if isinstance(self.codes, int):
            return None
        codes = self.codes if self.rows is None else self.codes[self.rows]
        if codes.numel() != rows:
            raise ValueError(f"scale_heads was given a where for {codes.numel()} rows but the model got {rows} rows")
        return codes

    def _masks(
        self, used: set[int], kwargs: dict, ids: torch.Tensor | None, rows: int, seq: int, device: torch.device
    ) -> dict[int, torch.Tensor]:
        """{code: (rows, seq) bool} for the codes in `used` (and "all")."""
        masks = {_ALL: torch.ones((rows, seq), dtype=torch.bool, device=device)}
        if used & {_PROMPT, _GENERATED}:
            is_prompt = prompt_mask(kwargs, rows, seq, device)
            if is_prompt is None:
                raise ValueError(
                    f"scale_heads(where={WHERE[min(used & {_PROMPT, _GENERATED})]!r}) cannot tell prompt from "
                    "generated tokens in this forward: generate through headpursuit (generate_batch, "
                    "generate_rows, generate_with_edits, generate_with_images), or run the forward inside "
                    "headpursuit.models.edit_positions.prompt_width(n) (columns >= n count as generated)"
                )
            masks[_PROMPT], masks[_GENERATED] = is_prompt, ~is_prompt
        if used & {_IMAGE, _TEXT}:
            if ids is None:
                raise ValueError("scale_heads(where='image' / 'text') reads the input ids; this forward has none")
            assert self.image_id is not None  # scale_heads looked it up for these codes
            is_image = torch.eq(ids, self.image_id)
            masks[_IMAGE], masks[_TEXT] = is_image, ~is_image
        return masks

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = ids if ids is not None else kwargs.get("inputs_embeds")
        if tokens is None:
            raise ValueError("scale_heads(where=...) needs a forward with input_ids or inputs_embeds")
        rows, seq = int(tokens.shape[0]), int(tokens.shape[1])
        codes = self._row_codes(rows)
        if codes is None:  # one code for every row
            code = int(self.codes)
            self.mask = self._masks({code}, kwargs, ids, rows, seq, tokens.device)[code]
            return
        used = {int(c) for c in codes.unique().tolist()}
        masks = self._masks(used, kwargs, ids, rows, seq, tokens.device)
        mask = torch.zeros((rows, seq), dtype=torch.bool, device=tokens.device)
        for code in used:
            chosen = (codes == code).to(tokens.device)
            mask[chosen] = masks[code][chosen]
        self.mask = mask

    def forward_done(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        """A post-forward hook: the mask belongs to one forward (a stale one must never be read)."""
        self.mask = None


class _HeadScaler:
    """The forward pre-hook of one layer's `o_proj`: its input times per-feature factors, (features,)
    for every row or (rows, features) one row each. Head h owns features [h*dh, (h+1)*dh)."""

    def __init__(self, per_feature: torch.Tensor, layer: int, positions: _EditPositions | None = None):
        self.per_feature = per_feature
        self.layer = layer
        self.positions = positions  # where the edit acts; None: every position (the paper's edit)
        self.placed: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # moved once, not per step
        self.rows: torch.Tensor | None = None  # the original rows still in the batch (None: all)
        self.selected: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # placed[rows], once per drop

    def keep_rows(self, index: torch.Tensor) -> None:
        """Only rows `index` of the current batch go on: finished rows left a greedy batch
        (`headpursuit.models.greedy.greedy_decode` calls this on every hook that has it)."""
        index = index.cpu()
        self.rows = index if self.rows is None else self.rows[index]
        self.selected = {}

    def row_keys(self) -> torch.Tensor | None:
        """Per-row factors (rows alike when equal), None when every row gets the same."""
        if self.per_feature.dim() != 2:
            return None
        return self.per_feature if self.rows is None else self.per_feature[self.rows]

    def reset_rows(self) -> None:
        """Every row again (the next batch starts whole)."""
        self.rows, self.selected = None, {}

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]
        key = (x.device, x.dtype)
        if key not in self.placed:
            self.placed[key] = self.per_feature.to(device=x.device, dtype=x.dtype)
        f = self.placed[key]
        if f.dim() == 2:
            if self.rows is not None:  # rows have left the batch: theirs are the rows still in it
                if key not in self.selected:
                    self.selected[key] = f[self.rows.to(f.device)]
                f = self.selected[key]
            if x.shape[0] != f.shape[0]:
                raise ValueError(
                    f"scale_heads was given per-row scales for {f.shape[0]} rows but layer {self.layer} "
                    f"received a batch of {x.shape[0]} rows"
                )
            f = f.view(f.shape[0], *([1] * (x.dim() - 2)), f.shape[1])
        if self.positions is None:
            return (x * f,) + tuple(args[1:])
        # Unedited positions pass x itself (bit-identical to the unedited model), edited ones x * f.
        mask = self.positions.mask
        if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"scale_heads(where=...) on layer {self.layer}: no position mask for this input of shape "
                f"{tuple(x.shape)}; the forward must go through the whole model (lm.model), which marks the positions"
            )
        return (torch.where(mask[..., None], x * f, x),) + tuple(args[1:])


@contextmanager
def scale_heads(lm: LoadedModel, scales: Mapping[Head, Scale], where: Where = "all") -> Iterator[LoadedModel]:
    """Within the block, head (layer, h)'s output is multiplied by `scales[(layer, h)]`.

    alpha = -1 flips (suppresses) a head, 0 ablates it, > 1 enhances it. Applies to every position
    and every generation step. The hooks are removed on exit, also when the body raises.

        with scale_heads(lm, {(12, 3): -1.0, (14, 0): -1.0}):
            out = lm.model.generate(**inputs)

    A scale may also be a 1-D sequence (or tensor) with one factor per row of the batch: row r is
    edited by the r-th factor, so one batch carries several edits (1.0 leaves a row unedited). All
    per-row scales share one length, and every batch run inside the block must have that many rows
    (a ValueError otherwise). `generate()` keeps its batch size; the greedy loop of
    `headpursuit.models.greedy`, which drops finished rows, tells the hooks which rows go on.
    Keys are (layer, head) pairs of integers; scales must be finite.

    `where` says which positions are edited (`WHERE`): ``"all"`` (every position: the paper's edit,
    and exactly the code path without `where`), ``"prompt"`` (the prompt's positions: the prompt
    pass), ``"generated"`` (the new tokens), ``"image"`` / ``"text"`` (a VLM's image-patch tokens /
    every other token, generated ones included; a ValueError on a text-only model). One value, or
    one per row of the batch (like per-row scales). Prompt vs generated needs the generation loop's
    context (`headpursuit.models.edit_positions`): headpursuit's generation functions set it; a
    bare forward needs ``prompt_width(n)`` around it (teacher forcing: `n` per row, the answer's
    positions count as generated), else a ValueError at the first forward. Unedited positions
    pass their input unchanged.
    """
    by_layer, rows = _scales_by_layer(lm, scales)
    codes = _where_codes(where)
    if isinstance(codes, torch.Tensor) and rows is not None and codes.numel() != rows:
        raise ValueError(f"where has {codes.numel()} values but the per-row scales have {rows} rows")
    if isinstance(codes, torch.Tensor) and bool((codes == codes[0]).all()):
        codes = int(codes[0])  # every row alike: one value ("all" then takes the plain path)
    image_id = _image_id_for(lm, codes)
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    everywhere = isinstance(codes, int) and codes == _ALL
    positions = None if everywhere else _EditPositions(codes, image_id)
    handles: list = []
    try:
        for layer, heads in by_layer.items():
            factor = _layer_factor(heads, H, rows)
            if torch.all(factor == 1):
                continue
            per_feature = factor.repeat_interleave(dh, dim=-1)
            hook = _HeadScaler(per_feature, layer, positions)
            handles.append(add_pre_hook(lm.o_proj(layer), hook))
        if positions is not None and handles:  # marks each forward's positions before its layers run
            handles.append(add_pre_hook(lm.model, positions, with_kwargs=True))
            handles.append(lm.model.register_forward_hook(positions.forward_done))
        yield lm
    finally:
        for handle in handles:
            handle.remove()


def edits_active(lm: LoadedModel) -> bool:
    """Whether a `scale_heads` edit is on `lm` now (inside its block): some head is rescaled."""
    return any(isinstance(hook, _HeadScaler) for hook in live_hooks(lm.model))


def uniform_scales(heads: Iterable[Head], alpha: float) -> dict[Head, float]:
    """{head: alpha for each head}: the usual edit, the same factor on every chosen head."""
    return {(int(layer), int(head)): float(alpha) for layer, head in heads}


def per_row_scales(edits: Sequence[Mapping[Head, float]]) -> dict[Head, torch.Tensor]:
    """The per-row scales that apply ``edits[r]`` to row r of a batch (1.0 where an edit leaves a
    head alone; ``{}`` is the unedited model): the argument of `scale_heads` for mixed batches."""
    heads = sorted({(int(layer), int(head)) for edit in edits for layer, head in edit})
    out: dict[Head, torch.Tensor] = {}
    for head in heads:
        column = torch.ones(len(edits))
        for r, edit in enumerate(edits):
            for key, alpha in edit.items():
                if (int(key[0]), int(key[1])) == head:
                    column[r] = float(alpha)
        out[head] = column
    return out


@torch.no_grad()
def generate_with_edits(
    lm: LoadedModel,
    prompts: Sequence[str],
    edits: Sequence[Mapping[Head, float]],
    *,
    max_new_tokens: int = 32,
    batch_size: int | Literal["auto"] = 8,
    desc: str = "generate edits",
    progress: bool = True,
    where: Where = "all",
) -> list[list[str]]:
    """Greedy generation of every prompt under every edit, several edits per batch:
    ``out[e][i]`` is prompt i's new text with ``edits[e]`` applied (``{}``: the unedited model).

    The rows are (prompt, edit) pairs, prompt-major (all edits of prompt 0, then of prompt 1, ...),
    cut into batches of `batch_size` rows (``"auto"``: the largest that fits the device, see
    `headpursuit.models.batching`) of similar prompt length, a prompt's edits adjacent
    (`generate_rows`); each batch runs under `scale_heads` with per-row scales. The
    decoding is `generate_batch`'s (same config, same padding, same decoding of the new text), so
    each output equals the one-edit-at-a-time path's up to floating-point summation order. With
    ``batch_size = len(edits) * b`` a batch holds the very prompts of that path's batch at size b
    (same padding).

    `where`: where every edit acts (`scale_heads`), or one value per edit (edits with different
    positions share batches: each row carries its edit's).

    Greedy only: sampled outputs would depend on which rows share a batch.
    """
    prompts, edits = list(prompts), [dict(e) for e in edits]
    for edit in edits:  # fail before generating anything, naming the bad edit
        _scales_by_layer(lm, edit)
    wheres = [where] * len(edits) if isinstance(where, str) else list(where)
    if len(wheres) != len(edits):
        raise ValueError(f"where has {len(wheres)} values for {len(edits)} edits: give one, or one per edit")
    _image_id_for(lm, _where_codes(wheres) if wheres else _ALL)
    if not prompts or not edits:
        return [[] for _ in edits]
    rows = [(i, e) for i in range(len(prompts)) for e in range(len(edits))]
    gc = generation_config(lm, max_new_tokens=max_new_tokens)

    def edit_rows(batch: list[int]):
        chosen = [rows[r][1] for r in batch]
        return scale_heads(lm, per_row_scales([edits[e] for e in chosen]), where=[wheres[e] for e in chosen])

    texts = generate_rows(
        lm,
        [prompts[i] for i, _ in rows],
        gc,
        batch_size=batch_size,
        around_batch=edit_rows,
        desc=desc,
        progress=progress,
    )
    out: list[list[str]] = [[""] * len(prompts) for _ in edits]
    for (i, e), text in zip(rows, texts):
        out[e][i] = text
    return out
