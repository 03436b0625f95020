"""HeadScores: one concept's score for every head, ranked, with CSV round trip."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

__all__ = ["COLUMNS", "HeadScores", "score_table"]

COLUMNS = ["layer", "head", "score", "rank", "top_tokens", "explained_variance"]


@dataclass
class HeadScores:
    """Head scores for one concept and method. ``table`` is sorted by rank (1 = best)."""

    table: pd.DataFrame
    method: str
    meta: dict = field(default_factory=dict)

    def top(self, k: int) -> list[tuple[int, int]]:
        """The k best heads as (layer, head)."""
        if int(k) < 0:
            raise ValueError(f"top(k) needs k >= 0; got {k}")
        t = self.table.sort_values("rank", kind="stable").head(int(k))
        return [(int(a), int(b)) for a, b in zip(t["layer"], t["head"])]

    def score_of(self, layer: int, head: int) -> float:
        row = self.table[(self.table["layer"] == layer) & (self.table["head"] == head)]
        if row.empty:
            raise KeyError(f"no head ({layer}, {head}) in these scores")
        return float(row["score"].iloc[0])

    def as_grid(self, n_layers: int | None = None, n_heads: int | None = None) -> torch.Tensor:
        """Scores as a (layers, heads) tensor (NaN where a head was not scored)."""
        L = int(n_layers if n_layers is not None else self.table["layer"].max() + 1)
        H = int(n_heads if n_heads is not None else self.table["head"].max() + 1)
        grid = torch.full((L, H), float("nan"), dtype=torch.float64)
        for a, b, s in zip(self.table["layer"], self.table["head"], self.table["score"]):
            grid[int(a), int(b)] = float(s)
        return grid

    def to_csv(self, path: str | Path) -> Path:
        """Write the table to ``path`` and method + meta to ``<path>.meta.json`` (both atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        self.table.to_csv(tmp, index=False)
        os.replace(tmp, path)
        mpath = path.with_name(path.name + ".meta.json")
        tmp = mpath.with_name(mpath.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"method": self.method, "meta": self.meta}, default=str, indent=1))
        os.replace(tmp, mpath)
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> HeadScores:
        path = Path(path)
        table = pd.read_csv(
            path,
            keep_default_na=False,
            na_values={"score": ["", "nan", "NaN"], "explained_variance": ["", "nan", "NaN"]},
        )
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path} is not a head-scores CSV: missing columns {missing} (expected {COLUMNS})")
        table["top_tokens"] = table["top_tokens"].astype(str)
        method, meta = "unknown", {}
        mpath = path.with_name(path.name + ".meta.json")
        if mpath.exists():
            d = json.loads(mpath.read_text())
            method, meta = d.get("method", method), d.get("meta", {})
        return cls(table.sort_values("rank", kind="stable").reset_index(drop=True), method, meta)

    def __repr__(self) -> str:
        return f"HeadScores(method={self.method!r}, heads={len(self.table)}, top={self.top(5)})"


def score_table(
    layers: Sequence[int], n_heads: int, score: torch.Tensor, top_tokens: list[str], explained_variance: torch.Tensor
) -> pd.DataFrame:
    """The ranked table of HeadScores from per-head values flattened layer-major (len(layers) * n_heads).

    Ties are broken deterministically: higher score first, then lower layer, then lower head (NaN
    scores last); ``rank`` is 1 for the best head."""
    n_total = len(layers) * n_heads
    df = pd.DataFrame(
        {
            "layer": [int(layers[i // n_heads]) for i in range(n_total)],
            "head": [i % n_heads for i in range(n_total)],
            "score": score.detach().double().cpu().numpy(),
            "top_tokens": top_tokens,
            "explained_variance": explained_variance.detach().double().cpu().numpy(),
        }
    )
    df = df.sort_values(
        ["score", "layer", "head"], ascending=[False, True, True], kind="stable", na_position="last"
    ).reset_index(drop=True)
    df.insert(3, "rank", range(1, len(df) + 1))
    return df[COLUMNS]
