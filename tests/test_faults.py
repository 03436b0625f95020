"""Fault injection (issue 14): every failure is reproduced, and the test asserts that nothing
complete is lost and that the rerun completes.

Sections:
  LIBRARY  the dequantised model cache (device errors, corrupt files, the lock), `check_device`,
           corrupt activation files and the advice of `CacheError`.
  APP      (the Hydra shell: fail_fast reruns, SIGTERM/SIGINT, corrupt app caches, aggregate, preflight).

Every test that corrupts or deletes cache files runs under a temporary HEADPURSUIT_CACHE, so the
shared ~/.cache/headpursuit is only ever read (the slow test copies it).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from devices import CPU_OVERRIDES
from safetensors.torch import save_file

from headpursuit.app import aggregate as A
from headpursuit.app import run as R
from headpursuit.app.cache import RunCache
from headpursuit.app.config import validate_config
from headpursuit.app.interrupts import JobInterrupted, signals_raise
from headpursuit.app.results import ErrorInfo, RunRecord
from headpursuit.app.tracking import (
    ERROR_FILE,
    FAIL_FAST_FILE,
    HEARTBEAT_FILE,
    LOCK_FILE,
    RESULTS_FILE,
    FailFastFlag,
    Heartbeat,
    RunDirBusy,
    RunDirLock,
    Timer,
    disk_full,
    launch_id,
    read_json,
    running_state,
    write_error,
    write_json_atomic,
)
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
    (path,) = tmp_path.glob("acts/*.safetensors")
    write_foreign_safetensors(path) if how == "foreign_safetensors" else corrupt(path, how)
    bad = path.read_bytes()
    before = CAPTURE_STATS["forward_batches"]
    with caplog.at_level(logging.WARNING, logger="headpursuit.store"):
        again = capture_heads(tiny_llama, PROMPTS, positions="all", cache_dir=tmp_path, progress=False)
    assert "is corrupt" in caplog.text and "recomputing" in caplog.text and path.name in caplog.text
    assert again.meta["from_cache"] is False and CAPTURE_STATS["forward_batches"] > before
    torch.testing.assert_close(again.z, clean.z)
    assert again.position.tolist() == clean.position.tolist()
    # Moved aside next to it, not deleted; the cache holds a good file again.
    (aside,) = path.parent.glob(path.name + ".corrupt-*")
    assert aside.read_bytes() == bad and f"moved it to {aside}" in caplog.text
    hit = capture_heads(tiny_llama, PROMPTS, positions="all", cache_dir=tmp_path, progress=False)
    assert hit.meta["from_cache"] is True
    torch.testing.assert_close(hit.z, clean.z)


def test_cache_error_advice_works_as_written(tiny_llama, tmp_path):
    """HeadActivations.load on a corrupt file raises CacheError; both fixes it names work."""
    cache = tmp_path / "my cache"  # a space: the rm command must quote the path
    clean = capture_heads(tiny_llama, PROMPTS, cache_dir=cache, progress=False)
    (path,) = cache.glob("acts/*.safetensors")
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


# ==========================================================================================
# APP: the Hydra shell (fail_fast reruns, SIGTERM/SIGINT, corrupt app caches, aggregate, preflight)
# ==========================================================================================
# Fault injection in the Hydra shell (issue 14, APP side).
#
# Each case is reproduced and the test asserts that nothing complete is lost and that the rerun
# completes: fail_fast reruns into one sweep dir, SIGTERM / SIGINT mid-run, corrupt entries of every
# app cache kind, what `aggregate` reports for interrupted / stale / unreadable runs, and every
# check that runs before the model loads (with the fix each message suggests, run as written).
#
# The subprocess runs use the smoke experiment (embedded SmolLM2, 6 ranking / 4 evaluation
# questions per group, 8 new tokens) and share one cache per module.

REPO = Path(__file__).resolve().parents[1]
# On the CPU in float32 (tests/devices.py): the reruns compare results with the first run's.
SMOKE = ["experiment=smoke", "logger=none", *CPU_OVERRIDES]


def cli_env(**extra: str) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "0",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headpursuit", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def results(run_dir: Path) -> RunRecord:
    """The run's results.json, read through the record type."""
    rec = RunRecord.read(run_dir / RESULTS_FILE)
    assert rec is not None, f"no readable {RESULTS_FILE} in {run_dir}"
    return rec


# ------------------------------------------------------------------------------------------
# Units: write_error keeps complete results, the fail-fast flag is per launch, timer stages
# ------------------------------------------------------------------------------------------


def test_write_error_never_replaces_complete_results(tmp_path):
    complete = {"status": "complete", "config_hash": "aaa", "edited": {"concept": {"accuracy": 0.5}}}
    write_json_atomic(tmp_path / RESULTS_FILE, complete)
    before = (tmp_path / RESULTS_FILE).read_bytes()
    for status in ("failed", "interrupted"):
        later = RunRecord(status="running", config_hash="bbb")
        out = write_error(tmp_path, RuntimeError("later launch"), later, status=status, stage="x")
        assert out.status == status and out.error is not None and out.error.stage == "x"
        assert (tmp_path / RESULTS_FILE).read_bytes() == before
        text = (tmp_path / ERROR_FILE).read_text()
        assert "results.json was kept" in text and "later launch" in text and "bbb" in text
    # a failed one is replaced (the rerun records its own failure)
    write_json_atomic(tmp_path / RESULTS_FILE, {"status": "failed"})
    write_error(tmp_path, RuntimeError("again"), RunRecord(status="running", config_hash="c"))
    assert results(tmp_path).error == ErrorInfo(type="RuntimeError", message="again", file=ERROR_FILE, stage=None)


def test_fail_fast_flag_is_scoped_to_one_launch(tmp_path):
    (tmp_path / "multirun.yaml").write_text("a: 1\n")
    first = FailFastFlag(tmp_path)
    assert not first.tripped()
    first.trip()
    assert FailFastFlag(tmp_path).tripped()  # another job of the same launch (any process)
    time.sleep(0.01)
    (tmp_path / "multirun.yaml").write_text("a: 1\n")  # Hydra's sweeper rewrites it at each launch
    assert launch_id(tmp_path) != first.launch
    assert not FailFastFlag(tmp_path).tripped()  # a rerun after the fix is not skipped
    assert (tmp_path / FAIL_FAST_FILE).exists()


def test_timer_names_the_stage_running_and_the_one_that_failed():
    timer = Timer()
    assert timer.stage is None
    with timer("load_model"):
        assert timer.stage == "load_model"
    assert timer.stage == "after load_model"
    with pytest.raises(RuntimeError):
        with timer("capture"):
            raise RuntimeError("x")
    assert timer.stage_of_failure() == "capture"


def test_a_signal_raises_job_interrupted_with_the_stage():
    timer = Timer()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobInterrupted) as info:
        with signals_raise(lambda: timer.stage), timer("rank"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert (info.value.signal, info.value.stage, info.value.exit_code) == ("SIGTERM", "rank", 143)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_hub_warnings_print_once(capfd):
    """huggingface_hub adds a stderr handler of its own and propagates to the root logger, which
    Hydra gives a console handler: each retry warning printed twice. Now once, via the root."""
    import huggingface_hub  # noqa: F401  (adds its handler on import)

    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    saved = list(hub.handlers)
    try:
        if not any(type(h) is logging.StreamHandler for h in hub.handlers):
            hub.addHandler(logging.StreamHandler(sys.stderr))  # as the library does
        R.route_library_logs()
        capfd.readouterr()
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        assert capfd.readouterr().err.count("Retrying in 1s") == 1
    finally:
        root.removeHandler(handler)
        for h in saved:
            if h not in hub.handlers:
                hub.addHandler(h)


# ------------------------------------------------------------------------------------------
# Heartbeat and what aggregate reports
# ------------------------------------------------------------------------------------------


def _write_run(root: Path, name: str, res: dict) -> Path:
    d = root / name
    write_json_atomic(d / RESULTS_FILE, res)
    return d


def test_heartbeat_beats_while_running_and_goes_at_the_end(tmp_path):
    stages = iter(["capture", "rank", "rank", "rank", "rank"])
    with Heartbeat(tmp_path, 0.05, lambda: next(stages, "rank")) as hb:
        first = read_json(tmp_path / HEARTBEAT_FILE)
        time.sleep(0.3)
        later = read_json(tmp_path / HEARTBEAT_FILE)
        assert first and later and later["time"] > first["time"] and later["pid"] == os.getpid()
        assert hb.info()["interval_s"] == 0.05
        res = {"status": "running", "heartbeat": hb.info()}
        assert running_state(tmp_path, res) == "running"
    assert not (tmp_path / HEARTBEAT_FILE).exists()


def test_aggregate_shows_interrupted_stale_and_unreadable(tmp_path):
    base = {"config": {"model": {"name_or_path": "m"}, "task": {"name": "t"}, "ranking": {"method": "r"}}}
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_run(tmp_path, "0", {**base, "status": "interrupted", "error": {"message": "by SIGTERM", "stage": "capture"}})
    # running, on this host, but its process is gone
    d1 = _write_run(
        tmp_path, "1", {**base, "status": "running", "heartbeat": {"interval_s": 30, "pid": dead.pid, "host": host}}
    )
    (d1 / HEARTBEAT_FILE).write_text(json.dumps({"time": time.time(), "pid": dead.pid, "host": host}))
    # running elsewhere, heartbeat an hour old
    d2 = _write_run(
        tmp_path, "2", {**base, "status": "running", "heartbeat": {"interval_s": 30, "pid": 1, "host": "n42"}}
    )
    (d2 / HEARTBEAT_FILE).write_text(json.dumps({"time": time.time() - 3600, "pid": 1, "host": "n42"}))
    # running here and alive (this process), fresh heartbeat
    d3 = _write_run(
        tmp_path, "3", {**base, "status": "running", "heartbeat": {"interval_s": 30, "pid": os.getpid(), "host": host}}
    )
    (d3 / HEARTBEAT_FILE).write_text(json.dumps({"time": time.time(), "pid": os.getpid(), "host": host}))
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / RESULTS_FILE).write_text('{"status": "compl')  # truncated
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / RESULTS_FILE).write_bytes(b"")  # zero bytes

    df = A.load_runs(tmp_path).set_index("run")
    assert df.loc["0", "status"] == "interrupted" and df.loc["0", "stage"] == "capture"
    assert df.loc["1", "status"] == "stale" and df.loc["2", "status"] == "stale"
    assert df.loc["3", "status"] == "running"
    for r in ("4", "5"):
        assert df.loc[r, "status"] == "unreadable" and str(tmp_path / r / RESULTS_FILE) in df.loc[r, "error"]
    # --stale-after: a fresh heartbeat counts as stale past it
    assert A.load_runs(tmp_path, stale_after=-1).set_index("run").loc["3", "status"] == "stale"

    proc = subprocess.run(
        [sys.executable, "-m", "headpursuit.app.aggregate", str(tmp_path), "--no-plots"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("interrupted", "stale", "unreadable", "running", str(tmp_path / "4" / RESULTS_FILE)):
        assert word in proc.stdout, proc.stdout
    md = (tmp_path / "k_alpha.md").read_text()
    assert "1 interrupted" in md and "2 stale" in md and "2 unreadable" in md
    assert "unreadable" in (tmp_path / "failed.md").read_text()


# ------------------------------------------------------------------------------------------
# Corrupt cache entries of every app kind: warned, recomputed, identical
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, fmt", [("samples", "pickle"), ("scores", "pickle"), ("evals", "json")])
@pytest.mark.parametrize("damage", ["truncated", "zero_bytes"])
def test_corrupt_cache_entry_is_warned_and_recomputed(tmp_path, caplog, kind, fmt, damage):
    value = {"rows": [{"prompt": "p", "answer": "a"}], "x": 0.25, "nan": float("nan")}
    cache = RunCache(tmp_path)
    first, hit = cache.get_or_compute(kind, "k", lambda: value, fmt=fmt)
    assert not hit
    path = tmp_path / kind / ("k.pkl" if fmt == "pickle" else "k.json")
    good = path.read_bytes()
    bad = good[: len(good) // 2] if damage == "truncated" else b""
    path.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="headpursuit.store"):
        again, hit = RunCache(tmp_path).get_or_compute(kind, "k", lambda: value, fmt=fmt)
    assert not hit and "unreadable" in caplog.text and str(path) in caplog.text
    assert again["rows"] == value["rows"] and again["x"] == 0.25 and math.isnan(again["nan"])
    assert path.read_bytes() == good  # rewritten whole
    (aside,) = path.parent.glob(path.name + ".corrupt-*")  # the bad entry kept beside it, as activations are
    assert aside.read_bytes() == bad and f"moved it to {aside}" in caplog.text
    third, hit = RunCache(tmp_path).get_or_compute(kind, "k", lambda: pytest.fail("recomputed"), fmt=fmt)
    assert hit and third["rows"] == value["rows"]
    if fmt == "pickle":
        assert pickle.loads(good)["x"] == 0.25


# ------------------------------------------------------------------------------------------
# Checks before the model loads: each error, then the fix it suggests, run as written
# ------------------------------------------------------------------------------------------


class ModelLoadReached(RuntimeError):
    """Raised by the patched loader: the run got past every check to the model load."""


def run_in_process(monkeypatch, run_dir: Path, *overrides: str) -> RunRecord:
    """The Hydra app in this process with the model loader patched to raise ModelLoadReached;
    returns its record (results.json)."""

    def no_load(*a, **k):
        raise ModelLoadReached("model load reached")

    monkeypatch.setattr(R, "load_model_memo", no_load)
    monkeypatch.setattr(sys, "argv", ["headpursuit", *SMOKE, *overrides, f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as info:
        R.main()
    assert info.value.code != 0
    return results(run_dir)


def _data_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "empty": tmp_path / "empty.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "schema": tmp_path / "schema.jsonl",
    }
    files["empty"].write_bytes(b"")
    files["malformed"].write_text('{"question": "Where?", "answers": ["France"], "group": "concept"}\n{"question": \n')
    files["schema"].write_text('{"prompt": "no question field", "group": "concept"}\n')
    return files


PREFLIGHT_CASES = [
    # (overrides, key named in the message, the fix the message suggests)
    (["task.concept=nope"], "task.concept", ["task.concept=countries"]),
    (["task.concept=[x,q]"], "task.concept", ["task.concept=countries"]),
    (["task.source=nope"], "task.source", ["task.source=fixture"]),
    (["task.source=jsonl"], "task.data_path", ["task.source=fixture", "task.data_path=null"]),
    (["task.source=jsonl", "task.data_path={tmp}/missing.jsonl"], "task.data_path", ["task.source=fixture", "task.data_path=null"]),
    (["task.source=jsonl", "task.data_path={empty}"], "task.data_path", ["task.source=fixture", "task.data_path=null"]),
    (["task.source=jsonl", "task.data_path={malformed}"], "task.data_path", ["task.source=fixture", "task.data_path=null"]),
    (["task.source=jsonl", "task.data_path={schema}"], "task.data_path", ["task.source=fixture", "task.data_path=null"]),
    (["intervention.heads=explicit", "intervention.explicit=[[30,0]]"], "intervention.explicit", ["intervention.explicit=[[0,0],[29,8]]"]),
    (["device=cuda:99"], "device", ["device=cpu"]),
    (["task.source=trivia_qa_file", "task.data_path=${{hp.fixture:trivia_qa_validation_sample.jsonl}}", "task.rank_data_path={tmp}/missing.jsonl"], "task.rank_data_path", ["task.rank_data_path=null"]),
    (["+task@rank_task=qa_countries", "rank_task.concept=nope"], "task.concept", ["rank_task.concept=countries"]),
    # issue 19: each of these used to fail (or do nothing) only after the model had loaded
    (["task.n_rank=0"], "task.n_rank", ["task.n_rank=8"]),
    (["task.n_rank={{concept:0,control:5}}"], "task.n_rank", ["task.n_rank=8"]),
    (["task.rank_groups=[concept,control]", "task.n_rank={{concept:5,control:0}}"], "task.n_rank", ["task.n_rank=8"]),
    (["+task@rank_task=qa_countries", "rank_task.n_rank=0"], "rank_task.n_rank", ["rank_task.n_rank=8"]),
    (["task.n_eval=0"], "task.n_eval", ["task.n_eval=8"]),
    (["task.max_new_tokens=0"], "task.max_new_tokens", ["task.max_new_tokens=16"]),
    (["ranking.somp_steps=100000"], "ranking.somp_steps", ["ranking.somp_steps=10"]),
    (["ranking=concept_restricted", "ranking.somp_steps=100000"], "ranking.somp_steps", ["ranking.somp_steps=10"]),
    (["ranking=paper", "ranking.somp_steps=100000"], "ranking.somp_steps", ["ranking.somp_steps=10"]),
    (["intervention.random_seeds=[]"], "intervention.random_seeds", ["intervention.random_controls=false"]),
    (["intervention.random_seeds=[]"], "intervention.random_seeds", ["intervention.random_seeds=[0,1,2]"]),
]  # fmt: skip


@pytest.mark.parametrize("overrides, key, fix", PREFLIGHT_CASES, ids=[" ".join(c[0]) for c in PREFLIGHT_CASES])
def test_checks_run_before_the_model_loads_and_their_fix_works(monkeypatch, tmp_path, overrides, key, fix):
    files = {k: str(v) for k, v in _data_files(tmp_path).items()}
    args = [o.format(tmp=tmp_path, **files) for o in overrides]
    cache = f"cache_dir={tmp_path / 'cache'}"
    res = run_in_process(monkeypatch, tmp_path / "bad", *args, cache)
    msg = res.error.message
    # ConfigError, or its PreflightError for a job's input (a multirun records it and goes on)
    assert res.status == "failed" and res.error.type in ("ConfigError", "PreflightError"), res.error
    assert key in msg, msg
    for override in fix:
        assert override in msg, msg  # the fix, as written in the message
    assert "Traceback" in (tmp_path / "bad" / ERROR_FILE).read_text()
    # The fix as written, after the bad overrides: every check passes, the model load is reached.
    fixed = run_in_process(monkeypatch, tmp_path / "fixed", *args, *fix, cache)
    assert fixed.error.type == "ModelLoadReached", fixed.error
    assert fixed.error.stage == "load_model"


def test_somp_steps_above_the_concept_but_within_the_vocabulary_pass(monkeypatch, tmp_path):
    """concept_restricted caps the SOMP steps at the number of concept tokens (conf/ranking/paper.yaml):
    such a value passes preflight; only one above the vocabulary (49152 tokens for SmolLM2) fails,
    naming it."""
    ok = run_in_process(monkeypatch, tmp_path / "ok", "ranking=paper", "ranking.somp_steps=5000", "cache_dir=null")
    assert ok.error.type == "ModelLoadReached", ok.error
    bad = run_in_process(monkeypatch, tmp_path / "bad", "ranking=paper", "ranking.somp_steps=49153", "cache_dir=null")
    assert "ranking.somp_steps=49153" in bad.error.message and "at most 49152" in bad.error.message


def test_preflight_leaves_the_repeated_questions_warning_to_the_build_on_the_model(tmp_path, caplog):
    from headpursuit.app.preflight import check_task_builds
    from headpursuit.models.tiny import embedded_tokenizer
    from headpursuit.tasks import build_task

    rows = [{"question": f"Where is city {i}?", "answers": ["France"], "group": "concept"} for i in range(4)]
    rows += [{"question": f"What is {i} + {i}?", "answers": [str(2 * i)], "group": "control"} for i in range(4)]
    path = tmp_path / "repeats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:3]))
    cfg = {"name": "qa_countries", "source": "jsonl", "data_path": str(path), "n_rank": 2, "n_eval": 2}
    tok = embedded_tokenizer("smollm2")
    with caplog.at_level(logging.WARNING):
        check_task_builds(cfg, tok)  # the job's preflight: silent about it (a sweep would say it per job)
        assert not [r for r in caplog.records if "repeated" in r.getMessage()]
        task = build_task(cfg, tokenizer=tok)  # the build the run uses: says it once
    assert [r.levelname for r in caplog.records if "dropped 3 repeated" in r.getMessage()] == ["WARNING"]
    assert task.provenance()["data"]["duplicates_dropped"] == 3
    assert logging.getLogger("headpursuit.tasks").level == logging.NOTSET  # restored


TASK_FILES = sorted(p.stem for p in (REPO / "conf" / "task").glob("*.yaml"))


def compose_config(*overrides: str) -> dict:
    """The resolved run config of `overrides` as the app sees it, without running anything."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "cache_dir=null", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("task", TASK_FILES)
def test_every_task_file_checks_its_sizes_without_a_model(task):
    """task.n_rank / n_eval / max_new_tokens (and toxicity's n_continuations) of every task file:
    0 is refused by `validate_config`, which needs neither model nor tokenizer; the fix it names
    passes."""
    validate_config(compose_config(f"task={task}"))
    keys = ["n_rank", "n_eval", "max_new_tokens"] + (["n_continuations"] if task == "toxicity" else [])
    for key in keys:
        with pytest.raises(ConfigError, match=rf"task\.{key}=0\b") as info:
            validate_config(compose_config(f"task={task}", f"task.{key}=0"))
        fix = re.search(r"Fix: (\S+)", str(info.value)).group(1)
        validate_config(compose_config(f"task={task}", f"task.{key}=0", fix))


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (files and folders), relative."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def read_only_file_system(monkeypatch, folder: Path) -> None:
    """Creating a file directly in `folder` fails as on a read-only mount (EROFS), for root too,
    who writes through permission bits."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("how", ["read-only folder", "read-only file system", "below a file", "existing, read-only"])
def test_unwritable_cache_dir_fails_before_the_model_loads_and_nothing_is_touched(monkeypatch, tmp_path, how):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("another job's file")
    cache = shared / "cache" / "headpursuit"  # not made yet: its nearest existing parent is probed
    if how == "existing, read-only":
        cache.mkdir(parents=True)
        (cache / "entry.json").write_text("{}")
        read_only_file_system(monkeypatch, cache)
    elif how == "read-only file system":
        read_only_file_system(monkeypatch, shared)
    elif how == "below a file":
        cache = shared / "keep.txt" / "cache"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes through permission bits (the read-only file system case covers root)")
        shared.chmod(0o555)
    before = tree(shared)
    try:
        res = run_in_process(monkeypatch, tmp_path / "bad", f"cache_dir={cache}")
        after = tree(shared)
    finally:
        shared.chmod(0o755)
    msg = res.error.message
    assert res.error.type == "ConfigError" and res.error.stage == "preflight", res.error
    assert f"cache_dir={str(cache)!r}" in msg and "cache_dir=null" in msg, msg
    assert after == before  # the probe made nothing and removed nothing
    fixed = run_in_process(monkeypatch, tmp_path / "fixed", "cache_dir=null")
    assert fixed.error.type == "ModelLoadReached", fixed.error


def test_cache_dir_probe_leaves_the_folder_as_it_was(tmp_path):
    from headpursuit.app.preflight import check_cache_dir

    (tmp_path / "cache" / "evals").mkdir(parents=True)
    (tmp_path / "cache" / "evals" / "x.json").write_text("{}")
    before = tree(tmp_path)
    check_cache_dir(tmp_path / "cache")  # exists and writable
    check_cache_dir(tmp_path / "cache" / "new" / "deeper")  # to be made: its parent is probed, nothing made
    check_cache_dir(None)  # no cache
    assert tree(tmp_path) == before


def test_empty_concept_message_advice_is_reachable():
    """The library's message for an empty concept used to say "lower min_chars", which no config
    key sets: it now names the config fix and the Python keyword, and the keyword works."""
    from headpursuit.concepts import build_concept
    from headpursuit.models.tiny import embedded_tokenizer

    tok = embedded_tokenizer("smollm2")
    with pytest.raises(ValueError, match=r"task\.concept=\[word,\.\.\.\].*min_chars= to load_concept") as info:
        build_concept(["x", "q"], tok)
    assert "lower min_chars." not in str(info.value)
    assert len(build_concept(["x", "q"], tok, min_chars=1)) > 0


# ------------------------------------------------------------------------------------------
# A full disk, a run directory in use, the libraries' log lines (issue 19)
# ------------------------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_found_in_the_exception_chain():
    assert disk_full(RuntimeError("x")) is None
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("capture failed") from exc
    except RuntimeError as outer:
        assert disk_full(outer) is full
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    # safetensors writes in Rust: its error is no OSError, its message says it
    rust = Exception(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )
    assert disk_full(rust) is rust


def test_full_disk_ends_the_run_with_one_message_and_keeps_complete_results(monkeypatch, tmp_path, capfd):
    """The disk fills at the first write of the run (results.json, status running) and the record of
    the failure (error.txt) fails too: one message naming the file, the stage and the fix; no
    traceback; the complete results.json of an earlier launch (another config) byte for byte."""
    run_dir = tmp_path / "run"
    write_json_atomic(run_dir / RESULTS_FILE, {"status": "complete", "config_hash": "earlier", "k": 1})
    before = (run_dir / RESULTS_FILE).read_bytes()
    monkeypatch.setattr(os, "fsync", _no_space)  # write_text_atomic: the temp file written, then its fsync fails
    monkeypatch.setattr(sys, "argv", ["headpursuit", *SMOKE, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'c'}"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        R.main()
    assert info.value.code == R.EXIT_DISK_FULL != 0
    out = capfd.readouterr()
    said = out.out + out.err
    assert "Traceback" not in said and said.count("No space left on device") == 1, said
    message = next(line for line in out.err.splitlines() if "No space left" in line)
    assert f"writing {run_dir / RESULTS_FILE}" in message and "(stage: after preflight)" in message
    assert "cache_dir=" in message and "hydra.run.dir=" in message and "Free space" in message
    assert (run_dir / RESULTS_FILE).read_bytes() == before
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]  # no partial files left behind
    assert logging.raiseExceptions  # the job's setting is restored


def test_full_disk_in_a_cache_write_stops_the_run_and_names_the_entry(tmp_path, caplog):
    class Unwritable:
        def __init__(self, exc):
            self.exc = exc

        def __reduce__(self):
            raise self.exc

    cache = RunCache(tmp_path)
    with pytest.raises(OSError) as info:
        cache.get_or_compute(
            "evals", "k1", lambda: Unwritable(OSError(errno.ENOSPC, "No space left on device")), "pickle"
        )
    assert info.value.filename == str(tmp_path / "evals" / "k1.pkl")
    assert not [p for p in (tmp_path / "evals").iterdir() if p.suffix != ".lock"]  # no partial entry
    # any other write error: a warning, the value is returned uncached (as before)
    value, hit = cache.get_or_compute("evals", "k2", lambda: Unwritable(TypeError("cannot pickle")), "pickle")
    assert isinstance(value, Unwritable) and not hit and "could not write cache entry" in caplog.text


HOLD_LOCK = """
import sys
from headpursuit.app.tracking import RunDirLock
with RunDirLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_a_run_directory_says_who_holds_it_and_exits(monkeypatch, tmp_path, capfd):
    run_dir = tmp_path / "run"
    write_json_atomic(run_dir / RESULTS_FILE, {"status": "running", "config_hash": "first"})
    before = (run_dir / RESULTS_FILE).read_bytes()
    holder = _hold_lock(run_dir)
    try:
        with pytest.raises(
            RunDirBusy, match=rf"in use by process {holder.pid}@{re.escape(socket.gethostname())} since 20"
        ):
            with RunDirLock(run_dir):
                pass
        # the app: one line, exit 75, nothing written into the directory
        monkeypatch.setattr(
            sys, "argv", ["headpursuit", *SMOKE, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'c'}"]
        )
        capfd.readouterr()
        with pytest.raises(SystemExit) as info:
            R.main()
        assert info.value.code == R.EXIT_BUSY
        err = capfd.readouterr().err
        assert f"process {holder.pid}@" in err and "hydra.run.dir=" in err and "Traceback" not in err, err
        assert (run_dir / RESULTS_FILE).read_bytes() == before and not (run_dir / ERROR_FILE).exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    # The kernel released the dead process's lock: its file blocks nothing.
    assert str(holder.pid) in (run_dir / LOCK_FILE).read_text()
    with RunDirLock(run_dir):
        assert str(os.getpid()) in (run_dir / LOCK_FILE).read_text()
    with RunDirLock(run_dir):  # released at the end of the block: the next job (a resume) takes it
        pass


HF_LOGS = """
import logging.config, sys
# The root logger as Hydra's default job_logging sets it up: a console handler on stdout.
logging.config.dictConfig({
    "version": 1,
    "formatters": {"simple": {"format": "[%(name)s][%(levelname)s] - %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stdout"}},
    "root": {"level": "INFO", "handlers": ["console"]},
    "disable_existing_loggers": False,
})
from headpursuit.app.run import route_library_logs
# As in a run: the libraries are first imported after the routing (by the model load, the task).
assert "huggingface_hub" not in sys.modules and "datasets" not in sys.modules
route_library_logs()
import datasets, huggingface_hub, transformers
logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
logging.getLogger("datasets.load").warning("datasets says this once")
logging.getLogger("transformers.modeling_utils").warning("transformers says this once")
"""


def test_library_log_lines_print_once_through_the_root_handler():
    """huggingface_hub and datasets add a stderr handler when first imported and propagate to the
    root: every hub retry printed twice when the import came after the routing (as in a run)."""
    proc = subprocess.run([sys.executable, "-c", HF_LOGS], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line, logger in [
        ("Retrying in 1s [Retry 1/5].", "huggingface_hub.utils._http"),
        ("datasets says this once", "datasets.load"),
        ("transformers says this once", "transformers.modeling_utils"),
    ]:
        assert (proc.stdout + proc.stderr).count(line) == 1, (proc.stdout, proc.stderr)
        assert f"[{logger}][WARNING] - {line}" in proc.stdout  # through the root's (Hydra's) handler


# ------------------------------------------------------------------------------------------
# Subprocess runs on SmolLM2 (smoke): fail_fast reruns, SIGTERM / SIGINT, corrupt caches
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_app")
    return root, root / "cache"


@pytest.mark.slow
def test_fail_fast_rerun_keeps_complete_jobs_and_runs_what_is_missing(shared):
    root, cache = shared
    sweep = root / "sweep"
    common = [*SMOKE, f"hydra.sweep.dir={sweep}", f"cache_dir={cache}"]

    # Launch 1: job 1 (k=0) fails, fail_fast raises.
    first = run_cli("-m", *common, "intervention.k=3,0", "fail_fast=true")
    assert first.returncode != 0
    job0 = results(sweep / "0")
    assert job0.status == "complete" and results(sweep / "1").status == "failed"
    complete0 = (sweep / "0" / RESULTS_FILE).read_bytes()
    assert (sweep / FAIL_FAST_FILE).exists()

    # Launch 2, after the fix: job 0 is skipped as complete (not as aborted), job 1 runs.
    second = run_cli("-m", *common, "intervention.k=3,1", "fail_fast=true")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (sweep / "0" / RESULTS_FILE).read_bytes() == complete0
    job1 = results(sweep / "1")
    assert job1.status == "complete" and job1.outcome is not None and job1.outcome.edit.k == 1
    assert not (sweep / "1" / ERROR_FILE).exists()  # the earlier failure's error.txt is gone
    complete1 = (sweep / "1" / RESULTS_FILE).read_bytes()

    # Launch 3: job 0 fails (k=0) -> fail_fast trips -> job 1 (another config) skips itself.
    # Neither overwrites its complete results.json; each says so in error.txt.
    third = run_cli("-m", *common, "intervention.k=0,2", "fail_fast=true")
    assert third.returncode != 0
    assert (sweep / "0" / RESULTS_FILE).read_bytes() == complete0
    assert (sweep / "1" / RESULTS_FILE).read_bytes() == complete1
    assert "results.json was kept" in (sweep / "0" / ERROR_FILE).read_text()
    skipped = (sweep / "1" / ERROR_FILE).read_text()
    assert "results.json was kept" in skipped and "fail_fast" in skipped

    # Launch 4: the launch-2 configs again: both complete, skipped, despite launch 3's flag.
    fourth = run_cli("-m", *common, "intervention.k=3,1", "fail_fast=true")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert (fourth.stdout + fourth.stderr).count("skipping") == 2
    assert (sweep / "0" / RESULTS_FILE).read_bytes() == complete0


def _interrupt_mid_run(run_dir: Path, cache: Path, sig: int) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headpursuit",
            *SMOKE,
            "heartbeat_s=0.5",
            f"hydra.run.dir={run_dir}",
            f"cache_dir={cache}",
        ],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    stage = None
    while time.time() < deadline and proc.poll() is None:
        beat = read_json(run_dir / HEARTBEAT_FILE) or {}
        stage = beat.get("stage")
        if stage in ("task", "ranking_samples", "capture", "rank", "baseline", "edited", "random"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_records_interrupted_with_the_stage(tmp_path, sig):
    run_dir = tmp_path / "run"
    # A fresh cache: every stage computes, so the signal lands inside one.
    proc, out, err = _interrupt_mid_run(run_dir, tmp_path / "cache", sig)
    assert proc.returncode == 128 + sig, err[-3000:]
    res = results(run_dir)
    assert res.status == "interrupted", res.error
    stage = res.error.stage
    assert stage and stage != "start", res.error
    name = signal.Signals(sig).name
    assert name in res.error.message and stage in res.error.message
    text = (run_dir / ERROR_FILE).read_text()
    assert "status: interrupted" in text and stage in text
    assert f"interrupted by {name}" in err and "Traceback" not in err, err[-3000:]
    assert not (run_dir / HEARTBEAT_FILE).exists()
    # the rerun completes
    again = run_cli(*SMOKE, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert results(run_dir).status == "complete" and not (run_dir / ERROR_FILE).exists()


@pytest.mark.slow
def test_corrupt_app_cache_files_are_recomputed_with_identical_results(shared):
    root, _ = shared
    cache = root / "cache_corrupt"  # its own: every entry in it is one this run reads
    run_a = root / "corrupt_a"
    first = run_cli(*SMOKE, f"hydra.run.dir={run_a}", f"cache_dir={cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = read_json(run_a / RESULTS_FILE)  # the file's content: identical, raw
    damaged = []
    for i, path in enumerate(sorted(p for kind in ("samples", "scores", "evals") for p in (cache / kind).glob("*.*"))):
        if path.suffix in (".pkl", ".json"):
            data = path.read_bytes()
            path.write_bytes(b"" if i % 2 else data[: len(data) // 2])
            damaged.append(path)
    assert {p.parent.name for p in damaged} == {"samples", "scores", "evals"}
    run_b = root / "corrupt_b"
    second = run_cli(*SMOKE, f"hydra.run.dir={run_b}", f"cache_dir={cache}")
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    for path in damaged:
        assert str(path) in log and "unreadable" in log
    after = read_json(run_b / RESULTS_FILE)
    assert before is not None and after is not None
    for section in ("heads", "baseline", "edited", "random", "normalized"):
        assert after[section] == before[section], section
    assert results(run_b).outcome.provenance.cache.ranking_samples_from_cache is False


# ---- progress bars count generation steps, not batches (issue 14, item 6) -------------------


def test_generation_progress_counts_steps_not_batches(tiny_llama, monkeypatch):
    """5 prompts in batches of 2 with 4 new tokens: 3 batches x 4 steps = 12 steps in the bar
    (a bar of batches would read 0/3 through a long batch, 0/1 for a single one), and the outputs
    are the same as without a bar."""
    from headpursuit.models import generation

    updates: list[int] = []
    totals: list[int | None] = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            totals.append(total)

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    prompts = ["The capital of France is", "One, two,", "Hello", "Water boils at", "Blue and"]
    with_bar = generation.generate_batch(tiny_llama, prompts, max_new_tokens=4, batch_size=2, progress=True)
    without = generation.generate_batch(tiny_llama, prompts, max_new_tokens=4, batch_size=2, progress=False)
    assert with_bar == without
    assert totals == [12]
    assert sum(updates) == 12 and len(updates) >= 3  # per-step updates, each batch filled to 4 steps
