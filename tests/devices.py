"""Test helper: the CPU pin, said once.

The library's and the app's defaults are `device=auto` / `dtype=auto`: CUDA and bfloat16 on a machine
with a GPU. Every test says where it runs:

- on the GPU on purpose: it takes the `device` fixture (tests/conftest.py; CUDA when available, else
  the CPU), or is marked `gpu` (skipped without CUDA), and compares across devices with tolerances;
- on the CPU on purpose: it loads with `load_model(..., **CPU)` and runs the app with
  `*CPU_OVERRIDES`, because its expected values, its exact comparisons (token for token, results.json
  against results.json) or the CPU defaults it checks (`batch_size=auto` is fixed on the CPU) hold
  for float32 on the CPU. `tiny_text_model` and the `smollm2` / `tiny_vlm` fixtures are on the CPU
  already (float32).
"""

from __future__ import annotations

# load_model(name, **CPU)
CPU = {"device": "cpu", "dtype": "float32"}
# python -m headpursuit ... *CPU_OVERRIDES
CPU_OVERRIDES = tuple(f"{key}={value}" for key, value in CPU.items())
