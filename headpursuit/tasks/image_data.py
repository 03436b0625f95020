"""Image data for the vision tasks: `ImageItem`, the synthetic fixture items, dataset loading.

Fixture items (`shape_items`, `pattern_items`) wrap the images drawn by `headpursuit.synthetic`.

Datasets (hub or local) are read with `datasets.load_dataset`, so a hub dataset and a local copy in
the same schema load the same way:

* ``source: hub``   -> ``load_dataset(hub_id, hub_config, split=hub_split)``;
* ``source: local`` -> a directory of class sub-folders (``imagefolder``: columns ``image`` and
  ``label``), a directory of ``.parquet`` files, or a ``.parquet`` / ``.jsonl`` / ``.json`` /
  ``.csv`` file (image column: decoded images, ``{"bytes", "path"}`` records, or file paths
  relative to the file).

Only the rows a task needs are decoded (labels/captions are read first, images last:
`select_rows`, `rows_needed`, then `to_pil`).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from headpursuit.fingerprint import content_digest
from headpursuit.synthetic import COLORS, PATTERNS, SHAPES, draw_pattern, draw_shape, shape_captions
from headpursuit.tasks.loaders import split_identity
from headpursuit.tasks.sources import DataSpec

__all__ = [
    "FIXTURES_DIR",
    "IMAGE_SOURCES",
    "ImageItem",
    "fixture_path",
    "images_digest",
    "load_image_dataset",
    "pattern_items",
    "rows_needed",
    "select_rows",
    "spare_rows",
    "shape_items",
    "to_pil",
]

#: the `source` values of the image tasks: the synthetic fixture, a hub dataset, a local folder/file
IMAGE_SOURCES = ("fixture", "hub", "local")
#: the shipped fixture files (`fixture_file` keys are relative to it), e.g. vision/mnist.parquet:
#: tiny copies in a hub dataset's schema, images drawn by `headpursuit.synthetic` / PIL
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "data" / "fixtures"


@dataclass
class ImageItem:
    """One image with its class label (classification) and/or reference captions (captioning)."""

    image: Any  # PIL.Image.Image
    label: str | None = None
    aliases: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    group: str = "control"
    meta: dict = field(default_factory=dict)


def shape_items(
    label: str = "shape", *, shapes: Sequence[str] = SHAPES, colors: Iterable[str] = tuple(COLORS), size: int = 64
) -> list[ImageItem]:
    """One item per (shape, colour); `label` is ``"shape"`` or ``"color"`` (the class name)."""
    if label not in ("shape", "color"):
        raise ValueError(f"fixture label must be 'shape' or 'color', got {label!r}")
    items = []
    for shape in shapes:
        for color in colors:
            name = shape if label == "shape" else color
            items.append(
                ImageItem(
                    image=draw_shape(shape, color, size=size),
                    label=name,
                    aliases=[name],
                    captions=shape_captions(shape, color),
                    meta={"id": f"{color}-{shape}", "shape": shape, "color": color, "synthetic": True},
                )
            )
    return items


def pattern_items(*, size: int = 64) -> list[ImageItem]:
    """The colour-free patterns with their reference captions."""
    return [
        ImageItem(
            image=draw_pattern(name, size=size),
            label=name,
            aliases=[name],
            captions=list(refs),
            meta={"id": name.replace(" ", "-"), "pattern": name, "synthetic": True},
        )
        for name, refs in PATTERNS.items()
    ]


# ------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------


def fixture_path(name: str | Path) -> Path:
    """A shipped fixture file by its path under `FIXTURES_DIR`; a FileNotFoundError naming the files
    there when it is not one of them."""
    path = FIXTURES_DIR / Path(name)
    if not path.is_file():
        shipped = sorted(str(p.relative_to(FIXTURES_DIR)) for p in FIXTURES_DIR.rglob("*") if p.is_file())
        raise FileNotFoundError(
            f"fixture_file={str(name)!r} is not a shipped fixture; shipped: {', '.join(shipped)} "
            "(or use source=local with data_path=/path/to/file)"
        )
    return path


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


def images_digest(items: Iterable[ImageItem]) -> str:
    """sha256 of the items' decoded images (mode, size and pixels), in order."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.image.mode}:{it.image.size}\0".encode() + it.image.tobytes() + b"\1")
    return h.hexdigest()


def load_image_dataset(spec: DataSpec, *, required: Sequence[str] = ()) -> tuple[Any, dict]:
    """A `datasets.Dataset` from the hub (split `spec.hub_split`) or a local folder/file, and a
    provenance dict.

    Raises a ValueError naming the available columns when a `required` column is missing.
    """
    import datasets

    base_dir = None
    if spec.source == "hub":
        hub_id, hub_config, split = spec.hub_id, spec.hub_config, spec.hub_split
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
        info: dict[str, Any] = {
            "source": "hub",
            "hub_id": hub_id,
            "hub_config": hub_config,
            "split": split,
            "content": {"hub_split": split_identity(ds)},
        }
    elif spec.source == "local":
        if not spec.data_path:
            raise ValueError("source 'local' needs data_path (an image folder or a file)")
        p = Path(spec.data_path)
        if not p.exists():
            raise FileNotFoundError(f"data_path {p} does not exist")
        if p.is_dir():
            if list(p.glob("*.parquet")):
                ds = datasets.load_dataset(
                    "parquet", data_files=sorted(str(f) for f in p.glob("*.parquet")), split="train"
                )
                kind = "parquet"
            else:
                ds = datasets.load_dataset("imagefolder", data_dir=str(p), split="train")
                kind = "imagefolder"
        else:
            suffix = p.suffix.lower()
            builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(suffix)
            if builder is None:
                raise ValueError(
                    f"{p}: unsupported file type {suffix!r} (use a folder, .parquet, .jsonl, .json or .csv)"
                )
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
            kind = builder
            base_dir = p.parent
        info = {"source": "local", "path": str(p), "format": kind, "content": {"data_path": content_digest(p)}}
    else:
        raise ValueError(f"unknown image data source {spec.source!r}; use fixture, hub or local")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        where = spec.hub_id if spec.source == "hub" else str(spec.data_path)
        raise ValueError(
            f"{where}: missing column(s) {missing}; available columns: {ds.column_names}. "
            "Set image_column / label_column / captions_column in the task config."
        )
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


def spare_rows(
    groups: Sequence[str], group: str, n_selected: int | None, count: int, seed: int, cap: int | None
) -> list[int]:
    """Rows of `group` for ranking only: the `count` rows that follow the `n_selected` that
    `select_rows` picked, in its seeded order, so the selected rows (and the splits made from them)
    stay as they are. With `cap` (max_rows) the selected and spare rows together stay within it;
    with `n_selected` None every row was selected and none is spare."""
    if n_selected is None or count <= 0:
        return []
    if cap is not None:
        count = max(0, min(count, int(cap) - int(n_selected)))
    idx = [i for i, x in enumerate(groups) if x == group]
    random.Random(f"{seed}:select:{group}").shuffle(idx)
    return sorted(idx[int(n_selected) : int(n_selected) + count])


def rows_needed(n_rank: Any, n_eval: Any, group: str, cap: int | None) -> int | None:
    """How many rows of `group` a task needs to decode (None: all).

    Mirrors `split_items`: an int `n_rank` is for the concept group only (ranking uses concept
    items), a mapping gives per-group counts; `n_eval` None means every remaining row. (Control
    rows ranked under ``rank_groups=[concept, control]`` come on top, from `spare_rows`.)
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
