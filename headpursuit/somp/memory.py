"""How much working memory one batch of heads may take: the free memory of a device."""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory", "default_memory_budget"]


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes that can be allocated now on ``device``: free memory of a CUDA device
    (``torch.cuda.mem_get_info``), else the RAM the OS reports available (psutil when installed,
    else ``os.sysconf``); None when it cannot be told."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return None


def default_memory_budget(device: torch.device | None = None) -> int:
    """Bytes of working memory for one batch of heads, derived from the free memory of ``device``:
    on a GPU 50% of its free memory, on the CPU 30% of the available RAM capped at 6 GiB (at least
    256 MiB; 2 GiB when the free memory cannot be told). HEADPURSUIT_SOMP_BUDGET (bytes) overrides."""
    env = os.environ.get("HEADPURSUIT_SOMP_BUDGET")
    if env:
        return int(float(env))
    avail = available_memory(device)
    if device is not None and device.type == "cuda" and avail is not None:
        return int(0.5 * avail)
    if avail is None:
        return 2 << 30
    return int(max(256 << 20, min(6 << 30, 0.3 * avail)))
