"""Provenance of the environment a run ran in: package versions, the git commit, host and scheduler ids."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["environment", "git_commit"]


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def git_commit(path: str | os.PathLike | None = None) -> dict:
    root = Path(path) if path else Path(__file__).resolve().parents[2]  # the repository
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)} if commit else {}
    except Exception:
        return {}


def environment() -> dict:
    """Versions, host and scheduler ids: what a reader needs to reproduce or question a number."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "versions": {
            d: _version(d)
            for d in (
                "headpursuit",
                "torch",
                "transformers",
                "accelerate",
                "gguf",
                "hydra-core",
                "omegaconf",
                "hydra-submitit-launcher",
                "submitit",
                "wandb",
                "numpy",
                "pandas",
                "datasets",
                "alt-profanity-check",
                "detoxify",
                "scikit-learn",
                "sacrebleu",
                "spams-bin",
            )
        },
        "git": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = {"device": torch.cuda.get_device_name(0), "version": torch.version.cuda}
    except Exception:  # pragma: no cover
        pass
    return env
