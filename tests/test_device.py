"""Ranking, SOMP and head effects on the `device` fixture (CUDA when available, else the CPU) agree
with the all-CPU path; activations may stay on the CPU while the model is on the device; torch's
deterministic mode toggles and restores."""

from __future__ import annotations

import os

import pytest
import torch

from headpursuit.capture import CaptureSample
from headpursuit.determinism import DeterminismSettings, deterministic, set_deterministic
from headpursuit.effects import answer_logprob
from headpursuit.ranking import METHODS, HeadWeights, explain_head, rank_heads
from headpursuit.somp import head_dictionary, somp, somp_heads, somp_reference

CONCEPT = list(range(10, 20))


class FakeTokenizer:
    name_or_path = "fake"

    def decode(self, ids, **kw):
        return "".join(f" tok{i}" for i in ids)


def _problem(n=24, L=2, H=3, dh=4, d=64, V=300):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(V, d, generator=g)
    gain = 0.5 + torch.rand(d, generator=g)
    W = torch.randn(L, d, H * dh, generator=g) / d**0.5
    W[1, :, 2 * dh : 3 * dh] = (U[[12, 13, 15, 17]] * gain).T / 8  # a concept head
    z = torch.randn(n, L, H, dh, generator=g)
    return z, W, U, gain


def _weights(W, U, gain, device):
    return {
        "W_O": W.to(device),
        "unembedding": U.to(device),
        "norm_gain": gain.to(device),
        "tokenizer": FakeTokenizer(),
    }


def test_somp_reference_on_device(device):
    g = torch.Generator().manual_seed(0)
    H = torch.randn(3, 10, 32, generator=g, dtype=torch.float64)
    D = torch.randn(200, 32, generator=g, dtype=torch.float64)
    mask = torch.ones(200, dtype=torch.bool)
    mask[::7] = False
    cpu = somp_reference(H, D, 4, atom_mask=mask)
    dev = somp_reference(H.to(device), D.to(device), 4, atom_mask=mask)  # the mask may stay on the CPU
    assert dev.indices.device.type == device.type
    assert torch.equal(dev.indices.cpu(), cpu.indices)
    assert torch.allclose(dev.explained_variance.cpu(), cpu.explained_variance, atol=1e-10)
    fast = somp(H.to(device), D.to(device), 4, atom_mask=mask.to(device))
    assert torch.equal(fast.indices.cpu(), cpu.indices)


def test_somp_heads_with_z_on_the_cpu_and_weights_on_device(device):
    z, W, U, gain = _problem(n=40)
    cpu = somp_heads(z, W, U, 5, norm_gain=gain)
    mixed = somp_heads(z, W.to(device), U.to(device), 5, norm_gain=gain.to(device), head_batch=2)
    on_dev = somp_heads(z.to(device), W.to(device), U.to(device), 5, norm_gain=gain.to(device))
    for res in (mixed, on_dev):
        assert res.indices.device.type == device.type
        assert torch.equal(res.indices.cpu(), cpu.indices)
        assert torch.allclose(res.explained_variance.cpu(), cpu.explained_variance, atol=1e-5)


def _same_table(a, b, atol=1e-6):
    ta, tb = a.table, b.table
    assert ta[["layer", "head", "rank", "top_tokens"]].equals(tb[["layer", "head", "rank", "top_tokens"]])
    assert (ta["score"] - tb["score"]).abs().max() <= atol
    ev = (ta["explained_variance"] - tb["explained_variance"]).abs()
    assert ev.isna().equals(ta["explained_variance"].isna()) and ev.fillna(0).max() <= atol


@pytest.mark.parametrize("method", sorted(METHODS))
def test_rank_heads_on_device_equals_cpu(device, method):
    z, W, U, gain = _problem()
    cpu = rank_heads(z, _weights(W, U, gain, "cpu"), CONCEPT, method=method, somp_steps=4)
    # activations on the CPU, model on the device: z is moved there batch by batch
    mixed = rank_heads(z, _weights(W, U, gain, device), CONCEPT, method=method, somp_steps=4)
    on_dev = rank_heads(z.to(device), _weights(W, U, gain, device), CONCEPT, method=method, somp_steps=4)
    for scores in (mixed, on_dev):
        _same_table(scores, cpu)
        assert scores.meta["device"] == str(torch.device(device))
    assert cpu.meta["device"] == "cpu"


def test_explain_head_on_device(device):
    z, W, U, gain = _problem()
    cpu = explain_head(z, _weights(W, U, gain, "cpu"), 1, 2, somp_steps=4)
    dev = explain_head(z, _weights(W, U, gain, device), 1, 2, somp_steps=4)
    assert cpu["token_id"].tolist() == dev["token_id"].tolist()
    assert (cpu["explained_variance"] - dev["explained_variance"]).abs().max() < 1e-6


def test_head_weights_are_float32_on_the_models_device(device):
    from headpursuit.models.tiny import tiny_text_model

    lm = tiny_text_model("llama", dtype=torch.bfloat16, device=str(device))
    w = HeadWeights.from_model(lm, [0, 1])
    assert w.W_O.dtype == w.unembedding.dtype == torch.float32
    assert w.W_O.device.type == w.unembedding.device.type == device.type
    assert w.device.type == device.type
    cut = HeadWeights(w.W_O.cpu(), w.unembedding, w.norm_gain, None, "x").for_layers([0, 1])
    assert cut.W_O.device.type == device.type  # W_O follows the unembedding


def test_answer_logprob_on_device_equals_cpu(device):
    from headpursuit.models.tiny import tiny_text_model

    samples = [CaptureSample("The capital of France is", " Paris"), CaptureSample("One, two,", " three four")]
    cpu = answer_logprob(tiny_text_model("llama"), samples, scales={(0, 1): 0.0})
    lm = tiny_text_model("llama", device=str(device))
    dev = answer_logprob(lm, samples, scales={(0, 1): 0.0})
    assert dev.device.type == "cpu" and dev.dtype == torch.float32
    assert torch.allclose(dev, cpu, atol=1e-4)


def test_set_deterministic_toggles_and_restores(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = DeterminismSettings.current()
    assert not before.algorithms  # the test session runs with torch's defaults
    previous = set_deterministic()
    try:
        assert previous == before
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.matmul.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        # deterministic mode computes what the default mode does
        D, _, _ = head_dictionary(torch.randn(100, 16, generator=torch.Generator().manual_seed(1)))
        H = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
        assert somp(H, D, 3).indices.tolist() == somp_reference(H.double(), D.double(), 3).indices.tolist()
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        previous.restore()
    assert DeterminismSettings.current() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(warn_only=False):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert DeterminismSettings.current() == before


def test_deterministic_config_key_is_validated():
    from headpursuit.app.config import ConfigError, validate_config

    cfg = {
        "model": {"name_or_path": "smollm2"},
        "task": {"name": "qa_countries"},
        "ranking": {"method": "concept_share"},
        "intervention": {"alpha": -1.0, "k": 2, "random_seeds": [0, 1]},
        "deterministic": "sometimes",
    }
    with pytest.raises(ConfigError, match="deterministic: .*'sometimes' is not a valid bool"):
        validate_config(cfg)
    assert validate_config({**cfg, "deterministic": True}).deterministic is True
