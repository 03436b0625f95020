"""Which heads to edit: parse and check head lists, draw random heads, pick the top-k of a ranking.

A head is `(layer, head)` (`Head`, defined by the intervention room that edits it). Everything here takes plain arguments (no config dicts); the messages
name the config keys a user sets, because these are the checks a run's configuration goes through.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError
from headpursuit.intervention import Head

if TYPE_CHECKING:
    import pandas as pd

    from headpursuit.ranking import HeadScores

__all__ = [
    "Head",
    "HEAD_MODES",
    "RANDOM_POOLS",
    "parse_heads",
    "check_heads",
    "random_heads",
    "ControlDraw",
    "check_layer_counts_k",
    "layer_count_draw",
    "random_control_draw",
    "possible_control_sets",
    "distinct_control_draws",
    "MAX_REDRAWS",
    "select_heads",
    "head_records",
]

#: how the edited heads are chosen: top-k of the ranking, k random heads, or a given list
HEAD_MODES = ("ranked", "random", "explicit")
#: where the random-head controls are drawn from: every head (ours), the edited heads' layers
#: (ours), or exactly the edited set's per-layer counts, disjoint from it (the paper's protocol)
RANDOM_POOLS = ("all", "same_layers", "layer_counts")


def parse_heads(spec: Iterable[Any]) -> list[Head]:
    """[[layer, head], ...], ["layer.head", ...] or ["layer:head", ...] -> [(layer, head), ...]."""
    out: list[Head] = []
    for item in spec:
        try:
            if isinstance(item, str):
                a, b = item.replace(":", ".").split(".")
            else:
                a, b = item
            out.append((int(a), int(b)))
        except (TypeError, ValueError):
            raise ConfigError(
                f"intervention.explicit: cannot read head {item!r}; use [layer, head] or 'layer.head'"
            ) from None
    return out


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, key: str = "intervention.explicit") -> None:
    """Raise ConfigError (naming `key`) if a head is outside the model's layers x heads."""
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ConfigError(f"{key}: heads {bad} do not exist (layers 0..{n_layers - 1}, heads 0..{n_heads - 1})")


def _stream(kind: str, seed: int, redraw: int) -> str:
    """The string a draw's generator is seeded with: stable on every platform and Python version; a
    redraw (`distinct_control_draws`) gets a stream of its own, the first draw today's."""
    return f"{kind}:{seed}" if redraw == 0 else f"{kind}:{seed}:redraw{redraw}"


def random_heads(
    n_layers: int,
    n_heads: int,
    k: int,
    seed: int,
    exclude: Iterable[Head] = (),
    layers: Iterable[int] | None = None,
    *,
    redraw: int = 0,
) -> list[Head]:
    """k distinct heads drawn uniformly (seeded, platform-stable), sorted by (layer, head).

    `layers` restricts the draw to those layers (a layer-matched control), `exclude` removes heads;
    `redraw` > 0 draws from another stream of the same seed.
    """
    excluded = {(int(a), int(b)) for a, b in exclude}
    allowed = range(n_layers) if layers is None else sorted({int(x) for x in layers})
    pool = [(layer, h) for layer in allowed for h in range(n_heads) if (layer, h) not in excluded]
    if k > len(pool):
        where = "" if layers is None else f" in layers {list(allowed)} (intervention.random_pool=same_layers)"
        raise ConfigError(
            f"intervention.k={k} exceeds the {len(pool)} heads available for random "
            f"draws{where}; lower k or use intervention.random_pool=all"
        )
    return sorted(random.Random(_stream("heads", seed, redraw)).sample(pool, k))


@dataclass(frozen=True)
class ControlDraw:
    """One random-head control set: its seed, its heads (sorted by (layer, head)) and, when a
    `layer_counts` set had to borrow, ``borrowed = {short layer: {source layer: n heads}}`` (empty
    when every layer supplied its own count)."""

    seed: int
    heads: list[Head]
    borrowed: dict[int, dict[int, int]] = field(default_factory=dict)
    #: 0: the seed's first draw; n: its n-th redraw, because the earlier ones repeated another set
    redraw: int = 0

    @property
    def shortfall(self) -> dict[int, int]:
        """{short layer: heads it could not supply itself} (what was borrowed for it)."""
        return {layer: sum(src.values()) for layer, src in self.borrowed.items()}


def check_layer_counts_k(k: int, n_total: int) -> None:
    """ConfigError naming intervention.k unless the model's `n_total` heads hold k heads outside k
    edited ones (2k <= n_total), which a layer_counts random set needs."""
    if 2 * k > n_total:
        raise ConfigError(
            f"intervention.k={k}: a layer_counts random set needs {k} heads outside the edited ones, but the "
            f"model has only {n_total} heads; lower intervention.k to at most {n_total // 2} or use "
            "intervention.random_pool=all"
        )


def _layer_count_error(layer: int, need: int, free: int, n_heads: int) -> ConfigError:
    return ConfigError(
        f"intervention.random_pool=layer_counts: layer {layer} holds {need} edited heads, so a "
        f"disjoint random set needs {need} other heads there, but only {free} of its "
        f"{n_heads} heads remain; use intervention.random_strict=false (borrow the missing heads from "
        "the nearest layers), intervention.random_pool=all (or same_layers) or lower intervention.k"
    )


def _nearest_heads(
    layer: int, n: int, n_layers: int, n_heads: int, unavailable: set[Head], rng: random.Random
) -> list[Head]:
    """n heads from the layers nearest `layer`: distance 1 (layer-1 and layer+1, one pool), then 2,
    ...; uniform within a distance; none of `unavailable`."""
    got: list[Head] = []
    for d in range(1, n_layers):
        ring = [
            (src, h)
            for src in (layer - d, layer + d)
            if 0 <= src < n_layers
            for h in range(n_heads)
            if (src, h) not in unavailable
        ]
        got += rng.sample(ring, min(n - len(got), len(ring)))
        if len(got) == n:
            break
    return got


def layer_count_draw(
    selected: Sequence[Head], n_layers: int, n_heads: int, seed: int, *, strict: bool = False, redraw: int = 0
) -> ControlDraw:
    """A random head set with the per-layer counts of `selected`, disjoint from it (the paper's
    random control), sorted by (layer, head).

    One seeded, platform-stable generator serves the whole draw:

    1. Layer by layer (ascending), every layer with at least as many other heads as edited ones
       gets that many drawn uniformly from them. Layers that can are drawn exactly as if the short
       ones were not in `selected` (so a set that needs no borrowing is today's draw).
    2. A short layer (more edited heads than other heads: more than half of its heads edited)
       takes all of its other heads, and is recorded in `borrowed`.
    3. Short layers in ascending order then borrow what they lack from the nearest layers: the
       heads of the layers at distance 1 (L-1 and L+1 as one pool, so neither side is preferred),
       then distance 2, ..., drawn uniformly from each pool; never an edited head, never one already
       in the set.

    `strict=True` (config `intervention.random_strict`) raises the ConfigError of a short layer
    instead. ConfigError naming intervention.k when the model has fewer than 2k heads (no k heads
    disjoint from the k edited ones).
    """
    chosen = {(int(a), int(b)) for a, b in selected}
    counts = Counter(layer for layer, _ in chosen)
    free = {layer: [(layer, h) for h in range(n_heads) if (layer, h) not in chosen] for layer in counts}
    short = sorted(layer for layer in counts if counts[layer] > len(free[layer]))
    if short and strict:
        layer = short[0]
        raise _layer_count_error(layer, counts[layer], len(free[layer]), n_heads)
    check_layer_counts_k(len(chosen), n_layers * n_heads)
    rng = random.Random(_stream("layer_counts", seed, redraw))
    out: list[Head] = []
    for layer in sorted(counts):
        if layer not in short:
            out += rng.sample(free[layer], counts[layer])
    taken = set(out).union(*(free[layer] for layer in short))  # a short layer keeps all its other heads
    borrowed: dict[int, dict[int, int]] = {}
    for layer in short:
        got = _nearest_heads(layer, counts[layer] - len(free[layer]), n_layers, n_heads, chosen | taken, rng)
        taken.update(got)
        borrowed[layer] = dict(sorted(Counter(src for src, _ in got).items()))
    return ControlDraw(int(seed), sorted(taken), borrowed, redraw)


def random_control_draw(
    edited: Sequence[Head],
    n_layers: int,
    n_heads: int,
    k: int,
    seed: int,
    pool: str = "all",
    *,
    strict: bool = False,
    redraw: int = 0,
) -> ControlDraw:
    """The random-head control for one seed: k heads from `all` heads; or (`same_layers`) k heads
    from the edited heads' layers without the edited heads themselves; or (`layer_counts`, the
    paper's) the edited set's per-layer counts, disjoint from it (k is then len(edited); short
    layers borrow from the nearest ones unless `strict`, see `layer_count_draw`). `redraw` > 0:
    another draw of the same seed (`distinct_control_draws`)."""
    if pool == "layer_counts":
        return layer_count_draw(edited, n_layers, n_heads, seed, strict=strict, redraw=redraw)
    if pool == "same_layers":
        layers = {a for a, _ in edited}
        heads = random_heads(n_layers, n_heads, k, seed, exclude=edited, layers=layers, redraw=redraw)
        return ControlDraw(int(seed), heads, redraw=redraw)
    return ControlDraw(int(seed), random_heads(n_layers, n_heads, k, seed, redraw=redraw), redraw=redraw)


def possible_control_sets(edited: Sequence[Head], n_layers: int, n_heads: int, k: int, pool: str) -> int | None:
    """How many distinct sets `pool` holds: C(all heads, k); C(the edited layers' other heads, k)
    (same_layers); the product over the edited layers of C(its other heads, its edited count)
    (layer_counts). None for a layer_counts set whose short layers borrow (not counted)."""
    chosen = {(int(a), int(b)) for a, b in edited}
    counts = Counter(layer for layer, _ in chosen)
    if pool == "layer_counts":
        free = {layer: n_heads - n for layer, n in counts.items()}
        if any(n > free[layer] for layer, n in counts.items()):
            return None
        return math.prod(math.comb(free[layer], n) for layer, n in counts.items())
    if pool == "same_layers":
        return math.comb(len(counts) * n_heads - len(chosen), k)
    return math.comb(n_layers * n_heads, k)


#: redraws a seed may take to find a set unlike the earlier ones before the pool counts as exhausted
MAX_REDRAWS = 200


def distinct_control_draws(
    edited: Sequence[Head],
    n_layers: int,
    n_heads: int,
    k: int,
    seeds: Sequence[int],
    pool: str = "all",
    *,
    strict: bool = False,
) -> tuple[list[ControlDraw], int | None]:
    """One random set per seed (`random_control_draw`), no two alike: a seed whose draw repeats an
    earlier set draws again from its next stream (`ControlDraw.redraw`). Where the pool holds fewer
    distinct sets than seeds (`possible_control_sets`), every one of them is used and the later
    seeds get none; a borrowing layer_counts pool (not counted) counts as exhausted when a seed finds
    nothing new in `MAX_REDRAWS` redraws. Returns the sets and the number the pool holds (None:
    not counted)."""
    possible = possible_control_sets(edited, n_layers, n_heads, k, pool)
    draws: list[ControlDraw] = []
    seen: set[tuple[Head, ...]] = set()
    for seed in seeds:
        if possible is not None and len(seen) >= possible:
            break
        for redraw in range(MAX_REDRAWS + 1):
            draw = random_control_draw(edited, n_layers, n_heads, k, int(seed), pool, strict=strict, redraw=redraw)
            if tuple(draw.heads) not in seen:
                seen.add(tuple(draw.heads))
                draws.append(draw)
                break
        else:
            break  # nothing new in MAX_REDRAWS redraws: the pool is spent
    return draws, possible


def select_heads(
    scores: HeadScores | None,
    mode: str,
    k: int,
    n_layers: int,
    n_heads: int,
    seed: int = 0,
    explicit: Iterable[Any] = (),
) -> list[Head]:
    """The heads to edit: top-k of `scores` (ranked), k random heads (random) or `explicit`."""
    if mode == "ranked":
        if scores is None:
            raise ValueError("select_heads(mode='ranked') needs the head scores")
        return [(int(a), int(b)) for a, b in scores.top(k)]
    if mode == "random":
        return random_heads(n_layers, n_heads, k, seed)
    if mode == "explicit":
        heads = parse_heads(explicit)
        check_heads(heads, n_layers, n_heads)
        return heads
    raise ConfigError(f"intervention.heads={mode!r} is not one of {', '.join(HEAD_MODES)}")


def head_records(heads: Sequence[Head], table: pd.DataFrame | None = None) -> list[dict]:
    """[{layer, head, score, rank}] for results.json (score/rank from the score table if given)."""
    lookup = {}
    if table is not None:
        for row in table.itertuples(index=False):
            lookup[(int(row.layer), int(row.head))] = row
    out = []
    for layer, h in heads:
        rec: dict[str, Any] = {"layer": int(layer), "head": int(h)}
        row = lookup.get((int(layer), int(h)))
        if row is not None:
            rec["score"] = float(row.score)
            rec["rank"] = int(row.rank)
        out.append(rec)
    return out
