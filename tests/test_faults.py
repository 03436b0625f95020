"""Fault injection (issue 14): every failure is reproduced, and the test asserts that nothing
complete is lost and that the rerun completes.

Sections:
  LIBRARY  the dequantised model cache (device errors, corrupt files, the lock), `check_device`,
           corrupt activation files and the advice of `CacheError`.
  APP      (the Hydra shell: fail_fast reruns, SIGTERM/SIGINT, aggregate) -- added below.

Every test that corrupts or deletes cache files runs under a temporary HEADPURSUIT_CACHE, so the
shared ~/.cache/headpursuit is only ever read (the slow test copies it).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from headpursuit.capture import CAPTURE_STATS, CacheError, HeadActivations, capture_heads
from headpursuit.errors import ConfigError
from headpursuit.models import embedded, loading
from headpursuit.models.embedded import (
    COMPLETE,
    EMBEDDED,
    EmbeddedModel,
    cache_lock,
    dequantised_cache_dir,
    gguf_path,
    load_embedded,
    verify_cache,
)
from headpursuit.models.loading import check_device, load_model
from headpursuit.models.tiny import tiny_text_model

PROMPTS = ["The capital of France is", "One, two, three,", "Roses are red,"]

# ==========================================================================================
# LIBRARY
# ==========================================================================================

# ---- helpers -----------------------------------------------------------------------------


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """A private HEADPURSUIT_CACHE for one test."""
    root = tmp_path / "hp-cache"
    monkeypatch.setenv("HEADPURSUIT_CACHE", str(root))
    return root


class FakeEmbedded:
    """An embedded entry whose 'GGUF' is a small file and whose dequantisation returns a copy of
    the tiny llama (so a rebuild takes milliseconds); `builds` counts the dequantisations."""

    def __init__(self, tiny, gguf: Path):
        self.tiny = tiny
        self.gguf = gguf
        self.builds = 0
        self.entry = EmbeddedModel("fake", "fake_pkg", "fake-pkg", gguf.name, "none", "tiny llama", "-")

    def dequantise(self, gguf: Path) -> tuple[nn.Module, object]:
        assert gguf == self.gguf
        self.builds += 1
        return copy.deepcopy(self.tiny.model).float(), self.tiny.tokenizer

    @property
    def folder(self) -> Path:
        return dequantised_cache_dir(self.entry, self.gguf)

    def load(self, device: str = "cpu"):
        return load_embedded(self.entry, torch.float32, device)


@pytest.fixture(scope="module")
def plain_llama():
    """A tiny llama whose checkpoint round-trips exactly (no o_proj bias, which llama configs lack)."""
    return tiny_text_model("llama")


@pytest.fixture
def fake(plain_llama, cache_home, tmp_path, monkeypatch) -> FakeEmbedded:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    f = FakeEmbedded(plain_llama, gguf)
    monkeypatch.setattr(embedded, "gguf_path", lambda entry: gguf)
    monkeypatch.setattr(embedded, "dequantise", f.dequantise)
    return f


def snapshot(folder: Path) -> dict[str, str]:
    """sha1 of every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temp and trash folders next to a cache folder (none may be left lying)."""
    return sorted(p.name for p in folder.parent.glob(folder.name + ".*") if not p.name.endswith(".lock"))


def fail_device_moves(monkeypatch, message: str = "CUDA out of memory. Tried to allocate 538.00 MiB") -> None:
    """Make every Module.to(<cuda device>) raise like a GPU out of memory; other moves work."""
    real_to = nn.Module.to

    def to(self, *args, **kwargs):
        targets = [*args, kwargs.get("device")]
        if any(str(t).startswith("cuda") for t in targets if isinstance(t, (str, torch.device))):
            raise RuntimeError(message)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", to)


def corrupt(path: Path, how: str) -> None:
    """Damage a file. Written as a new file renamed over it: tensors this process memory-mapped
    from the old file stay valid (truncating it in place would crash us with SIGBUS)."""
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zero_bytes":
        data = b""
    elif how == "random_bytes":
        data = os.urandom(len(data))
    elif how == "flipped_bytes":  # same size, different content
        data = data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:]
    else:
        raise ValueError(how)
    damaged = path.with_name(path.name + ".damaged")
    damaged.write_bytes(data)
    os.replace(damaged, path)


def background(fn) -> tuple[threading.Thread, dict]:
    """Run `fn` in a thread; its result or exception lands in the returned dict."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---- the dequantised model cache: device errors are not corruption ------------------------


def test_device_out_of_memory_leaves_the_model_cache_intact(fake, monkeypatch):
    fake.load()
    before = snapshot(fake.folder)
    with monkeypatch.context() as m:
        fail_device_moves(m)
        with pytest.raises(RuntimeError, match="CUDA out of memory"):  # the real error, unchanged
            fake.load("cuda:0")
    assert snapshot(fake.folder) == before and leftovers(fake.folder) == []
    assert fake.builds == 1
    assert fake.load()[2]["from_cache"] is True  # the cache still serves the next load


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_leaves_the_model_cache_intact(fake, caplog):
    fake.load()
    before = snapshot(fake.folder)
    with caplog.at_level(logging.WARNING), pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        fake.load("cuda")
    assert snapshot(fake.folder) == before and leftovers(fake.folder) == []
    assert fake.builds == 1 and "rebuilding" not in caplog.text and "corrupt" not in caplog.text


def test_model_cache_records_a_manifest_of_its_files(fake):
    fake.load()
    manifest = (fake.folder / COMPLETE).read_text()
    assert "model.safetensors" in manifest and "config.json" in manifest and "sha1_sampled" in manifest
    assert verify_cache(fake.folder) is None


# ---- the dequantised model cache: corruption is detected, set aside, rebuilt ---------------


@pytest.mark.parametrize(
    "target, how",
    [
        ("model.safetensors", "truncated"),
        ("model.safetensors", "zero_bytes"),
        ("model.safetensors", "flipped_bytes"),
        ("config.json", "random_bytes"),
        ("model.safetensors", "deleted"),
        (COMPLETE, "random_bytes"),
    ],
)
def test_corrupt_model_cache_is_detected_and_rebuilt(fake, caplog, target, how):
    first = fake.load()[0].state_dict()
    path = fake.folder / target
    path.unlink() if how == "deleted" else corrupt(path, how)
    with caplog.at_level(logging.WARNING):
        model, _, info = fake.load()
    assert "is corrupt" in caplog.text and str(fake.folder) in caplog.text
    assert info["from_cache"] is False and fake.builds == 2
    assert verify_cache(fake.folder) is None and leftovers(fake.folder) == []
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, first[name])
    assert fake.load()[2]["from_cache"] is True and fake.builds == 2


def test_cache_without_manifest_is_checked_by_loading_it(fake, caplog):
    """Caches written before manifests existed (COMPLETE without `files`) are still read; a
    truncated weight file in one fails to load and that failure (on the CPU) proves it corrupt."""
    fake.load()
    (fake.folder / COMPLETE).write_text('{"gguf": "x", "size": 64}')
    assert verify_cache(fake.folder) is None
    assert fake.load()[2]["from_cache"] is True
    corrupt(fake.folder / "model.safetensors", "truncated")
    with caplog.at_level(logging.WARNING):
        info = fake.load()[2]
    assert "does not load" in caplog.text and info["from_cache"] is False and fake.builds == 2
    assert verify_cache(fake.folder) is None and "files" in (fake.folder / COMPLETE).read_text()


def test_incomplete_folder_is_replaced(fake):
    """A folder without COMPLETE (not a cache: e.g. left by hand) is never read, and replaced."""
    fake.folder.mkdir(parents=True)
    (fake.folder / "config.json").write_text("{}")
    assert fake.load()[2]["from_cache"] is False
    assert verify_cache(fake.folder) is None and leftovers(fake.folder) == []


# ---- the lock ------------------------------------------------------------------------------


def test_reader_waits_while_a_writer_replaces_the_folder(fake, tmp_path, caplog):
    fake.load()
    held = tmp_path / "held"
    with cache_lock(fake.folder, shared=False):  # a writer replacing the folder
        thread, out = background(fake.load)
        time.sleep(0.5)
        assert thread.is_alive()  # the reader waits for the writer
        # A half folder (what a non-atomic writer would expose) is never seen by the reader.
        os.replace(fake.folder, held)
        fake.folder.mkdir()
        shutil.copy(held / COMPLETE, fake.folder / COMPLETE)
        shutil.copy(held / "config.json", fake.folder / "config.json")
        time.sleep(0.2)
        shutil.rmtree(fake.folder)
        os.replace(held, fake.folder)
    with caplog.at_level(logging.WARNING):
        thread.join(30)
    assert "error" not in out, out.get("error")
    assert out["result"][2]["from_cache"] is True and fake.builds == 1
    assert "corrupt" not in caplog.text


def test_corrupt_folder_is_not_deleted_under_a_reader(fake):
    fake.load()
    corrupt(fake.folder / "model.safetensors", "truncated")
    with cache_lock(fake.folder, shared=True):  # another process is reading the folder
        thread, out = background(fake.load)
        time.sleep(0.5)
        assert thread.is_alive() and (fake.folder / "model.safetensors").exists()
    thread.join(30)
    assert "error" not in out, out.get("error")
    assert out["result"][2]["from_cache"] is False and verify_cache(fake.folder) is None


def test_folder_rebuilt_meanwhile_is_kept(fake, monkeypatch):
    """Another process replaced the corrupt folder between our check and our delete: we read
    the new one instead of deleting it."""
    fake.load()
    corrupt(fake.folder / "model.safetensors", "truncated")
    real_discard = embedded.discard_corrupt
    theirs: dict[str, str] = {}

    def rebuilt_by_another_process(folder, stamp):
        shutil.rmtree(folder)
        embedded.write_dequantised_cache(folder, copy.deepcopy(fake.tiny.model), fake.tiny.tokenizer, fake.gguf)
        theirs.update(snapshot(folder))
        return real_discard(folder, stamp)

    monkeypatch.setattr(embedded, "discard_corrupt", rebuilt_by_another_process)
    assert fake.load()[2]["from_cache"] is True and fake.builds == 1
    assert theirs and snapshot(fake.folder) == theirs


# ---- check_device ---------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_check_device_without_cuda_names_the_device_and_the_fix(device):
    with pytest.raises(ConfigError, match=rf"device='{device}' is not available.*device=cpu.*device=auto"):
        check_device(device)


def test_check_device_gpu_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device='cuda:3' is not available: this machine has 1 CUDA GPU.*cuda:0"):
        check_device("cuda:3")
    assert check_device("cuda:0") == "cuda:0" and check_device("auto") == "cuda"


def test_check_device_mps_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device='mps' is not available.*device=cpu"):
        check_device("mps")


def test_check_device_unknown_name():
    with pytest.raises(ConfigError, match=r"device='gpu0' is not a device name.*device=cpu"):
        check_device("gpu0")


def test_check_device_fixes_work(monkeypatch):
    """The fixes the messages name work as written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("cpu") == "cpu" and check_device("auto") == "cpu" and check_device(None) == "cpu"


def test_load_model_checks_the_device_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded weights before checking the device")

    monkeypatch.setattr(loading, "load_embedded", must_not_load)
    with pytest.raises(ConfigError, match="device='cuda'"):
        load_model("smollm2", device="cuda")


# ---- corrupt activation files ---------------------------------------------------------------


def write_foreign_safetensors(path: Path) -> None:
    """A valid safetensors file that is not a headpursuit activation file (no `z`)."""
    save_file({"weight": torch.zeros(3)}, str(path))


@pytest.mark.parametrize("how", ["truncated", "zero_bytes", "random_bytes", "foreign_safetensors"])
def test_corrupt_activation_file_is_set_aside_and_recomputed(tiny_llama, tmp_path, caplog, how):
    clean = capture_heads(tiny_llama, PROMPTS, positions="all", progress=False)
    capture_heads(tiny_llama, PROMPTS, positions="all", cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("acts-*.safetensors")
    write_foreign_safetensors(path) if how == "foreign_safetensors" else corrupt(path, how)
    bad = path.read_bytes()
    before = CAPTURE_STATS["forward_batches"]
    with caplog.at_level(logging.WARNING, logger="headpursuit.capture"):
        again = capture_heads(tiny_llama, PROMPTS, positions="all", cache_dir=tmp_path, progress=False)
    assert "is corrupt" in caplog.text and "recomputing" in caplog.text and path.name in caplog.text
    assert again.meta["from_cache"] is False and CAPTURE_STATS["forward_batches"] > before
    torch.testing.assert_close(again.z, clean.z)
    assert again.position.tolist() == clean.position.tolist()
    # Moved aside next to it, not deleted; the cache holds a good file again.
    (aside,) = tmp_path.glob(path.name + ".corrupt-*")
    assert aside.read_bytes() == bad and f"moved it to {aside}" in caplog.text
    hit = capture_heads(tiny_llama, PROMPTS, positions="all", cache_dir=tmp_path, progress=False)
    assert hit.meta["from_cache"] is True
    torch.testing.assert_close(hit.z, clean.z)


def test_cache_error_advice_works_as_written(tiny_llama, tmp_path):
    """HeadActivations.load on a corrupt file raises CacheError; both fixes it names work."""
    cache = tmp_path / "my cache"  # a space: the rm command must quote the path
    clean = capture_heads(tiny_llama, PROMPTS, cache_dir=cache, progress=False)
    (path,) = cache.glob("acts-*.safetensors")
    corrupt(path, "truncated")
    with pytest.raises(CacheError) as info:
        HeadActivations.load(path)
    message = str(info.value)
    assert "capture.cache" not in message and "cache_dir=None /" not in message
    # Fix 1: the rm command, run as written, then capture again.
    (command,) = re.findall(r"\((rm [^)]+)\)", message)
    subprocess.run(command, shell=True, check=True)
    assert not path.exists()
    again = capture_heads(tiny_llama, PROMPTS, cache_dir=cache, progress=False)
    assert again.meta["from_cache"] is False
    torch.testing.assert_close(again.z, clean.z)
    # Fix 2: cache_dir=None bypasses the cache.
    assert "pass cache_dir=None to capture_heads" in message
    corrupt(path, "truncated")
    bypass = capture_heads(tiny_llama, PROMPTS, cache_dir=None, progress=False)
    torch.testing.assert_close(bypass.z, clean.z)


def test_missing_activation_file_is_not_called_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="No activation file"):
        HeadActivations.load(tmp_path / "nothing.safetensors")


# ---- the real SmolLM2 cache (slow: one real rebuild, ~30 s) ----------------------------------


@pytest.mark.slow
def test_real_smollm2_cache_survives_device_errors_and_is_rebuilt_when_truncated(tmp_path, monkeypatch, caplog):
    entry = EMBEDDED["smollm2"]
    gguf = gguf_path(entry)
    shared = dequantised_cache_dir(entry, gguf)  # read only: copied, never changed
    monkeypatch.setenv("HEADPURSUIT_CACHE", str(tmp_path / "hp-cache"))
    folder = dequantised_cache_dir(entry, gguf)
    assert folder != shared
    if (shared / COMPLETE).exists():
        shutil.copytree(shared, folder)  # a real copy (never hard links: the test truncates it)
        first = load_embedded(entry, torch.float32, "cpu")
        assert first[2]["from_cache"] is True
    else:
        first = load_embedded(entry, torch.float32, "cpu")
    names = ("model.layers.3.self_attn.o_proj.weight", "lm_head.weight")
    weights = {name: first[0].state_dict()[name].clone() for name in names}
    del first
    before = snapshot(folder)
    with monkeypatch.context() as m:
        fail_device_moves(m)
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            load_embedded(entry, torch.float32, "cuda")
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
            load_embedded(entry, torch.float32, "cuda")
    assert snapshot(folder) == before and leftovers(folder) == []
    corrupt(folder / "model.safetensors", "truncated")
    with caplog.at_level(logging.WARNING):
        model, _, info = load_embedded(entry, torch.float32, "cpu")
    assert "is corrupt" in caplog.text and info["from_cache"] is False
    assert verify_cache(folder) is None and leftovers(folder) == []
    rebuilt = model.state_dict()
    for name in names:
        torch.testing.assert_close(rebuilt[name], weights[name])
