"""Test helper: read an offline W&B run back (no network, no wandb service).

`read_wandb_run(run_dir)` parses the `.wandb` transaction log (a leveldb-style record log of
protobuf records), so the tests can check what a run logged.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    """Payloads of a W&B transaction log (leveldb log format: 32 KiB blocks, 7-byte headers)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, rtype = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if length == 0 and rtype == 0:
            break
        if rtype == _FULL:
            yield payload
        elif rtype == _FIRST:
            pending = payload
        elif rtype == _MIDDLE:
            pending += payload
        elif rtype == _LAST:
            yield pending + payload
            pending = b""


def find_wandb_files(run_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"))


def read_wandb_run(path: str | os.PathLike) -> dict:
    """Summary, history rows and config of an offline W&B run.

    `path` is a `.wandb` file or a directory holding `wandb/offline-run-*/run-*.wandb` (the last
    one is read). Returns {"summary": {...}, "history": [{...}, ...], "config": {...}, "run_id"}.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = find_wandb_files(path)
        if not files:
            raise FileNotFoundError(f"no wandb/*run-*/run-*.wandb under {path}")
        path = files[-1]
    out: dict[str, Any] = {"summary": {}, "history": [], "config": {}, "run_id": None, "file": str(path)}

    def key_of(item) -> str:
        return "/".join(item.nested_key) if len(item.nested_key) else item.key

    def value_of(item):
        try:
            return json.loads(item.value_json)
        except ValueError:
            return item.value_json

    for payload in _records(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception:
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({key_of(i): value_of(i) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][key_of(i)] = value_of(i)
        elif kind == "config":
            for i in rec.config.update:
                out["config"][key_of(i)] = value_of(i)
        elif kind == "run":
            out["run_id"] = rec.run.run_id
            for i in rec.run.config.update:
                out["config"][key_of(i)] = value_of(i)
    # History rows carry every logged value; summary records may be absent in offline runs.
    for row in out["history"]:
        for k, v in row.items():
            if not k.startswith("_"):
                out["summary"].setdefault(k, v)
    return out


def wait_for_wandb_run(path: str | os.PathLike, key: str, timeout_s: float = 60.0) -> dict:
    """`read_wandb_run(path)` once `key` is in its summary, polling up to `timeout_s`.

    In-process, `run.finish()` can return before the wandb-core service has written the last
    records to the transaction log (seen on a loaded 2-core CI machine), so a test that reads the
    file straight after finish() would race the writer. On timeout the AssertionError carries the
    tail of the run's internal log.
    """
    deadline = time.monotonic() + timeout_s
    run: dict = {}
    while True:
        try:
            run = read_wandb_run(path)
            if key in run["summary"]:
                return run
        except (FileNotFoundError, ValueError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    logs = sorted(Path(path).glob("wandb/*run-*/logs/debug-internal.log"))
    tail = logs[-1].read_text(errors="replace")[-3000:] if logs else "(no debug-internal.log)"
    raise AssertionError(
        f"{key!r} not in the W&B run under {path} after {timeout_s:.0f} s; read {run}; log tail:\n{tail}"
    )
