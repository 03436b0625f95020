"""Images for the vision tasks: a synthetic fixture drawn in code, dataset loading, VLM prompting.

Synthetic fixture (offline default, deterministic, no files): coloured shapes on a white
background (``draw_shape("circle", "red")``), one per (shape, colour) pair, with template reference
captions ("a red circle on a white background"), plus black-on-white patterns (checkerboards,
stripes, rows of dots) whose reference captions name no colour (the captioning task's control
group for the colour concept; "three dots in a row" carries a number word).

Datasets (hub or local) are read with `datasets.load_dataset`, so a hub dataset and a local copy in
the same schema load the same way:

* ``source: hub``   -> ``load_dataset(hub_id, hub_config, split=hub_split)``;
* ``source: local`` -> a directory of class sub-folders (``imagefolder``: columns ``image`` and
  ``label``), a directory of ``.parquet`` files, or a ``.parquet`` / ``.jsonl`` / ``.json`` /
  ``.csv`` file (image column: decoded images, ``{"bytes", "path"}`` records, or file paths
  relative to the file).

Only the rows a task needs are decoded (labels/captions are read first, images last).

Prompting: `image_prompt(lm, text)` renders one user turn holding an image and `text` with the
processor's chat template (the placeholder the model expects: ``<image>``, Qwen's
``<|vision_start|><|image_pad|><|vision_end|>``, Gemma's ``<start_of_image>``...).
`generate_with_images` is greedy batched generation with left padding through the processor.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from headpursuit.tasks.base import GROUPS, GroupOutputs, Task, TaskOutputs

__all__ = [
    "SHAPES",
    "COLORS",
    "PATTERNS",
    "ImageItem",
    "draw_shape",
    "draw_pattern",
    "shape_items",
    "pattern_items",
    "load_image_dataset",
    "select_rows",
    "to_pil",
    "image_prompt",
    "generate_with_images",
    "processor_inputs",
    "to_model",
    "model_notes",
    "ImageTask",
    "ImageTaskOutputs",
]

# ------------------------------------------------------------------------------------------
# Synthetic fixture
# ------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (30, 160, 50),
    "yellow": (240, 210, 20),
    "orange": (245, 135, 20),
    "purple": (130, 50, 170),
}
# (name, references) of the colour-free patterns; references never name a colour.
PATTERNS: dict[str, list[str]] = {
    "checkerboard": ["a checkerboard pattern", "a chessboard pattern of small squares",
                     "squares in a checkerboard"],
    "large checkerboard": ["a checkerboard with large squares", "a chessboard pattern",
                           "big squares in a checkerboard"],
    "horizontal stripes": ["horizontal stripes", "a pattern of horizontal stripes",
                           "stripes running across the image"],
    "vertical stripes": ["vertical stripes", "a pattern of vertical stripes",
                         "stripes running up and down"],
    "diagonal stripes": ["diagonal stripes", "a pattern of diagonal stripes",
                         "stripes running from corner to corner"],
    "two dots": ["two dots in a row", "two round dots side by side", "a pair of dots"],
    "three dots": ["three dots in a row", "three round dots side by side", "a row of three dots"],
    "four dots": ["four dots in a square", "four round dots", "dots at the corners of a square"],
    "grid": ["a grid of thin lines", "a grid pattern", "lines forming a grid"],
    "rings": ["concentric rings", "circles inside each other like a target",
              "a pattern of concentric circles"],
    "zigzag": ["a zigzag line", "a line going up and down in a zigzag", "a zigzag pattern"],
    "smiling face": ["a happy smiling face", "a drawing of a happy face", "a cheerful smiley"],
    "frowning face": ["a sad frowning face", "a drawing of a sad face", "an unhappy face"],
}
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass
class ImageItem:
    """One image with its class label (classification) and/or reference captions (captioning)."""

    image: Any                       # PIL.Image.Image
    label: str | None = None
    aliases: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    group: str = "control"
    meta: dict = field(default_factory=dict)


def _polygon(n: int, cx: float, cy: float, r: float, rot: float = -math.pi / 2,
             inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        rad = r if inner is None or k % 2 == 0 else r * inner
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(shape: str, color: str | tuple[int, int, int], *, size: int = 64,
               scale: float = 0.7, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """A filled `shape` of `color` centred on a plain background (deterministic, RGB)."""
    rgb = COLORS[color] if isinstance(color, str) else tuple(color)
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    c = size / 2
    r = size * scale / 2
    if shape == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=rgb)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([c - s, c - s, c + s, c + s], fill=rgb)
    elif shape == "triangle":
        d.polygon(_polygon(3, c, c + r * 0.15, r), fill=rgb)
    elif shape == "star":
        d.polygon(_polygon(5, c, c, r, inner=0.45), fill=rgb)
    elif shape == "diamond":
        d.polygon(_polygon(4, c, c, r), fill=rgb)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([c - w, c - r, c + w, c + r], fill=rgb)
        d.rectangle([c - r, c - w, c + r, c + w], fill=rgb)
    elif shape == "hexagon":
        d.polygon(_polygon(6, c, c, r, rot=0.0), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return img


def draw_pattern(name: str, *, size: int = 64) -> Image.Image:
    """A black-on-white pattern from `PATTERNS` (deterministic, RGB)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(img)
    step = size // 8
    if name == "checkerboard":
        for i in range(8):
            for j in range(8):
                if (i + j) % 2 == 0:
                    d.rectangle([i * step, j * step, (i + 1) * step - 1, (j + 1) * step - 1], fill=INK)
    elif name == "horizontal stripes":
        for j in range(0, 8, 2):
            d.rectangle([0, j * step, size - 1, (j + 1) * step - 1], fill=INK)
    elif name == "vertical stripes":
        for i in range(0, 8, 2):
            d.rectangle([i * step, 0, (i + 1) * step - 1, size - 1], fill=INK)
    elif name == "large checkerboard":
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:
                    d.rectangle([i * 2 * step, j * 2 * step, (i + 1) * 2 * step - 1,
                                 (j + 1) * 2 * step - 1], fill=INK)
    elif name == "diagonal stripes":
        for k in range(-size, size, 2 * step):
            d.polygon([(k, 0), (k + step, 0), (k + step + size, size), (k + size, size)], fill=INK)
    elif name in ("two dots", "three dots"):
        n = 2 if name == "two dots" else 3
        r = size / (3 * n + 1)
        for k in range(n):
            cx = size * (k + 1) / (n + 1)
            d.ellipse([cx - r, size / 2 - r, cx + r, size / 2 + r], fill=INK)
    elif name == "four dots":
        r = size / 10
        for cx in (size / 3, 2 * size / 3):
            for cy in (size / 3, 2 * size / 3):
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=INK)
    elif name == "rings":
        c = size / 2
        for k, rad in enumerate(range(size // 2 - 2, 0, -step // 2 * 2)):
            d.ellipse([c - rad, c - rad, c + rad, c + rad], fill=INK if k % 2 == 0 else BACKGROUND)
    elif name in ("smiling face", "frowning face"):
        r, w = size * 0.42, max(2, size // 20)
        c = size / 2
        d.ellipse([c - r, c - r, c + r, c + r], outline=INK, width=w)
        for ex in (c - r * 0.38, c + r * 0.38):
            d.ellipse([ex - r * 0.1, c - r * 0.4, ex + r * 0.1, c - r * 0.2], fill=INK)
        box = [c - r * 0.5, c - r * 0.1, c + r * 0.5, c + r * 0.6]
        if name == "smiling face":
            d.arc(box, 20, 160, fill=INK, width=w)
        else:
            d.arc([box[0], box[1] + r * 0.45, box[2], box[3] + r * 0.45], 200, 340, fill=INK, width=w)
    elif name == "zigzag":
        pts = [(x, size * (0.3 if i % 2 == 0 else 0.7)) for i, x in
               enumerate(range(4, size - 3, max(1, (size - 8) // 6)))]
        d.line(pts, fill=INK, width=max(2, size // 16))
    elif name == "grid":
        for k in range(0, size, step):
            d.line([(k, 0), (k, size - 1)], fill=INK, width=1)
            d.line([(0, k), (size - 1, k)], fill=INK, width=1)
    else:
        raise ValueError(f"unknown pattern {name!r}; known: {', '.join(PATTERNS)}")
    return img


def shape_captions(shape: str, color: str) -> list[str]:
    """Template reference captions of a coloured shape."""
    return [f"a {color} {shape} on a white background", f"a {color} {shape}",
            f"a simple {color} {shape} in the middle of the image"]


def shape_items(label: str = "shape", *, shapes: Sequence[str] = SHAPES,
                colors: Iterable[str] = tuple(COLORS), size: int = 64) -> list[ImageItem]:
    """One item per (shape, colour); `label` is ``"shape"`` or ``"color"`` (the class name)."""
    if label not in ("shape", "color"):
        raise ValueError(f"fixture label must be 'shape' or 'color', got {label!r}")
    items = []
    for shape in shapes:
        for color in colors:
            name = shape if label == "shape" else color
            items.append(ImageItem(
                image=draw_shape(shape, color, size=size), label=name, aliases=[name],
                captions=shape_captions(shape, color),
                meta={"id": f"{color}-{shape}", "shape": shape, "color": color, "synthetic": True},
            ))
    return items


def pattern_items(*, size: int = 64) -> list[ImageItem]:
    """The colour-free patterns with their reference captions."""
    return [ImageItem(image=draw_pattern(name, size=size), label=name, aliases=[name],
                      captions=list(refs), meta={"id": name.replace(" ", "-"), "pattern": name,
                                                  "synthetic": True})
            for name, refs in PATTERNS.items()]


# ------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------

def to_pil(value: Any, base_dir: str | Path | None = None) -> Image.Image:
    """A dataset cell as an RGB PIL image: PIL image, {"bytes","path"} record, bytes, or a path."""
    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, Mapping):
        if value.get("bytes"):
            img = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            return to_pil(value["path"], base_dir)
        else:
            raise ValueError("image record has neither 'bytes' nor 'path'")
    elif isinstance(value, (bytes, bytearray)):
        img = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, Path)):
        p = Path(value)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        img = Image.open(p)
    else:
        raise ValueError(f"cannot read an image from a {type(value).__name__}")
    img.load()
    return img.convert("RGB")


def load_image_dataset(source: str, *, data_path: str | Path | None = None,
                       hub_id: str | None = None, hub_config: str | None = None,
                       split: str = "train", image_column: str = "image",
                       required: Sequence[str] = ()) -> tuple[Any, dict]:
    """A `datasets.Dataset` from the hub or a local folder/file, and a provenance dict.

    Raises a ValueError naming the available columns when a `required` column is missing.
    """
    import datasets

    base_dir = None
    if source == "hub":
        if not hub_id:
            raise ValueError("source 'hub' needs hub_id")
        try:
            ds = datasets.load_dataset(hub_id, hub_config, split=split)
        except Exception as e:
            raise RuntimeError(
                f"could not load hub dataset {hub_id!r} (config={hub_config!r}, split={split!r}): "
                f"{type(e).__name__}: {e}. Hub datasets need network access (or a populated HF "
                "cache); offline, use source=fixture or a local copy (source=local, data_path=...)."
            ) from e
        info = {"source": "hub", "hub_id": hub_id, "hub_config": hub_config, "split": split}
    elif source == "local":
        if not data_path:
            raise ValueError("source 'local' needs data_path (an image folder or a file)")
        p = Path(data_path)
        if not p.exists():
            raise FileNotFoundError(f"data_path {p} does not exist")
        if p.is_dir():
            if list(p.glob("*.parquet")):
                ds = datasets.load_dataset("parquet", data_files=sorted(str(f) for f in p.glob("*.parquet")),
                                           split="train")
                kind = "parquet"
            else:
                ds = datasets.load_dataset("imagefolder", data_dir=str(p), split="train")
                kind = "imagefolder"
        else:
            suffix = p.suffix.lower()
            builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(suffix)
            if builder is None:
                raise ValueError(f"{p}: unsupported file type {suffix!r} "
                                 "(use a folder, .parquet, .jsonl, .json or .csv)")
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
            kind = builder
            base_dir = p.parent
        info = {"source": "local", "path": str(p), "format": kind}
    else:
        raise ValueError(f"unknown image data source {source!r}; use fixture, hub or local")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        where = hub_id if source == "hub" else str(data_path)
        raise ValueError(f"{where}: missing column(s) {missing}; available columns: {ds.column_names}. "
                         "Set image_column / label_column / captions_column in the task config.")
    info["n_rows"] = len(ds)
    info["base_dir"] = str(base_dir) if base_dir is not None else None
    return ds, info


def select_rows(groups: Sequence[str], n_per_group: Mapping[str, int | None], seed: int) -> list[int]:
    """Row indices: per group a seeded shuffle, the first `n_per_group[g]` (None: all), sorted."""
    chosen: list[int] = []
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        random.Random(f"{seed}:select:{g}").shuffle(idx)
        n = n_per_group.get(g)
        chosen += idx if n is None else idx[: int(n)]
    return sorted(chosen)


def rows_needed(n_rank: Any, n_eval: Any, group: str, cap: int | None) -> int | None:
    """How many rows of `group` a task needs to decode (None: all).

    Mirrors `split_items`: an int `n_rank` is for the concept group only (ranking uses concept
    items), a mapping gives per-group counts; `n_eval` None means every remaining row.
    """
    if isinstance(n_rank, Mapping):
        nr = n_rank.get(group) or 0
    else:
        nr = (n_rank or 0) if group == "concept" else 0
    ne = n_eval.get(group) if isinstance(n_eval, Mapping) else n_eval
    n = None if ne is None else int(nr) + int(ne)
    if cap is not None:
        n = cap if n is None else min(n, cap)
    return n


# ------------------------------------------------------------------------------------------
# Prompting and generation
# ------------------------------------------------------------------------------------------

def image_prompt(lm: Any, user_text: str, system: str | None = None) -> str:
    """One user turn with an image then `user_text`, formatted by the processor's chat template.

    Without a chat template: ``"<image>\\nQ: {text}\\nA:"`` with the processor's image token.
    """
    proc = getattr(lm, "processor", None)
    if proc is None:
        raise ValueError(f"{getattr(lm, 'name', 'model')} has no processor: it cannot take images "
                         "(load a vision-language model, e.g. model=tiny_vlm)")
    if getattr(proc, "chat_template", None):
        messages = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system
                    else [])
        messages.append({"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": user_text}]})
        return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(proc, "image_token", None) or "<image>"
    prefix = f"{system}\n\n" if system else ""
    return f"{prefix}{token}\nQ: {user_text}\nA:"


def processor_inputs(lm: Any, prompts: Sequence[str], images: Sequence[Any],
                     padding_side: str = "left") -> dict:
    """Run the processor on prompts (each with one image placeholder) and their images."""
    proc = lm.processor
    # One list of images per text: Idefics3/SmolVLM and Gemma 3 need it, the others flatten it.
    imgs = [[im] for im in images]
    tok = getattr(proc, "tokenizer", None)
    old = getattr(tok, "padding_side", None)
    try:
        if tok is not None:
            tok.padding_side = padding_side
        enc = proc(text=list(prompts), images=imgs, return_tensors="pt", padding=True)
    except Exception as e:
        raise ValueError(
            f"the processor of {lm.name} rejected the inputs ({type(e).__name__}: {e}). Each prompt "
            "must contain the model's image placeholder exactly once per image: build it with "
            "headpursuit.tasks.images.image_prompt(lm, text)."
        ) from e
    finally:
        if tok is not None and old is not None:
            tok.padding_side = old
    return dict(enc)


def to_model(lm: Any, enc: Mapping[str, Any]) -> dict:
    """Tensors to the model's device; floating tensors (pixel values) to its dtype."""
    out = {}
    for k, v in enc.items():
        if torch.is_tensor(v):
            v = v.to(lm.device)
            if v.is_floating_point():
                v = v.to(lm.dtype)
        out[k] = v
    return out


@torch.no_grad()
def generate_with_images(lm: Any, prompts: Sequence[str], images: Sequence[Any], *,
                         max_new_tokens: int = 32, batch_size: int = 8, desc: str = "generate",
                         progress: bool = True) -> list[str]:
    """Greedy batched generation (left padding) for prompts with one image each; new text only."""
    from headpursuit.tasks.base import _generation_config

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    gc = _generation_config(lm, max_new_tokens=max_new_tokens, do_sample=False,
                            num_return_sequences=1, temperature=None, top_p=None, top_k=None)
    tok = lm.tokenizer
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, total=math.ceil(len(prompts) / batch_size) or None,
                      leave=False)
    for start in starts:
        enc = to_model(lm, processor_inputs(lm, prompts[start:start + batch_size],
                                            images[start:start + batch_size], padding_side="left"))
        out = lm.model.generate(**enc, generation_config=gc)
        new = out[:, enc["input_ids"].shape[1]:]
        outputs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return outputs


def model_notes(lm: Any) -> dict:
    """What every image-task output must carry about the model (random vision weights...)."""
    prov = getattr(lm, "provenance", {}) or {}
    return {"model": getattr(lm, "name", None),
            "vision_random_init": bool(prov.get("vision_random_init", False)),
            "random_init": bool(prov.get("random_init", False)),
            "notes": list(prov.get("notes", []))}



# ------------------------------------------------------------------------------------------
# Shared base of the image tasks
# ------------------------------------------------------------------------------------------

@dataclass
class ImageTaskOutputs(TaskOutputs):
    """TaskOutputs plus what the model was (random vision weights must follow the numbers)."""

    model: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)   # group -> list[ImageItem] in output order


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

    def prompt(self, lm: Any) -> str:
        return image_prompt(lm, self.instruction, system=self.system)

    def _run(self, lm: Any, items: list, desc: str) -> GroupOutputs:
        self._model_info = model_notes(lm)
        prompt = self.prompt(lm)
        prompts = [prompt] * len(items)
        outs = generate_with_images(lm, prompts, [it.image for it in items],
                                    max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                    desc=desc) if items else []
        return GroupOutputs(inputs=[str(it.meta.get("id", it.label)) for it in items],
                            prompts=prompts, outputs=[[o] for o in outs],
                            references=[self.references(it) for it in items])

    def references(self, item: ImageItem) -> list[str]:
        return list(item.aliases)

    def generate(self, lm: Any, *, split: str = "eval", desc: str = "") -> ImageTaskOutputs:
        out = ImageTaskOutputs(task=self.name, split=split, desc=desc)
        for g in GROUPS:
            label = " ".join(x for x in (self.name, desc, g) if x)
            items = self.items(split, g)
            out.groups[g] = self._run(lm, items, desc=label)
            out.items[g] = items
        out.model = model_notes(lm)
        return out

    def _answers_for_ranking(self, lm: Any) -> tuple[list, GroupOutputs]:
        items = self.items("rank", "concept")
        if not items:
            raise ValueError(f"{self.name}: the concept ranking split is empty (n_rank={self.n_rank})")
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
                examples.append({"prompt": go.prompts[i], "image": go.inputs[i],
                                 "output": go.outputs[i][0] if go.outputs[i] else "",
                                 "references": (go.references or [[]] * len(go))[i], "group": g,
                                 "vision_random_init": bool(model.get("vision_random_init")),
                                 "notes": notes})
        result["examples"] = examples
        result["vision_random_init"] = bool(model.get("vision_random_init"))
        result["notes"] = notes
        return result

    def provenance(self) -> dict:
        p = super().provenance()
        p.update({"instruction": self.instruction, "system": self.system,
                  "max_new_tokens": self.max_new_tokens, "decoding": "greedy"})
        if self._model_info is not None:
            p["vision_random_init"] = self._model_info["vision_random_init"]
            p["model_notes"] = self._model_info["notes"]
        return p
