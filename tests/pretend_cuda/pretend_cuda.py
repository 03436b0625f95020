"""A check, on a machine without a GPU, that every test says its device (tests/devices.py).

    HF_HUB_OFFLINE=1 PYTHONPATH=tests/pretend_cuda .venv/bin/python -m pytest -p pretend_cuda -n 0 tests/test_x.py

This plugin makes `torch.cuda.is_available()` return True in the test process and (through
sitecustomize.py here and HEADPURSUIT_PRETEND_CUDA=1) in every Python subprocess, such as the app
runs. A test that leaves the device to `auto` then reaches for CUDA and fails ("Torch not compiled
with CUDA enabled"), as it would move to CUDA and bfloat16 on a GPU machine; a test pinned to the
CPU passes. The tests that run on the GPU on purpose (the `device` fixture, the `gpu` marker) are
skipped: here they would only fail for want of a real GPU. Not part of `make test`.
"""

from __future__ import annotations

import os

import pytest
import torch
from sitecustomize import pretend_cuda

os.environ["HEADPURSUIT_PRETEND_CUDA"] = "1"  # the subprocesses' sitecustomize.py
pretend_cuda(torch)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="pretend-CUDA: runs on the GPU on purpose (device fixture or gpu marker)")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()) or "gpu" in item.keywords:
            item.add_marker(skip)
