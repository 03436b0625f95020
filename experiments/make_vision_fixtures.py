"""Write the tiny offline copies of the paper's six classification datasets (headpursuit/data/fixtures/vision/).

    python experiments/make_vision_fixtures.py          # rewrites <dataset>.parquet for all six

Each file is in its hub copy's schema (conf/task/cls_<dataset>.yaml): columns ``image`` (a datasets
Image feature: PNG bytes) and ``label`` (a ClassLabel with the dataset's class names), so
``task.source=fixture`` (data=offline) reads it through the very code that reads the hub copy. The
images are drawn, not taken from the datasets: digits in PIL's default font (MNIST: white on black,
28x28 greyscale; SVHN: on a coloured background, 32x32 RGB), black-on-white patterns from
`headpursuit.synthetic` standing in for five of DTD's 47 textures, six traffic signs of GTSRB's 43
(48x48 RGB), six of EuroSAT's 10 land covers (64x64 RGB) and six of RESISC45's 45 scenes (256x256
RGB) as flat-coloured drawings; every ClassLabel keeps all of its dataset's names (those of
conf/task/cls_<dataset>.yaml). Two to four images per class: enough for tests and the offline
experiments, not for any measurement. The drawing is deterministic: a rerun writes the same bytes.
"""

from __future__ import annotations

import math
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
TASK_CONF = REPO / "conf" / "task"
# three backgrounds per drawn class (variant v of an image): sky, foliage, wall
SCENERY = [(150, 190, 230), (70, 110, 60), (160, 150, 140)]
RED, WHITE, BLACK, BLUE = (200, 20, 30), (245, 245, 245), (20, 20, 20), (30, 80, 190)
# GTSRB class name -> how its stand-in is drawn (the official names, conf/task/cls_gtsrb.yaml)
GTSRB_STAND_INS = {
    "Speed limit (30km/h)": "30",
    "Speed limit (50km/h)": "50",
    "Stop": "stop",
    "Yield": "yield",
    "General caution": "caution",
    "Ahead only": "ahead",
}
EUROSAT_STAND_INS = ("forest", "sea or lake", "river", "highway", "residential", "annual crop")
RESISC45_STAND_INS = ("beach", "circular_farmland", "runway", "parking_lot", "lake", "forest")


def draw_digit(digit: str, *, size: int, mode: str, ink, background, font_size: int) -> Image.Image:
    """`digit` centred in PIL's default font."""
    img = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), digit, font=font)
    xy = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
    draw.text(xy, digit, fill=ink, font=font)
    return img


def class_names(dataset: str) -> list[str]:
    """The dataset's class names as its task config lists them (one list for the config and the fixture)."""
    from omegaconf import OmegaConf

    return [str(n) for n in OmegaConf.load(TASK_CONF / f"cls_{dataset}.yaml").class_names]


def draw_sign(kind: str, v: int, size: int = 48) -> Image.Image:
    """A GTSRB-like traffic sign on a plain background (variant `v`: background and sign size)."""
    img = Image.new("RGB", (size, size), SCENERY[v])
    d = ImageDraw.Draw(img)
    c, r = size / 2, size * (0.36 + 0.04 * v)
    box = [c - r, c - r, c + r, c + r]
    font = ImageFont.load_default(size=int(r * 0.8))
    if kind.isdigit():  # a speed limit: red ring, white disc, black number
        d.ellipse(box, fill=RED)
        d.ellipse([c - r * 0.75, c - r * 0.75, c + r * 0.75, c + r * 0.75], fill=WHITE)
        d.text((c, c), kind, fill=BLACK, font=font, anchor="mm")
    elif kind == "stop":
        d.polygon(
            [(c + r * math.cos(a), c + r * math.sin(a)) for a in (math.pi / 8 * (2 * k + 1) for k in range(8))],
            fill=RED,
        )
        d.text((c, c), "STOP", fill=WHITE, font=ImageFont.load_default(size=int(r * 0.5)), anchor="mm")
    elif kind == "yield":  # point down
        d.polygon([(c - r, c - r * 0.7), (c + r, c - r * 0.7), (c, c + r)], fill=RED)
        d.polygon([(c - r * 0.6, c - r * 0.45), (c + r * 0.6, c - r * 0.45), (c, c + r * 0.55)], fill=WHITE)
    elif kind == "caution":  # point up, with "!"
        d.polygon([(c - r, c + r * 0.7), (c + r, c + r * 0.7), (c, c - r)], fill=RED)
        d.polygon([(c - r * 0.6, c + r * 0.45), (c + r * 0.6, c + r * 0.45), (c, c - r * 0.55)], fill=WHITE)
        d.text((c, c + r * 0.1), "!", fill=BLACK, font=font, anchor="mm")
    elif kind == "ahead":  # blue disc, white arrow up
        d.ellipse(box, fill=BLUE)
        w = r * 0.18
        d.rectangle([c - w, c - r * 0.2, c + w, c + r * 0.6], fill=WHITE)
        d.polygon([(c - r * 0.5, c - r * 0.1), (c + r * 0.5, c - r * 0.1), (c, c - r * 0.65)], fill=WHITE)
    else:
        raise ValueError(f"no drawing for the sign {kind!r}")
    return img


def draw_land(kind: str, v: int, size: int) -> Image.Image:
    """A flat-coloured aerial view of a land cover or scene (EuroSAT, RESISC45; variant `v`: layout)."""
    s, o = size / 8, v * size / 16  # a grid step and an offset that moves the layout between variants
    grass, water, sand, asphalt = (90, 140, 60), (40, 90, 160), (225, 205, 150), (110, 110, 115)
    background = {"forest": (30, 80, 35), "sea or lake": water, "beach": sand, "parking_lot": asphalt}
    img = Image.new("RGB", (size, size), background.get(kind, grass))
    d = ImageDraw.Draw(img)
    if kind == "forest":  # tree crowns
        for i in range(8):
            for j in range(8):
                if (i * 3 + j * 5 + v) % 4:
                    d.ellipse([i * s, j * s, i * s + s * 0.9, j * s + s * 0.9], fill=(20, 60 + 10 * ((i + j) % 3), 25))
    elif kind == "sea or lake":  # ripples
        for j in range(1, 8, 2):
            d.line([(0, j * s + o), (size, j * s + o)], fill=(70, 120, 190), width=max(1, size // 32))
    elif kind in ("river", "lake"):
        if kind == "river":
            pts = [(x * s, size / 2 + (s * 1.5 if (x + v) % 2 else -s * 1.5)) for x in range(9)]
            d.line(pts, fill=water, width=int(s))
        else:
            d.ellipse([s + o, s * 1.5, size - s * 2 + o, size - s], fill=water)
    elif kind in ("highway", "runway"):
        d.rectangle([0, size / 2 - s, size, size / 2 + s], fill=asphalt)
        for x in range(v % 2, 8, 2):
            d.rectangle([x * s, size / 2 - s / 8, x * s + s * 0.6, size / 2 + s / 8], fill=WHITE)
    elif kind == "residential":  # houses with red roofs along streets
        for i in range(0, 8, 2):
            d.rectangle([0, i * s + o, size, i * s + s * 0.3 + o], fill=asphalt)
            for j in range(8):
                d.rectangle([j * s + 1, i * s + s * 0.5 + o, j * s + s * 0.8, i * s + s * 1.5 + o], fill=(180, 60, 50))
    elif kind == "annual crop":  # field strips
        for i in range(8):
            colour = (200, 190, 80) if (i + v) % 2 else (120, 160, 60)
            d.rectangle([i * s, 0, (i + 1) * s, size], fill=colour)
    elif kind == "beach":
        d.rectangle([0, 0, size, size * (0.4 + 0.1 * v)], fill=water)
        d.line([(0, size * (0.4 + 0.1 * v)), (size, size * (0.4 + 0.1 * v))], fill=WHITE, width=max(2, size // 40))
    elif kind == "circular_farmland":
        img.paste((150, 120, 80), (0, 0, size, size))
        for cx, cy in ((size * 0.3, size * 0.3), (size * 0.7, size * 0.7), (size * 0.3 + o, size * 0.72)):
            d.ellipse([cx - s * 1.3, cy - s * 1.3, cx + s * 1.3, cy + s * 1.3], fill=(70, 150, 50))
    elif kind == "parking_lot":  # rows of cars
        colours = [(200, 30, 30), WHITE, (30, 30, 30), (40, 80, 180)]
        for i in range(1, 8, 2):
            for j in range(8):
                d.rectangle([j * s + s * 0.2, i * s, j * s + s * 0.7, i * s + s * 0.9], fill=colours[(i + j + v) % 4])
    else:
        raise ValueError(f"no drawing for the scene {kind!r}")
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
    gtsrb = class_names("gtsrb")
    signs = [(name, v) for name in GTSRB_STAND_INS for v in range(3)]
    write(
        "gtsrb",
        [draw_sign(GTSRB_STAND_INS[name], v) for name, v in signs],
        [gtsrb.index(name) for name, _ in signs],
        gtsrb,
    )
    for dataset, kinds, size in (("eurosat", EUROSAT_STAND_INS, 64), ("resisc45", RESISC45_STAND_INS, 256)):
        names = class_names(dataset)
        scenes = [(kind, v) for kind in kinds for v in range(3)]
        write(dataset, [draw_land(kind, v, size) for kind, v in scenes], [names.index(k) for k, _ in scenes], names)
    for p in sorted(OUT.glob("*.parquet")):
        print(f"{p.relative_to(REPO)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
