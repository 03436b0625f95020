"""Per-head activations: the input of each decoder layer's attention output projection, split by head.

The hook site is a forward *pre*-hook on `self_attn.o_proj`: its input is `[batch, tokens,
n_heads * head_dim]`, one `head_dim` slice per query head (grouped-query attention shrinks only
K/V). We store `z` (rows, layers, heads, head_dim) rather than per-head d_model contributions:
it is d_model / head_dim times smaller and SOMP works from `z` and `W_O` directly.

Positions: one row per chosen token (`last_prompt`, `answer`, `answer_concept`, `all`), or one row
per sample holding the mean of `z` over a span of its tokens (`prompt_mean`: the prompt's tokens,
as the paper averages TriviaQA prompts; `image_mean`: the image-patch tokens of a VLM prompt). The
means are taken inside the forward hook (a masked sum over tokens divided by the count), so no
per-token rows are ever stored for them.

Caching: this room computes activations, the store (`headpursuit.store`) keeps them. With
`cache_dir` (a folder or a `Store`) `capture_heads` reads and writes the entry
``<cache>/acts/<activation_key>.safetensors`` through the store, in the `ACTIVATIONS` format.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from headpursuit.models.batching import auto_batch_size, length_batches
from headpursuit.models.handle import LoadedModel
from headpursuit.models.inputs import (
    answer_token_ids,
    pad_batch,
    position_ids_from_mask,
    processor_inputs,
    teacher_forced_ids,
    to_model,
)
from headpursuit.store import CacheError, Codec, Store, entry_key, write_atomic

POSITIONS = ("last_prompt", "answer", "answer_concept", "all", "prompt_mean", "image_mean")
#: positions whose one row per sample is a mean over a span of the sample's tokens
MEAN_POSITIONS = ("prompt_mean", "image_mean")
#: `position` and `target_token` of a mean row: it stands for a span, not one token
MEAN_ROW_POSITION = -1
#: the layout of an activation file (`HeadActivations.save`), written into its metadata
FILE_VERSION = 1
#: the store's kind for activation entries
ACTS = "acts"

# Counts real forward passes made by `capture_heads` (tests assert cache hits with it).
CAPTURE_STATS = {"forward_batches": 0}


@dataclass
class CaptureSample:
    """One model input: a formatted prompt, optionally the answer to teacher-force and an image."""

    prompt: str
    answer: str | None = None
    image: Any | None = None  # PIL.Image for VLMs
    meta: dict = field(default_factory=dict)


@dataclass
class HeadActivations:
    """Per-head attention outputs `z` at chosen token positions.

    Attributes:
        z: float32 (rows, n_layers_captured, n_heads, head_dim) on CPU.
        layers: the decoder layers captured, in the order of axis 1.
        sample_index: (rows,) which input sample each row came from.
        position: (rows,) the token position inside that sample's (unpadded) sequence;
            `MEAN_ROW_POSITION` (-1) for the mean rows of `prompt_mean` / `image_mean`.
        target_token: (rows,) the token predicted at that position, -1 when unknown (and for
            mean rows).
        meta: model name, positions mode, provenance, prompts, ...
    """

    z: torch.Tensor
    layers: list[int]
    sample_index: torch.Tensor
    position: torch.Tensor
    target_token: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return self.z.shape[0]

    @property
    def n_heads(self) -> int:
        return self.z.shape[2]

    @property
    def head_dim(self) -> int:
        return self.z.shape[3]

    def head(self, layer: int, head: int) -> torch.Tensor:
        """(rows, head_dim) activations of one head."""
        return self.z[:, self.layers.index(layer), head]

    def contributions(self, lm: LoadedModel, layer: int) -> torch.Tensor:
        """Per-head d_model contributions W_O,h z_h of one layer: (rows, heads, d_model)."""
        W = lm.output_weight(layer).detach().float().cpu()
        H, dh = self.n_heads, self.head_dim
        return torch.einsum("rhd,mhd->rhm", self.head_layer(layer), W.view(-1, H, dh))

    def head_layer(self, layer: int) -> torch.Tensor:
        return self.z[:, self.layers.index(layer)]

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): an interrupted save never leaves a bad file."""
        return write_atomic(path, self._write_safetensors)

    def _write_safetensors(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {
            "z": self.z.contiguous(),
            "sample_index": self.sample_index.contiguous(),
            "position": self.position.contiguous(),
            "target_token": self.target_token.contiguous(),
            "layers": torch.tensor(self.layers, dtype=torch.long),
        }
        meta = {"meta": json.dumps(self.meta, default=str), "version": str(FILE_VERSION)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> HeadActivations:
        """Read a file written by `save`. FileNotFoundError when there is none, CacheError when it
        is corrupt (truncated, empty, not safetensors) or not a headpursuit activation file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No activation file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(md.get("meta", "{}"))
            return cls(
                z=t["z"],
                layers=t["layers"].tolist(),
                sample_index=t["sample_index"],
                position=t["position"],
                target_token=t["target_token"],
                meta=meta,
            )
        except Exception as exc:
            raise CacheError(
                f"Activation cache file {path} is corrupt or not a headpursuit cache ({exc}). "
                f"Delete it (rm {shlex.quote(str(path))}) and capture again to recompute it, or pass "
                "cache_dir=None to capture_heads to bypass the cache."
            ) from exc


#: the store's format of activation entries (safetensors, `HeadActivations.save` / `load`)
ACTIVATIONS = Codec(
    "activations", "safetensors", lambda acts, path: acts._write_safetensors(path), HeadActivations.load
)


# ------------------------------------------------------------------------------------------
# Hooks
# ------------------------------------------------------------------------------------------


@contextmanager
def o_proj_inputs(
    lm: LoadedModel, layers: Sequence[int], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the input of `o_proj` for the given layers during one forward pass.

    Yields a dict layer -> (batch, tokens, n_heads*head_dim), filled by the forward pass; with
    `reduce`, layer -> `reduce(input)` instead (applied inside the hook, so the full per-token
    input of every layer is never kept). The hooks are removed on exit, also when the body raises.
    """
    store: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:

            def hook(module, args, kwargs=None, _layer=layer):
                x = args[0].detach()
                store[_layer] = x if reduce is None else reduce(x)

            handles.append(lm.o_proj(layer).register_forward_pre_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------
# Sample preparation: token ids, where the prompt ends, which positions to keep
# ------------------------------------------------------------------------------------------


@dataclass
class PreparedSample:
    """One sample as the forward pass sees it: its token ids (unpadded), where its prompt ends and
    the positions whose rows are kept."""

    ids: list[int]
    prompt_len: int
    keep: list[int]  # positions to record (MEAN_ROW_POSITION for a mean row)
    targets: list[int]  # token predicted at each kept position (-1 if unknown)
    span: list[int] = field(default_factory=list)  # positions averaged into the mean row (mean modes)


def _positions_for(
    ids: list[int], prompt_len: int, mode: str, concept_ids: set[int] | None
) -> tuple[list[int], list[int]]:
    n = len(ids)
    if mode in MEAN_POSITIONS:
        return [MEAN_ROW_POSITION], [-1]

    def target(p: int) -> int:
        return ids[p + 1] if p + 1 < n else -1

    if mode == "last_prompt":
        keep = [prompt_len - 1]
    elif mode == "all":
        keep = list(range(n))
    elif mode == "answer":
        # Position p predicts token p+1; the answer tokens are ids[prompt_len:].
        keep = list(range(prompt_len - 1, n - 1)) or [prompt_len - 1]
    elif mode == "answer_concept":
        keep = [p for p in range(prompt_len - 1, n - 1) if ids[p + 1] in (concept_ids or set())]
        if not keep:  # no concept token in the answer: fall back to the last prompt token
            keep = [prompt_len - 1]
    else:
        raise ValueError(f"Unknown positions {mode!r}; choose one of {', '.join(POSITIONS)}")
    return keep, [target(p) for p in keep]


def _mean_span(ids: list[int], prompt_len: int, mode: str, image_id: int | None, prompt: str) -> list[int]:
    """The positions a mean row averages: the prompt's tokens (`prompt_mean`; the answer, if any,
    is not part of it) or the image-patch tokens (`image_mean`, ids == the image token id after
    the processor expanded the placeholders). Empty for the other modes."""
    if mode == "prompt_mean":
        return list(range(prompt_len))
    if mode == "image_mean":
        span = [p for p in range(prompt_len) if ids[p] == image_id]
        if not span:
            raise ValueError(
                f"positions='image_mean': the sample with prompt {prompt[:60]!r} has no image token "
                f"(id {image_id}) after processing; it needs an image and the model's placeholder."
            )
        return span
    return []


def image_token_id(lm: LoadedModel, needed_by: str = "positions='image_mean'", fix: str = "") -> int:
    """The id of the token that stands for one image patch in a VLM's processed input ids.
    `needed_by` and `fix` word the error of a model without one."""
    token_id = getattr(lm.model.config, "image_token_id", None)
    if token_id is None:
        raise ValueError(
            f"{needed_by} needs a vision-language model: {lm.name}'s config has no "
            f"image_token_id (a text-only model, or a VLM family that names it otherwise).{fix}"
        )
    return int(token_id)


def _prepare_text(lm: LoadedModel, sample: CaptureSample, mode: str, concept_ids) -> PreparedSample:
    if mode == "image_mean":
        raise ValueError(
            f"positions='image_mean' needs samples with images; the sample with prompt "
            f"{sample.prompt[:60]!r} has none (use positions='prompt_mean' for text)."
        )
    tf = teacher_forced_ids(lm, sample.prompt, sample.answer)
    if mode in ("answer", "answer_concept") and sample.answer is None:
        raise ValueError(
            f"positions={mode!r} needs each sample's answer (teacher forcing); sample with prompt "
            f"{sample.prompt[:60]!r} has none. Generate the model's answers first or use "
            "positions='last_prompt'."
        )
    keep, targets = _positions_for(tf.ids, tf.prompt_len, mode, concept_ids)
    return PreparedSample(
        tf.ids, tf.prompt_len, keep, targets, _mean_span(tf.ids, tf.prompt_len, mode, None, sample.prompt)
    )


def activation_key(
    lm: LoadedModel, samples: Sequence[CaptureSample], positions: str, layers: Sequence[int], concept_token_ids
) -> str:
    """The store key of the activations of `samples` (`entry_key`, kind `ACTS`): the model, the
    options and every sample's content (`samples_digest`); the store's key adds the code."""
    model = {
        "model": lm.name,
        "source": lm.provenance.get("source"),
        "layout": lm.layout.__dict__,
        "dtype": str(lm.dtype),
        "random_init": lm.provenance.get("random_init"),
        "seed": lm.provenance.get("seed"),
    }
    # Random-initialised models differ per instance: key on their weights too.
    if lm.provenance.get("random_init") or lm.provenance.get("vision_random_init"):
        weights = lm.output_weight(0).detach().float().cpu().numpy().tobytes()[:4096]
        model["weights"] = hashlib.sha256(weights).hexdigest()
    concept = sorted(int(i) for i in concept_token_ids) if concept_token_ids is not None else None
    return entry_key(ACTS, model, positions, list(layers), concept, samples_digest(samples))


def samples_digest(samples: Sequence[CaptureSample]) -> str:
    """sha256 (hex) of the samples' content: prompts, answers and images' pixels, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.prompt.encode())
        h.update(b"\x00" + (s.answer or "").encode() + b"\x01")
        if s.image is not None:
            h.update(_image_bytes(s.image))
    return h.hexdigest()


def _image_bytes(image) -> bytes:
    try:
        return image.tobytes()
    except AttributeError:
        return repr(image).encode()


# ------------------------------------------------------------------------------------------
# The capture
# ------------------------------------------------------------------------------------------


def _capture_batches(lm: LoadedModel, items: Sequence[CaptureSample], batch_size: int | str) -> list[list[int]]:
    """The samples' indices, batch by batch, `batch_size` samples each or, for ``"auto"``, as many
    as fit the device (`auto_batch_size`, kind ``"forward"``).

    Text samples: batches of similar token length (`length_batches`), so one long sample pads only
    its own batch, and with ``"auto"`` each batch is as large as fits at its own longest sample; a
    sample's activations do not depend on its batch mates (padding masked, positions counted from
    the mask). Samples with images: consecutive batches (their length is known only after the
    processor expands them)."""
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"capture batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
    if any(s.image is not None for s in items):
        if batch_size == "auto" and lm.device.type == "cuda":
            raise ValueError(
                "capture batch_size='auto' does not model image tokens on CUDA; pass an integer "
                "(capture_batch_size=8 in the pipeline config)"
            )
        size = (
            batch_size if isinstance(batch_size, int) else auto_batch_size(lm, "forward", prompt_len=1, rows=len(items))
        )
        return [list(range(start, min(start + size, len(items)))) for start in range(0, len(items), size)]
    lengths = [len(teacher_forced_ids(lm, s.prompt, s.answer).ids) for s in items]
    if isinstance(batch_size, int):
        return length_batches(lengths, batch_size)
    return length_batches(lengths, lambda longest: auto_batch_size(lm, "forward", prompt_len=longest, rows=len(items)))


def capture_heads(
    lm: LoadedModel,
    samples: Sequence[CaptureSample | str],
    *,
    positions: str = "last_prompt",
    layers: Sequence[int] | None = None,
    batch_size: int | str = 8,
    concept_token_ids=None,
    padding_side: str = "left",
    cache_dir: str | Path | Store | None = None,
    progress: bool = True,
) -> HeadActivations:
    """Run the model over `samples` and record every chosen layer's per-head `z` at `positions`.

    Args:
        samples: formatted prompts (strings) or `CaptureSample`s with answers (teacher-forced)
            and images (VLMs).
        positions: `last_prompt`, `answer` (every position predicting an answer token),
            `answer_concept` (positions predicting a token in `concept_token_ids`; the last prompt
            token when the answer has none), `all`, or one mean row per sample: `prompt_mean`
            (mean over the prompt's tokens, i.e. positions 0..prompt_len-1 of the unpadded
            sequence: the whole formatted prompt, chat template and expanded image tokens
            included; padding and the answer excluded) or `image_mean` (mean over the image-patch
            tokens; every sample needs an image). Mean rows have position and target_token -1.
        layers: decoder layers to capture (default: all).
        batch_size: samples per forward pass, or ``"auto"``: the largest forward batch that fits
            the device at the batch's longest sample (`headpursuit.models.batching.auto_batch_size`,
            kind ``"forward"``; on CPU its fixed default). Text samples only on CUDA: the probe
            runs dummy tokens and does not model image tokens. Text samples are batched by length
            (longest first); the rows come back in sample order.
        cache_dir: a folder or a `headpursuit.store.Store`: the activations are stored there
            (``acts/<activation_key>.safetensors``: the model, the inputs' content, the options
            and the code), and a rerun reads them instead of running the model (``meta["from_cache"]``
            says which). A corrupt cached file is set aside (`<name>.corrupt-<timestamp>`, with a
            warning) and recomputed.
    """
    if positions not in POSITIONS:
        raise ValueError(f"Unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
    items = [CaptureSample(s) if isinstance(s, str) else s for s in samples]
    if not items:
        raise ValueError("capture_heads got no samples: the dataset or split is empty.")
    if positions == "answer_concept" and concept_token_ids is None:
        raise ValueError("positions='answer_concept' needs concept_token_ids")
    layers = list(range(lm.layout.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < lm.layout.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for {lm.name} ({lm.layout.n_layers} layers)")
    concept_set = set(int(i) for i in concept_token_ids) if concept_token_ids is not None else None

    def compute() -> HeadActivations:
        return _capture(lm, items, positions, layers, batch_size, concept_set, padding_side, progress)

    if cache_dir is None:
        return compute()
    store = cache_dir if isinstance(cache_dir, Store) else Store(cache_dir)
    key = activation_key(lm, items, positions, layers, concept_token_ids)
    acts, hit = store.get_or_compute(ACTS, key, compute, fmt=ACTIVATIONS)
    acts.meta["from_cache"] = hit
    return acts


def _capture(
    lm: LoadedModel,
    items: Sequence[CaptureSample],
    positions: str,
    layers: list[int],
    batch_size: int | str,
    concept_set: set[int] | None,
    padding_side: str,
    progress: bool,
) -> HeadActivations:
    """The forward passes of `capture_heads` (arguments checked there)."""
    H, dh = lm.layout.n_heads, lm.layout.head_dim
    # Per sample, in input order: its rows of z (n_kept, L, H, dh), kept positions and their targets.
    per_sample: list[tuple[torch.Tensor, list[int], list[int]]] = [(torch.empty(0), [], [])] * len(items)
    batches = _capture_batches(lm, items, batch_size)
    for batch in tqdm(batches, desc=f"capture {lm.name}", disable=not progress, unit="batch"):
        chunk = [items[i] for i in batch]
        if any(s.image is not None for s in chunk):
            inputs, prepared, offsets = prepare_vlm_batch(lm, chunk, positions, concept_set, padding_side)
        else:
            prepared = [_prepare_text(lm, s, positions, concept_set) for s in chunk]
            inputs = pad_batch([p.ids for p in prepared], lm.pad_token_id, padding_side, device=lm.device)
            T = inputs["input_ids"].shape[1]
            offsets = [T - len(p.ids) if padding_side == "left" else 0 for p in prepared]
        if positions in MEAN_POSITIONS:
            reduce = _span_mean(prepared, offsets, inputs["input_ids"].shape[1], lm.device)
        else:
            reduce = _gather(prepared, offsets, lm.device)
        with torch.inference_mode(), o_proj_inputs(lm, layers, reduce) as store:
            lm.model(**inputs, use_cache=False)
        CAPTURE_STATS["forward_batches"] += 1
        rows = torch.stack([store[layer] for layer in layers], dim=1)  # (r, L, H*dh)
        z = rows.float().cpu().view(rows.shape[0], len(layers), H, dh)
        # `reduce` gives the batch's samples in its order, len(keep) rows each (one for a mean row).
        for i, p, z_i in zip(batch, prepared, z.split([len(p.keep) for p in prepared])):
            per_sample[i] = (z_i, p.keep, p.targets)
    zs = [z_i for z_i, _, _ in per_sample]
    sidx = [i for i, (_, keep, _) in enumerate(per_sample) for _ in keep]
    pos = [k for _, keep, _ in per_sample for k in keep]
    tgt = [t for _, _, targets in per_sample for t in targets]
    acts = HeadActivations(
        z=torch.cat(zs),
        layers=layers,
        sample_index=torch.tensor(sidx, dtype=torch.long),
        position=torch.tensor(pos, dtype=torch.long),
        target_token=torch.tensor(tgt, dtype=torch.long),
        meta={
            "model": lm.name,
            "positions": positions,
            "n_samples": len(items),
            "provenance": lm.provenance,
            "prompts": [s.prompt for s in items],
            "answers": [s.answer for s in items],
            "from_cache": False,
        },
    )
    return acts


def _gather(
    prepared: Sequence[PreparedSample], offsets: Sequence[int], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(batch, tokens, d) -> (rows, d): the kept positions of every sample, in sample order."""
    b_idx = torch.tensor([i for i, p in enumerate(prepared) for _ in p.keep], device=device)
    t_idx = torch.tensor([offsets[i] + k for i, p in enumerate(prepared) for k in p.keep], device=device)
    return lambda x: x[b_idx, t_idx]


def _span_mean(
    prepared: Sequence[PreparedSample], offsets: Sequence[int], n_tokens: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(batch, tokens, d) -> (batch, d): each sample's mean over its span, in float32 (a masked
    sum over the padded batch's tokens divided by the span's length)."""
    mask = torch.zeros(len(prepared), 1, n_tokens, device=device)
    for i, p in enumerate(prepared):
        mask[i, 0, [offsets[i] + t for t in p.span]] = 1.0
    count = mask.sum(-1)  # (batch, 1); every span is non-empty
    return lambda x: torch.bmm(mask, x.float()).squeeze(1) / count


def prepare_vlm_batch(
    lm: LoadedModel, chunk: Sequence[CaptureSample], positions: str, concept_set: set[int] | None, padding_side: str
) -> tuple[dict[str, Any], list[PreparedSample], list[int]]:
    """Inputs for samples with images: the processor expands the image placeholders.

    One processor call on the chunk's *prompts* (with their images) gives the prompt tokens in
    processed-token space (image placeholders expanded) and the image tensors. Each sample's
    answer is then appended token-wise (`answer_token_ids`, as on the text path), so the
    answer boundary is exactly the processed prompt length; the rows are re-padded on
    `padding_side`. Per-token tensors (attention mask, `token_type_ids`, Qwen's
    `mm_token_type_ids`, ...) are extended with text values for the answer tokens; image tensors
    pass through unchanged (the images and their placeholders are the same).

    Position ids: models with 1-D RoPE get explicit `position_ids` counting only real tokens, so
    left padding shifts nothing (LLaVA otherwise derives positions from `cache_position`). Models
    that build multimodal 3-D positions themselves from the attention mask (Qwen2-VL M-RoPE) get
    none. Returns (inputs, prepared, offsets) like the text path: the model inputs, each sample's
    `PreparedSample`, and where each sample's tokens start in its padded row.
    """
    if lm.processor is None:
        raise ValueError(f"{lm.name} has no processor, so it cannot take images.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if any(s.image is None for s in chunk):
        # Processors pair images with placeholders in order; a text-only sample in an image batch
        # is fine for them only when its prompt has no placeholder, which we cannot check
        # generically: keep batches homogeneous.
        raise ValueError(
            "capture_heads: a batch mixes samples with and without images; capture them "
            "separately (or use batch_size=1)."
        )
    if positions in ("answer", "answer_concept"):
        for s in chunk:
            if s.answer is None:
                raise ValueError(
                    f"positions={positions!r} needs each sample's answer (teacher forcing); "
                    f"sample with prompt {s.prompt[:60]!r} has none."
                )
    image_id = image_token_id(lm) if positions == "image_mean" else None
    enc = processor_inputs(lm, [s.prompt for s in chunk], [s.image for s in chunk], padding_side="right")
    ids_b, mask_b = enc["input_ids"], enc["attention_mask"]
    token_keys = [
        k for k, v in enc.items() if torch.is_tensor(v) and v.shape == ids_b.shape and k not in _NON_TOKEN_KEYS
    ]
    rows: list[dict[str, list[int]]] = []
    prepared = []
    for i, s in enumerate(chunk):
        real = mask_b[i].bool()
        row = {k: enc[k][i][real].tolist() for k in token_keys}
        prompt_ids = row["input_ids"]
        answer_ids = answer_token_ids(lm, s.answer)
        for k in token_keys:
            fill = 1 if k == "attention_mask" else 0
            row[k] = row[k] + (list(answer_ids) if k == "input_ids" else [fill] * len(answer_ids))
        ids = row["input_ids"]
        keep, targets = _positions_for(ids, len(prompt_ids), positions, concept_set)
        span = _mean_span(ids, len(prompt_ids), positions, image_id, s.prompt)
        prepared.append(PreparedSample(ids, len(prompt_ids), keep, targets, span))
        rows.append(row)
    T = max(len(p.ids) for p in prepared)
    inputs: dict[str, Any] = {}
    for k in token_keys:
        pad = lm.pad_token_id if k == "input_ids" else 0
        t = torch.full((len(chunk), T), pad, dtype=enc[k].dtype)
        for i, row in enumerate(rows):
            n = len(row[k])
            sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
            t[i, sl] = torch.tensor(row[k], dtype=enc[k].dtype)
        inputs[k] = t
    offsets = [T - len(p.ids) if padding_side == "left" else 0 for p in prepared]
    if not _builds_own_positions(lm):
        inputs["position_ids"] = position_ids_from_mask(inputs["attention_mask"])
    for k, v in enc.items():
        if k not in token_keys:
            inputs[k] = v
    return to_model(lm, inputs), prepared, offsets


# Processor outputs that are never per-token even when their shape happens to match input_ids.
_NON_TOKEN_KEYS = {"image_grid_thw", "video_grid_thw", "image_sizes", "pixel_values"}


def _builds_own_positions(lm: LoadedModel) -> bool:
    """True for models that compute multimodal (3-D, M-RoPE) position ids from the mask."""
    inner = getattr(lm.model, "model", None)
    return any(hasattr(m, "get_rope_index") for m in (lm.model, inner) if m is not None)
