"""Synthetic images drawn in code: the offline, deterministic fixture of the vision tasks (no files).

Coloured shapes on a white background (``draw_shape("circle", "red")``), one per (shape, colour)
pair, with template reference captions (`shape_captions`: "a red circle on a white background"),
plus black-on-white patterns (checkerboards, stripes, rows of dots; `draw_pattern`) whose
reference captions (`PATTERNS`) name no colour (the captioning task's control group for the colour
concept; "three dots in a row" carries a number word). Needs only PIL.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

__all__ = ["BACKGROUND", "COLORS", "INK", "PATTERNS", "SHAPES", "draw_pattern", "draw_shape", "shape_captions"]

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
    "checkerboard": ["a checkerboard pattern", "a chessboard pattern of small squares", "squares in a checkerboard"],
    "large checkerboard": [
        "a checkerboard with large squares",
        "a chessboard pattern",
        "big squares in a checkerboard",
    ],
    "horizontal stripes": ["horizontal stripes", "a pattern of horizontal stripes", "stripes running across the image"],
    "vertical stripes": ["vertical stripes", "a pattern of vertical stripes", "stripes running up and down"],
    "diagonal stripes": ["diagonal stripes", "a pattern of diagonal stripes", "stripes running from corner to corner"],
    "two dots": ["two dots in a row", "two round dots side by side", "a pair of dots"],
    "three dots": ["three dots in a row", "three round dots side by side", "a row of three dots"],
    "four dots": ["four dots in a square", "four round dots", "dots at the corners of a square"],
    "grid": ["a grid of thin lines", "a grid pattern", "lines forming a grid"],
    "rings": ["concentric rings", "circles inside each other like a target", "a pattern of concentric circles"],
    "zigzag": ["a zigzag line", "a line going up and down in a zigzag", "a zigzag pattern"],
    "smiling face": ["a happy smiling face", "a drawing of a happy face", "a cheerful smiley"],
    "frowning face": ["a sad frowning face", "a drawing of a sad face", "an unhappy face"],
}
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def _polygon(
    n: int, cx: float, cy: float, r: float, rot: float = -math.pi / 2, inner: float | None = None
) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner is not None else n
    for k in range(steps):
        rad = r if inner is None or k % 2 == 0 else r * inner
        a = rot + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(
    shape: str,
    color: str | tuple[int, int, int],
    *,
    size: int = 64,
    scale: float = 0.7,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
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
                    d.rectangle([i * 2 * step, j * 2 * step, (i + 1) * 2 * step - 1, (j + 1) * 2 * step - 1], fill=INK)
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
        pts = [
            (x, size * (0.3 if i % 2 == 0 else 0.7)) for i, x in enumerate(range(4, size - 3, max(1, (size - 8) // 6)))
        ]
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
    return [
        f"a {color} {shape} on a white background",
        f"a {color} {shape}",
        f"a simple {color} {shape} in the middle of the image",
    ]
