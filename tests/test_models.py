"""Model loading and the family registry."""

import pytest
import torch

from headpursuit.models import FAMILIES, family_for, load_model
from headpursuit.models.tiny import tiny_text_model


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"])
def test_registry_finds_parts_of_each_text_family(model_type):
    lm = tiny_text_model(model_type)
    cfg = lm.model.config
    assert lm.layout.n_layers == cfg.num_hidden_layers
    assert lm.layout.n_heads == cfg.num_attention_heads
    assert lm.layout.head_dim == (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    for i in range(lm.layout.n_layers):
        # the found module is exactly this layer's attention output projection
        assert lm.o_proj(i) is lm.model.model.layers[i].self_attn.o_proj
    assert lm.final_norm() is lm.model.model.norm
    assert lm.unembedding().shape == (cfg.vocab_size, cfg.hidden_size)
    gain = lm.final_norm_gain()
    expected = lm.model.model.norm.weight.detach() + (1.0 if model_type.startswith("gemma") else 0.0)
    torch.testing.assert_close(gain, expected)
    assert lm.provenance["random_init"] and "RANDOM" in lm.describe()


def test_unknown_architecture_lists_supported():
    class Cfg:
        model_type = "bert"

    with pytest.raises(ValueError) as e:
        family_for(Cfg())
    msg = str(e.value)
    assert "bert" in msg and "llama" in msg and "families/" in msg


def test_unknown_model_name_is_clear():
    with pytest.raises(ValueError, match="Unknown model 'smollm3'.*smollm2"):
        load_model("smollm3")


def test_families_cover_the_paper_models():
    types = {t for f in FAMILIES.values() for t in f.model_types}
    assert {"mistral", "llava_next", "llama", "qwen2", "qwen3", "gemma3_text", "qwen2_5_vl"} <= types


def test_bad_dtype():
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_model("smollm2", dtype="float8")


@pytest.mark.slow
def test_second_load_comes_from_dequantised_cache(smollm2, device):
    again = load_model("smollm2", dtype="float32", device=str(device))  # the cache feeds any device
    assert again.provenance["from_cache"] is True and again.device.type == device.type
    torch.testing.assert_close(again.output_weight(3).cpu(), smollm2.output_weight(3))
    assert "4-bit" in again.provenance["notes"][0]


def test_local_directory_loads_like_a_hub_checkpoint(tmp_path):
    lm = tiny_text_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    back = load_model(str(tmp_path), dtype="float32", device="cpu")
    assert back.family.name == "qwen" and back.provenance["source"] == "local"
    enc = back.encode(["hello there"])
    with torch.no_grad():
        torch.testing.assert_close(back.model(**enc).logits, lm.model(**enc).logits)


def test_hub_id_without_network_names_the_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="hub access"):
        load_model("nobody-xyz/not-a-model-123")
