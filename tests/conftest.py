import os
from contextlib import contextmanager

import pytest
import torch
from devices import CPU

# The run config's schemas and resolvers (Hydra's ConfigStore): every test that composes conf/ needs them.
import headpursuit.app.schema  # noqa: F401

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# One share of the cores per pytest-xdist worker (`make test`: 2 workers on 2 cores, so 1 thread
# each). Two workers of 2 threads each on 2 cores oversubscribe them: two documented commands, one
# per worker, took 86-95 s (143-159 s CPU) that way and 50-54 s (66-72 s CPU) with 1 thread each.
# Child processes (the documented scripts) get the same share through OMP_NUM_THREADS.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped (with the reason) on a machine without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the tests that run on the GPU on purpose: CUDA when available, else the CPU.
    Every other test pins the CPU (tests/devices.py says how and why)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def smollm2():
    from headpursuit import load_model

    return load_model("smollm2", **CPU)


@pytest.fixture(scope="session")
def tiny_llama():
    from headpursuit.models.tiny import tiny_text_model

    return tiny_text_model("llama", o_proj_bias=True)


@pytest.fixture(scope="session")
def tiny_gemma3():
    from headpursuit.models.tiny import tiny_text_model

    return tiny_text_model("gemma3_text")


@pytest.fixture(scope="session")
def tiny_vlm():
    """SmolLM2 + a random tiny vision tower (LLaVA-style); one load per test session."""
    from headpursuit.models import load_model

    return load_model("tiny_vlm", **CPU)


@contextmanager
def _w_o_columns_scaled(lm, scales):
    """Independent reference for head edits: scale each head's W_O columns in the weights (instead
    of hooking its input), restored on exit."""
    dh = lm.layout.head_dim
    saved = {}
    try:
        for (layer, head), a in scales.items():
            W = lm.output_weight(layer)
            saved.setdefault(layer, W.data.clone())
            W.data[:, head * dh : (head + 1) * dh] *= a
        yield lm
    finally:
        for layer, W in saved.items():
            lm.output_weight(layer).data.copy_(W)


@pytest.fixture(scope="session")
def w_o_columns_scaled():
    """The weight-edit reference as a fixture: ``with w_o_columns_scaled(lm, {(l, h): a}): ...``."""
    return _w_o_columns_scaled


@pytest.fixture(scope="session")
def docs(tmp_path_factory):
    """The docs-commands harness's state (tests/docs_harness.py), one per process: the doc modules a
    worker runs share what their commands left. Its run cache is one for the whole test session,
    both xdist workers included (basetemp's parent is the session's; the cache locks each entry),
    so a command documented in two files ranks and evaluates once."""
    from docs_harness import Docs

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    return Docs(tmp_path_factory.mktemp("docs_commands"), cache=shared / "docs_commands_cache")
