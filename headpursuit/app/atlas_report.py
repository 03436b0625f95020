"""What a head atlas writes (`python -m headpursuit.app.atlas`): the files of its run directory,
the W&B mirror and its results.json record.

    files, overlap, profile, images = write_outputs(run_dir, atlas, lm, acts, conf.atlas, rows_info, plots=True)
    rec.atlas = AtlasOutcome(model=lm.name, concepts=concept_summary(atlas, top_k), ...)
    write_record(run_dir, rec)                  # rec: an AtlasRecord, results.json

Files: atlas.csv (one row per head: top tokens and their gains, a score per concept, the largest
random score, the beyond-random flag, the specialisation index, the model's notes), atlas.md (the
top heads per concept with their SOMP and logit-lens tokens, the specialists, the overlap),
overlap.csv (Jaccard of the top-k head sets), atlas_layers.csv (concepts x layers), and the heat
maps atlas_<concept>.png, atlas_layers.png, overlap.png. results.json is a run's record
(`headpursuit.app.results.RunRecord`: status, config, run, heartbeat, tracking, error) with
``kind: atlas`` and the atlas's outcome (`AtlasOutcome`) at the top level in place of a steer run's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from headpursuit.app.files import write_csv_atomic, write_text_atomic
from headpursuit.app.results import ResultsError, RunRecord
from headpursuit.app.timer import Timer
from headpursuit.app.tracker import Tracker
from headpursuit.atlas import HeadAtlas, logit_lens_tokens
from headpursuit.ranking.inputs import format_tokens

if TYPE_CHECKING:
    from headpursuit.app.schema import AtlasConfig
    from headpursuit.capture import HeadActivations
    from headpursuit.models import LoadedModel

__all__ = [
    "ATLAS_CSV",
    "ATLAS_MD",
    "ATLAS_KIND",
    "OVERLAP_CSV",
    "OVERLAP_PNG",
    "LAYERS_CSV",
    "LAYERS_PNG",
    "CONCEPT_PNG",
    "AtlasOutcome",
    "AtlasRecord",
    "ConceptSummary",
    "atlas_csv_table",
    "atlas_markdown",
    "concept_summary",
    "layer_profile",
    "model_notes",
    "table_heads",
    "track",
    "write_outputs",
    "write_plots",
]

ATLAS_CSV = "atlas.csv"
ATLAS_MD = "atlas.md"
OVERLAP_CSV = "overlap.csv"
OVERLAP_PNG = "overlap.png"
LAYERS_CSV = "atlas_layers.csv"
LAYERS_PNG = "atlas_layers.png"
#: the per-concept heat map: atlas_<concept>.png
CONCEPT_PNG = "atlas_{}.png"
#: results.json `kind` of an atlas (a steer run's record has none)
ATLAS_KIND = "atlas"
#: what atlas.md says of each control pool (`headpursuit.atlas.CONTROL_POOLS`)
POOL_TEXT = {
    "matched": "as many tokens of each form (a leading space then letters, capitalised, lower-case, other) as the "
    "concept has",
    "vocab": "uniform over the vocabulary",
}


# ----------------------------------------------------------------------------------------------
# files


def model_notes(lm: LoadedModel) -> list[str]:
    return [str(n) for n in lm.provenance.get("notes") or []]


def atlas_csv_table(atlas: HeadAtlas, lm: LoadedModel) -> pd.DataFrame:
    """atlas.csv: the atlas table with the model and its notes (quantised, RANDOM-INITIALISED) on
    every row, so the file says what it describes wherever it is copied."""
    table = atlas.table.copy()
    table.insert(0, "model", lm.name)
    table["model_notes"] = "; ".join(model_notes(lm))
    return table


def layer_profile(atlas: HeadAtlas) -> pd.DataFrame:
    """concepts x layers: the sum of each concept's scores over the heads of each layer."""
    layers = atlas.pursuit.layers
    per_layer = atlas.scores.reshape(len(atlas.concepts), len(layers), atlas.pursuit.n_heads).sum(dim=2)
    m = pd.DataFrame(per_layer.numpy(), index=atlas.concepts, columns=layers)
    m.index.name = "concept"
    m.columns.name = "layer"
    return m


def _fmt(v: float, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _token_gains(atlas: HeadAtlas, row: int, tokenizer: Any, n: int) -> str:
    idx = atlas.pursuit.indices[row, :n].tolist()
    gains = atlas.pursuit.gains[row, :n].tolist()
    return ", ".join(f"{format_tokens(tokenizer, [i])} {g:.3f}" for i, g in zip(idx, gains) if i >= 0)


def _share_line(atlas: HeadAtlas, c_i: int) -> str:
    """How many heads have a share of the concept, against random token sets of its size."""
    n_share = int(atlas.heads_with_share[c_i])
    n_beyond = int(atlas.beyond_random[c_i].sum())
    text = f"{n_share} heads have a share of it, {n_beyond} of them beyond every random token set"
    draws = atlas.random_heads_with_share[c_i]
    if draws.numel():
        text += (
            f"; a random token set of the same size has a share in {float(draws.float().mean()):.1f} heads on "
            f"average (at most {int(draws.max())}, {draws.numel()} sets)"
        )
    return text + "."


def table_heads(atlas: HeadAtlas, n: int) -> dict[str, list[tuple[int, int]]]:
    """{concept: its n best heads} (the rows of atlas.md)."""
    return {c: atlas.top_heads(c, n) for c in atlas.concepts}


def atlas_markdown(
    atlas: HeadAtlas,
    lm: LoadedModel,
    *,
    lens: Mapping[tuple[int, int], list[int]],
    shown: Mapping[str, list[tuple[int, int]]],
    overlap: pd.DataFrame,
    top_k: int,
    n_tokens: int,
    lens_top: int,
    rows_info: str,
) -> str:
    """atlas.md: per concept its best heads with their SOMP tokens (the paper's Table 1) and their
    logit-lens tokens (Table 6) side by side; the specialists; the overlap matrix."""
    tok = lm.tokenizer
    heads = atlas.pursuit.heads
    row_of = {h: i for i, h in enumerate(heads)}
    beyond = atlas.beyond_random
    meta = atlas.meta
    lines = [f"# Head atlas: {lm.name}", ""]
    for note in model_notes(lm):
        lines.append(f"> **{note}**")
    if model_notes(lm):
        lines.append("")
    lines += [
        rows_info,
        "",
        f"One full-vocabulary SOMP per head ({meta['somp_steps']} steps; {meta['somp_runs']} SOMP runs for "
        f"{len(atlas.concepts)} concepts and {meta['n_draws']} random token sets per concept). A concept's score: the "
        "explained-variance gain of the steps whose token is one of the concept's (concept_share). Beyond random: "
        f"the score is > 0 and above all {meta['n_draws']} random token sets of the concept's size (pool "
        f"`{meta['pool']}`: {POOL_TEXT[meta['pool']]}; never the concept's own; seed {meta['seed']}) for that "
        "head.",
        "",
        "## Top heads per concept",
        "",
    ]
    for c_i, concept in enumerate(atlas.concepts):
        lines += [f"### {concept} ({meta['concept_sizes'][concept]} tokens)", "", _share_line(atlas, c_i), ""]
        if not shown[concept]:
            lines += ["No head selected one of its tokens.", ""]
            continue
        lines += [
            "| head | score | random max | beyond random | specialisation | SOMP tokens (gain) | "
            f"logit lens (most frequent top-{lens_top}) |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in shown[concept]:
            r = row_of[h]
            rand = atlas.random_scores[c_i, :, r]
            rand_max = _fmt(float(rand.max())) if rand.numel() else ""
            lines.append(
                f"| L{h[0]}.H{h[1]} | {_fmt(float(atlas.scores[c_i, r]))} | {rand_max} | "
                f"{'yes' if bool(beyond[c_i, r]) else 'no'} | {_fmt(float(atlas.index[r]), 2)} | "
                f"{_md_cell(_token_gains(atlas, r, tok, n_tokens))} | {_md_cell(format_tokens(tok, lens.get(h, [])))} |"
            )
        lines.append("")
    spec = atlas.table[atlas.table["specialist"] != ""]
    lines += [
        "## Specialists",
        "",
        "Specialisation index of a head: its largest concept score over the score of the union of the concepts' "
        "tokens (for disjoint concepts: over the sum of its concept scores); undefined for a head none of whose "
        f"SOMP tokens is a concept token ({len(heads) - len(spec)} of {len(heads)} heads).",
        "",
        "| concept | heads it leads | of which index >= 0.9 | of which beyond random |",
        "|---|---|---|---|",
    ]
    for c_i, concept in enumerate(atlas.concepts):
        lead = atlas.specialist == c_i
        strong = lead & (atlas.index >= 0.9)
        lines.append(f"| {concept} | {int(lead.sum())} | {int(strong.sum())} | {int((strong & beyond[c_i]).sum())} |")
    lines += ["", f"## Overlap: Jaccard of the top-{top_k} head sets", ""]
    lines.append("| | " + " | ".join(overlap.columns) + " |")
    lines.append("|---" * (len(overlap.columns) + 1) + "|")
    for name, row in overlap.iterrows():
        lines.append(f"| {name} | " + " | ".join(_fmt(float(v), 2) for v in row) + " |")
    lines.append("")
    return "\n".join(lines)


def write_plots(
    run_dir: Path, atlas: HeadAtlas, lm: LoadedModel, overlap: pd.DataFrame, profile: pd.DataFrame, top_k: int
) -> dict[str, Path]:
    """The heat maps: layers x heads per concept, concepts x layers, the overlap matrix."""
    from headpursuit.app import plots  # matplotlib only when plots are made

    notes = "; ".join(model_notes(lm))
    suffix = f"\n{notes}" if notes else ""
    out: dict[str, Path] = {}
    L, H = lm.layout.n_layers, lm.layout.n_heads
    for c_i, concept in enumerate(atlas.concepts):
        table = atlas.table[["layer", "head"]].assign(score=atlas.scores[c_i].numpy())
        out[f"atlas_{concept}"] = plots.score_heatmap(
            table,
            L,
            H,
            run_dir / CONCEPT_PNG.format(concept),
            title=f"{lm.name} | {concept}: concept_share score from the shared SOMP{suffix}",
        )
    out["atlas_layers"] = plots.concept_layer_heatmap(
        profile, run_dir / LAYERS_PNG, title=f"{lm.name}: where each concept is written{suffix}"
    )
    out["overlap"] = plots.matrix_heatmap(
        overlap,
        run_dir / OVERLAP_PNG,
        title=f"{lm.name}: Jaccard of the top-{top_k} head sets{suffix}",
        label="Jaccard",
        vmax=1.0,
    )
    return out


def write_outputs(
    run_dir: Path,
    atlas: HeadAtlas,
    lm: LoadedModel,
    acts: HeadActivations,
    atlas_cfg: AtlasConfig,
    rows_info: str,
    *,
    plots: bool,
    timer: Timer | None = None,
) -> tuple[dict[str, Path], pd.DataFrame, pd.DataFrame, dict[str, Path]]:
    """Every file of an atlas in `run_dir` (atlas.csv, atlas.md with the logit-lens description of
    its heads, overlap.csv, atlas_layers.csv, and with `plots` the heat maps). Returns (files by
    name, the overlap matrix, the concepts x layers profile, the images by name)."""
    timer = timer or Timer()
    top_k = atlas_cfg.top_k
    with timer("logit_lens"):
        shown = table_heads(atlas, atlas_cfg.table_heads)
        lens = logit_lens_tokens(
            acts,
            lm,
            [h for hs in shown.values() for h in hs],
            per_row=atlas_cfg.lens_top,
            n_most=atlas_cfg.lens_top,
            fold_norm_gain=atlas_cfg.somp.fold_norm_gain,
            normalize_atoms=atlas_cfg.somp.normalize_atoms,
        )
    with timer("outputs"):
        overlap = atlas.overlap(top_k)
        profile = layer_profile(atlas)
        files = {
            "atlas_csv": write_csv_atomic(atlas_csv_table(atlas, lm), run_dir / ATLAS_CSV),
            "overlap_csv": write_csv_atomic(overlap.reset_index(), run_dir / OVERLAP_CSV),
            "layers_csv": write_csv_atomic(profile.reset_index(), run_dir / LAYERS_CSV),
        }
        md = atlas_markdown(
            atlas,
            lm,
            lens=lens,
            shown=shown,
            overlap=overlap,
            top_k=top_k,
            n_tokens=atlas_cfg.top_tokens,
            lens_top=atlas_cfg.lens_top,
            rows_info=rows_info,
        )
        files["atlas_md"] = write_text_atomic(run_dir / ATLAS_MD, md)
    images: dict[str, Path] = {}
    if plots:
        with timer("plots"):
            images = write_plots(run_dir, atlas, lm, overlap, profile, top_k)
    return {**files, **images}, overlap, profile, images


def _draw_stats(counts: Any) -> dict[str, float] | None:
    if counts.numel() == 0:
        return None
    return {"mean": float(counts.float().mean()), "max": int(counts.max()), "min": int(counts.min())}


def concept_summary(atlas: HeadAtlas, k: int) -> dict[str, ConceptSummary]:
    """results.json `concepts`: per concept its token count, top-k heads, heads beyond random."""
    beyond = atlas.beyond_random
    heads = atlas.pursuit.heads
    return {
        concept: ConceptSummary(
            n_tokens=atlas.meta["concept_sizes"][concept],
            top_heads=[list(h) for h in atlas.top_heads(concept, k)],
            n_heads_with_share=int(atlas.heads_with_share[c_i]),
            random_heads_with_share=_draw_stats(atlas.random_heads_with_share[c_i]),
            beyond_random=[list(heads[i]) for i in beyond[c_i].nonzero().flatten().tolist()],
            n_specialist=int((atlas.specialist == c_i).sum()),
        )
        for c_i, concept in enumerate(atlas.concepts)
    }


def overlap_json(overlap: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """results.json `overlap`: the matrix as {concept: {concept: Jaccard}}, null where undefined."""
    return {a: {b: _json_float(v) for b, v in row.items()} for a, row in overlap.to_dict("index").items()}


def _json_float(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def track(
    tracker: Tracker,
    atlas: HeadAtlas,
    overlap: pd.DataFrame,
    profile: pd.DataFrame,
    images: Mapping[str, Path],
    outcome: AtlasOutcome,
) -> None:
    """Mirror the atlas to W&B: the tables, the heat maps and a summary."""
    tracker.log_table("atlas", atlas.table)
    tracker.log_table("overlap", overlap.reset_index())
    tracker.log_table("atlas_layers", profile.reset_index().rename(columns=str))
    for name, path in images.items():
        tracker.log_image(name, path)
    tracker.log_summary(
        {
            "somp_runs": outcome.somp_runs,
            **{f"beyond_random/{c}": len(s.beyond_random) for c, s in outcome.concepts.items()},
            **{f"specialists/{c}": s.n_specialist for c, s in outcome.concepts.items()},
        }
    )


# ----------------------------------------------------------------------------------------------
# results.json


@dataclass(frozen=True)
class ConceptSummary:
    """results.json `concepts.<name>`: the concept's token count, its top-k heads, how many heads
    have a share of it (and of its random token sets: mean, max, min over the draws; None without
    draws), the heads beyond every random set, and how many heads it is the specialist of."""

    n_tokens: int
    top_heads: list[list[int]]
    n_heads_with_share: int
    random_heads_with_share: dict[str, float] | None
    beyond_random: list[list[int]]
    n_specialist: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConceptSummary:
        return cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class AtlasOutcome:
    """What an atlas found, written at the top level of results.json: the model, per concept its
    `ConceptSummary`, the overlap's k and matrix (null where undefined), the number of SOMP runs
    (one per head), the control (draws, pool, pool size, seed), the files written (by name) and
    the provenance (model with its notes and layout, prompts, environment, seeds, code
    fingerprint, rows, positions, the SOMP's options, cache hits, timings: a free-form dict)."""

    model: str
    concepts: dict[str, ConceptSummary]
    top_k: int
    overlap: dict[str, dict[str, float | None]]
    somp_runs: int
    control: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "concepts": {name: c.to_json() for name, c in self.concepts.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AtlasOutcome:
        return cls(
            **{f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name != "concepts"},
            concepts={name: ConceptSummary.from_json(c) for name, c in obj["concepts"].items()},
        )


@dataclass
class AtlasRecord(RunRecord):
    """results.json of an atlas: a run's record (its status, config and hash, run info, heartbeat,
    W&B status and error, written and read as `RunRecord` writes and reads them; no steer
    `outcome`), ``kind: atlas``, and the `AtlasOutcome` once the atlas is made."""

    atlas: AtlasOutcome | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        tail: dict[str, Any] = {key: out.pop(key) for key in ("tracking", "error") if key in out}
        out["kind"] = ATLAS_KIND
        if self.atlas is not None:
            out.update(self.atlas.to_json())
        return {**out, **tail}

    @classmethod
    def read(cls, path: str | os.PathLike) -> AtlasRecord | None:
        """The atlas record in `path` (see `RunRecord.read`); ResultsError for another kind of record."""
        rec = super().read(path)
        assert rec is None or isinstance(rec, AtlasRecord)
        return rec

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AtlasRecord:
        """The record of an atlas's results.json; ResultsError for a file that is not one."""
        if obj.get("kind") != ATLAS_KIND:
            raise ResultsError(f"not an atlas record (kind {obj.get('kind')!r}, not {ATLAS_KIND!r})")
        base = RunRecord.from_json(obj)
        try:
            atlas = AtlasOutcome.from_json(obj) if "somp_runs" in obj else None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ResultsError(f"not an atlas record this version reads ({type(exc).__name__}: {exc})") from exc
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(RunRecord)}, atlas=atlas)
