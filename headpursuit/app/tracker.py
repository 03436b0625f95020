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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["RESULT_SECTIONS", "LoggerConfig", "Tracker", "flatten_metrics"]


# `normalized` holds the same metrics over the unedited model's (edited/baseline, per-seed random).
# `intervals`, `specificity` and `significance`: the interval bounds, specificities and p-values.
RESULT_SECTIONS = ("baseline", "edited", "random", "normalized", "intervals", "specificity", "significance")


def flatten_metrics(results: Mapping[str, Any], sections=RESULT_SECTIONS, sep: str = "/") -> dict[str, float]:
    """`{"edited/concept/accuracy": 0.1, "random/std/concept/accuracy": ...}` from results.json."""
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k in ("examples", "per_seed", "heads", "n", "from_cache", "seeds", "relaxed_layers", "items"):
                    continue
                walk(f"{prefix}{sep}{k}", v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)

    for s in sections:
        if isinstance(results.get(s), Mapping):
            walk(s, results[s])
    return out


@dataclass(kw_only=True)
class LoggerConfig:
    """The experiment tracker (``logger/``): none, or Weights & Biases."""

    #: none (results.json / head_scores.csv only) | wandb
    backend: str = "none"
    #: online | offline (sync later: ``wandb sync <run dir>/wandb/offline-run-*``) | disabled
    mode: str = "disabled"
    project: str = "headpursuit"
    entity: str | None = None
    #: null: the sweep (experiment name + sweep dir name); single runs: none
    group: str | None = None
    job_type: str = "steer"
    tags: list[str] = field(default_factory=list)
    #: log the head-score table
    log_table: bool = True
    #: log the heat map
    log_plots: bool = True
    #: seconds W&B may take to start
    init_timeout: float = 90


class Tracker:
    """A W&B run per job, or nothing. Every method swallows its own errors (and says so)."""

    def __init__(self, logger_cfg: LoggerConfig | Mapping[str, Any] | None, run_dir: str | os.PathLike):
        # A mapping (results.json's resolved `logger`) reads into the schema: an unknown key fails here.
        cfg = logger_cfg if isinstance(logger_cfg, LoggerConfig) else LoggerConfig(**dict(logger_cfg or {}))
        self.backend, self.mode = cfg.backend, cfg.mode
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

            settings = wandb.Settings(silent=True, console="off", init_timeout=float(self.cfg.init_timeout))
            self.run = wandb.init(
                project=self.cfg.project or "headpursuit",
                entity=self.cfg.entity,
                config=dict(config),
                group=group,
                name=name,
                job_type=job_type or self.cfg.job_type,
                tags=list(self.cfg.tags) or None,
                mode=self.mode,  # type: ignore[arg-type]  # the schema's str; wandb names its values
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
        if not self.active or not self.cfg.log_table:
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
        if not self.active or not self.cfg.log_plots or not Path(path).exists():
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
