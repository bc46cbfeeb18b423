"""`pycompat convert`: a GGUF file (llama architecture) to a Hugging Face model
directory, so the safetensors path is exercised on the same weights.

Quantized tensors are dequantized by the kernel's own routine. Q and K are
un-permuted back to Hugging Face's rotary layout (GGUF's llama converter
permutes them for adjacent-pair rotation), so the directory behaves like
any Hugging Face checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pycompat import _kernel
from pycompat.loading.errors import ModelFileError
from pycompat.loading.gguf import read_gguf
from pycompat.loading.gguf_model import load_gguf
from pycompat.loading.hf_model import hf_name
from pycompat.loading.safetensors import write_safetensors

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": "bf16"}


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo GGUF's per-head row interleave: row 2i+j of a head becomes row j·(d/2)+i."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def convert_gguf_to_hf(src: str | Path, out_dir: str | Path, dtype: str = "f16") -> Path:
    """Writes config.json, model.safetensors and the tokenizer files to ``out_dir``."""
    src, out = Path(src), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
    spec = load_gguf(src)  # validates architecture and hyper-parameters
    gguf = read_gguf(src)
    try:
        cfg = spec.weights.config
        md = gguf.metadata
        arrays, dtypes = {}, {}
        for t in gguf.tensors.values():
            if t.name == "rope_freqs.weight":
                continue
            values = np.frombuffer(_kernel.dequantize(t.ggml_type.name, t.data, t.n_elements), dtype="<f4").reshape(t.shape)
            if t.name.endswith("attn_q.weight"):
                values = unpermute_rotary(values, cfg["n_heads"])
            elif t.name.endswith("attn_k.weight"):
                values = unpermute_rotary(values, cfg["n_kv_heads"])
            name = hf_name(t.name)
            if dtype == "bf16":
                arrays[name], dtypes[name] = _to_bf16_bits(values), "BF16"
            else:
                arrays[name] = values.astype(DTYPES[dtype])
        out.mkdir(parents=True, exist_ok=True)
        write_safetensors(out / "model.safetensors", arrays, dtypes)
        tied = "output.weight" not in gguf.tensors
    finally:
        gguf.close()
        spec.release()

    tok = spec.tokenizer
    rope_theta = float(md.get("llama.rope.freq_base", 10000.0))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg["dim"],
        "num_hidden_layers": cfg["n_layers"],
        "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "head_dim": cfg["head_dim"],
        "intermediate_size": cfg["ffn_dim"],
        "vocab_size": cfg["vocab_size"],
        "rms_norm_eps": cfg["norm_eps"],
        "rope_theta": rope_theta,
        "max_position_embeddings": spec.context_length,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer.json").write_text(tok.to_json())
    token_config = {
        "bos_token": tok.bos_text or None,
        "eos_token": tok.eos_text or None,
        "add_bos_token": tok.add_bos,
        "chat_template": spec.chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(token_config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": sorted(tok.stop_ids)}, indent=2))
    return out


__all__ = ["convert_gguf_to_hf", "ModelFileError", "unpermute_rotary"]
