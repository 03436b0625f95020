"""Which heads to edit: parse and check head lists, draw random heads, pick the top-k of a ranking.

A head is `(layer, head)`. Everything here takes plain arguments (no config dicts); the messages
name the config keys a user sets, because these are the checks a run's configuration goes through.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError

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
    "layer_count_heads",
    "random_control_heads",
    "select_heads",
    "head_records",
]

Head = tuple[int, int]
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


def random_heads(
    n_layers: int, n_heads: int, k: int, seed: int, exclude: Iterable[Head] = (), layers: Iterable[int] | None = None
) -> list[Head]:
    """k distinct heads drawn uniformly (seeded, platform-stable), sorted by (layer, head).

    `layers` restricts the draw to those layers (a layer-matched control), `exclude` removes heads.
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
    # A string seed hashes the same on every platform and Python version.
    return sorted(random.Random(f"heads:{seed}").sample(pool, k))


def layer_count_heads(selected: Sequence[Head], n_heads: int, seed: int) -> list[Head]:
    """A random head set with exactly the per-layer counts of `selected`, disjoint from it (the
    paper's random control), sorted by (layer, head).

    Layer by layer (ascending), as many heads as `selected` has there are drawn uniformly from that
    layer's other heads; one seeded, platform-stable generator serves every layer of a draw.
    """
    chosen = {(int(a), int(b)) for a, b in selected}
    counts = Counter(layer for layer, _ in chosen)
    # A string seed hashes the same on every platform and Python version.
    rng = random.Random(f"layer_counts:{seed}")
    out: list[Head] = []
    for layer in sorted(counts):
        pool = [(layer, h) for h in range(n_heads) if (layer, h) not in chosen]
        need = counts[layer]
        if need > len(pool):
            raise ConfigError(
                f"intervention.random_pool=layer_counts: layer {layer} holds {need} edited heads, so a "
                f"disjoint random set needs {need} other heads there, but only {len(pool)} of its "
                f"{n_heads} heads remain; use intervention.random_pool=all (or same_layers) or lower "
                "intervention.k"
            )
        out += rng.sample(pool, need)
    return sorted(out)


def random_control_heads(
    edited: Sequence[Head], n_layers: int, n_heads: int, k: int, seed: int, pool: str = "all"
) -> list[Head]:
    """The random-head control for one seed: k heads from `all` heads; or (`same_layers`) k heads
    from the edited heads' layers without the edited heads themselves; or (`layer_counts`, the
    paper's) the edited set's per-layer counts, disjoint from it (k is then len(edited))."""
    if pool == "layer_counts":
        return layer_count_heads(edited, n_heads, seed)
    if pool == "same_layers":
        return random_heads(n_layers, n_heads, k, seed, exclude=edited, layers={a for a, _ in edited})
    return random_heads(n_layers, n_heads, k, seed)


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
