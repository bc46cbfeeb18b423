"""A Hugging Face model directory (config.json, safetensors, tokenizer files) as a ModelSpec."""

from __future__ import annotations

import re
from pathlib import Path

from pycompat.loading.errors import ModelFileError
from pycompat.loading.rope import inverse_frequencies
from pycompat.loading.safetensors import read_safetensors
from pycompat.loading.spec import KernelWeights, ModelSpec, WeightTensor
from pycompat.loading.tokenizer import Tokenizer, read_json

SUPPORTED_MODEL_TYPES = {"llama", "mistral"}

# Hugging Face tensor names -> the GGUF names the kernel uses.
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
HF_NAME_FOR = {v: k for k, v in _GLOBAL_NAMES.items()}


def kernel_name(hf_name: str) -> str | None:
    """The GGUF-style name of a Hugging Face tensor, or None if the kernel does not use it."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def hf_name(kernel_tensor_name: str) -> str:
    """Inverse of kernel_name."""
    if kernel_tensor_name in HF_NAME_FOR:
        return HF_NAME_FOR[kernel_tensor_name]
    _, layer, short, _ = kernel_tensor_name.split(".")
    long = next(k for k, v in _LAYER_NAMES.items() if v == short)
    return f"model.layers.{layer}.{long}.weight"


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, required=True).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(index, "has no weight_map")
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if not single.exists():
        raise ModelFileError(directory, "no model.safetensors or model.safetensors.index.json")
    return [single]


def load_hf_dir(directory: Path) -> ModelSpec:
    cfg = read_json(directory / "config.json", required=True)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelFileError(directory / "config.json", f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})")
    try:
        dim, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or dim // n_heads)
        inv_freq = inverse_frequencies(head_dim, float(cfg.get("rope_theta", 10000.0)), cfg.get("rope_scaling"))
        config = {
            "dim": dim,
            "n_layers": int(cfg["num_hidden_layers"]),
            "n_heads": n_heads,
            "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads),
            "head_dim": head_dim,
            "ffn_dim": int(cfg["intermediate_size"]),
            "vocab_size": int(cfg["vocab_size"]),
            "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "rope_neox": True,  # Hugging Face checkpoints rotate (i, i + d/2) pairs
            "rope_inv_freq": [float(f) for f in inv_freq],
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(directory / "config.json", f"bad or missing hyper-parameter: {e}") from None
    tied = bool(cfg.get("tie_word_embeddings", False))

    tensors = []
    for file in _safetensors_files(directory):
        for name, t in read_safetensors(file).items():
            kname = kernel_name(name)
            if kname is None or (tied and kname == "output.weight"):
                continue
            tensors.append(WeightTensor(kname, t.dtype, t.shape, file, t.offset, t.data))

    tokenizer_config = read_json(directory / "tokenizer_config.json")
    generation_config = read_json(directory / "generation_config.json")
    tokenizer = Tokenizer.from_hf_dir(directory, tokenizer_config, generation_config)
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # a list of named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return ModelSpec(
        name=directory.name,
        weights=KernelWeights(config, tensors),
        tokenizer=tokenizer,
        chat_template=template,
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        sampling_defaults={k: generation_config[k] for k in ("temperature", "top_p", "top_k", "min_p") if isinstance(generation_config.get(k), (int, float))},
    )
