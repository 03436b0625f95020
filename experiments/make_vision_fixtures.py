"""Write the tiny offline copies of the paper's classification datasets (headpursuit/data/fixtures/vision/).

    python experiments/make_vision_fixtures.py          # rewrites mnist.parquet, svhn.parquet, dtd.parquet

Each file is in its hub copy's schema (conf/task/cls_<dataset>.yaml): columns ``image`` (a datasets
Image feature: PNG bytes) and ``label`` (a ClassLabel with the dataset's class names), so
``task.source=fixture`` reads it through the very code that reads the hub copy. The images are drawn,
not taken from the datasets: digits in PIL's default font (MNIST: white on black, 28x28 greyscale;
SVHN: on a coloured background, 32x32 RGB) and black-on-white patterns from `headpursuit.synthetic`
standing in for five of DTD's 47 textures (its ClassLabel keeps all 47 names). Two (digits) or four
(textures) images per class: enough for tests and the offline experiments, not for any measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from headpursuit.synthetic import draw_pattern  # noqa: E402

OUT = REPO / "headpursuit" / "data" / "fixtures" / "vision"
DIGITS = [str(i) for i in range(10)]
DTD_CLASSES = [
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
]  # fmt: skip
# synthetic pattern -> the DTD class it stands in for
DTD_STAND_INS = {
    "checkerboard": "chequered",
    "horizontal stripes": "striped",
    "three dots": "dotted",
    "grid": "grid",
    "zigzag": "zigzagged",
}
SVHN_BACKGROUNDS = [(200, 60, 40), (40, 90, 180), (60, 140, 70), (220, 190, 60), (120, 60, 150)]


def draw_digit(digit: str, *, size: int, mode: str, ink, background, font_size: int) -> Image.Image:
    """`digit` centred in PIL's default font."""
    img = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), digit, font=font)
    xy = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
    draw.text(xy, digit, fill=ink, font=font)
    return img


def write(name: str, images: list[Image.Image], labels: list[int], names: list[str]) -> Path:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    path = OUT / f"{name}.parquet"
    ds.to_parquet(str(path))
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    mnist = [(d, v) for d in range(10) for v in range(2)]
    write(
        "mnist",
        [draw_digit(str(d), size=28, mode="L", ink=255, background=0, font_size=18 + 4 * v) for d, v in mnist],
        [d for d, _ in mnist],
        DIGITS,
    )
    svhn = [(d, v) for d in range(10) for v in range(2)]
    write(
        "svhn",
        [
            draw_digit(
                str(d),
                size=32,
                mode="RGB",
                ink=(255, 255, 255),
                background=SVHN_BACKGROUNDS[(d + v) % 5],
                font_size=20 + 4 * v,
            )
            for d, v in svhn
        ],  # fmt: skip
        [d for d, _ in svhn],
        DIGITS,
    )
    dtd = [(p, s) for p in DTD_STAND_INS for s in (32, 40, 48, 56)]
    write(
        "dtd",
        [draw_pattern(p, size=s) for p, s in dtd],
        [DTD_CLASSES.index(DTD_STAND_INS[p]) for p, _ in dtd],
        DTD_CLASSES,
    )
    for p in sorted(OUT.glob("*.parquet")):
        print(f"{p.relative_to(REPO)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
