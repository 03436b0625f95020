"""Weights & Biases, optional: a mirror of the local record, never its truth.

W&B failing (not installed, no network, a broken service) never fails a run: the error is logged
as a warning and kept in `Tracker.status` (results.json `tracking`).

    tracker = Tracker(cfg.logger, run_dir=run_dir)
    tracker.start(config, group=..., name=..., job_type=...)
    tracker.log_metrics(flatten_metrics(results))
    tracker.log_table("head_scores", scores.table)
    tracker.log_image("head_scores_heatmap", path)
    tracker.finish(exit_code=0)
    results["tracking"] = tracker.status
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["RESULT_SECTIONS", "Tracker", "flatten_metrics"]


# `normalized` holds the same metrics over the unedited model's (edited/baseline, per-seed random).
RESULT_SECTIONS = ("baseline", "edited", "random", "normalized")


def flatten_metrics(results: Mapping[str, Any], sections=RESULT_SECTIONS, sep: str = "/") -> dict[str, float]:
    """`{"edited/concept/accuracy": 0.1, "random/std/concept/accuracy": ...}` from results.json."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k in ("examples", "per_seed", "heads", "n", "from_cache", "seeds", "relaxed_layers"):
                    continue
                walk(f"{prefix}{sep}{k}", v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)

    for s in sections:
        if isinstance(results.get(s), Mapping):
            walk(s, results[s])
    return out


class Tracker:
    """A W&B run per job, or nothing. Every method swallows its own errors (and says so)."""

    def __init__(self, logger_cfg: Mapping[str, Any] | None, run_dir: str | os.PathLike):
        cfg = dict(logger_cfg or {})
        self.backend = cfg.get("backend", "none")
        self.mode = cfg.get("mode", "offline")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run: Any = None
        self.status: dict[str, Any] = {"backend": self.backend, "mode": self.mode, "status": "off"}

    @property
    def active(self) -> bool:
        return self.run is not None

    def _fail(self, what: str, exc: BaseException) -> None:
        msg = f"W&B {what} failed ({type(exc).__name__}: {exc}); the run goes on without it"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        self.status.setdefault("errors", []).append(f"{what}: {type(exc).__name__}: {exc}")
        if what == "init":
            self.status["status"] = "failed"

    def start(
        self,
        config: Mapping[str, Any],
        *,
        group: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
    ) -> None:
        if self.backend != "wandb" or self.mode == "disabled":
            return
        try:
            import wandb

            settings = wandb.Settings(silent=True, console="off", init_timeout=float(self.cfg.get("init_timeout", 90)))
            self.run = wandb.init(
                project=self.cfg.get("project") or "headpursuit",
                entity=self.cfg.get("entity"),
                config=dict(config),
                group=group,
                name=name,
                job_type=job_type or self.cfg.get("job_type"),
                tags=list(self.cfg.get("tags") or []) or None,
                mode=self.mode,
                dir=str(self.run_dir),
                settings=settings,
            )
            self.status.update(
                {
                    "status": "ok",
                    "run_id": self.run.id,
                    "run_name": name,
                    "group": group,
                    "dir": str(Path(self.run.dir).parent),
                    "sync": f"wandb sync {Path(self.run.dir).parent}" if self.mode == "offline" else None,
                }
            )
        except BaseException as exc:  # noqa: BLE001 - W&B must never fail the run
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.run = None
            self._fail("init", exc)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            clean = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
            self.run.log(clean)
            for k, v in clean.items():
                self.run.summary[k] = v
        except Exception as exc:
            self._fail("log_metrics", exc)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            for k, v in values.items():
                self.run.summary[k] = v
        except Exception as exc:
            self._fail("log_summary", exc)

    def log_table(self, name: str, df) -> None:
        if not self.active or not self.cfg.get("log_table", True):
            return
        try:
            import wandb

            df = df.copy()
            for col in df.columns:  # W&B tables want scalars
                if df[col].map(lambda v: isinstance(v, (list, tuple))).any():
                    df[col] = df[col].map(lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            self.run.log({name: wandb.Table(dataframe=df)})
        except Exception as exc:
            self._fail("log_table", exc)

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        if not self.active or not self.cfg.get("log_plots", True) or not Path(path).exists():
            return
        try:
            import wandb

            self.run.log({name: wandb.Image(str(path))})
        except Exception as exc:
            self._fail("log_image", exc)

    def finish(self, exit_code: int = 0) -> None:
        if not self.active:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:
            self._fail("finish", exc)
        finally:
            self.run = None
