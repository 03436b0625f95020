"""Part of the pretend-CUDA check (tests/pretend_cuda/pretend_cuda.py): in a Python process started
with this folder on PYTHONPATH and HEADPURSUIT_PRETEND_CUDA=1 (the app's subprocesses in the tests),
torch reports one CUDA device. torch is patched right after its import, not imported here."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys


def pretend_cuda(torch) -> None:
    """`torch.cuda.is_available()` True, one device: `device=auto` now resolves to cuda, and the
    first CUDA tensor fails with "Torch not compiled with CUDA enabled"."""
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1


class _PatchTorchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # once: torch's own imports go the usual way
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            pretend_cuda(module)

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


if os.environ.get("HEADPURSUIT_PRETEND_CUDA") == "1" and "torch" not in sys.modules:
    sys.meta_path.insert(0, _PatchTorchOnImport())
