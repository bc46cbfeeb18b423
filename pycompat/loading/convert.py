"""`pycompat convert`: a GGUF file to a Hugging Face model directory, so the
safetensors path is exercised on the same weights.

Quantized tensors are dequantized by the kernel's own routine. The model's
family (pycompat/models/) names the tensors and hyper-parameters the Hugging
Face way and puts tensors back in Hugging Face's layout (un-permuting the Q
and K rows GGUF's llama converter permutes), so the directory behaves like any
Hugging Face checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pycompat import _kernel
from pycompat.loading.errors import ModelFileError
from pycompat.loading.gguf import read_gguf
from pycompat.loading.gguf_model import load_gguf
from pycompat.loading.safetensors import write_safetensors
from pycompat.models.registry import family_for_arch

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": "bf16"}


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
        family = family_for_arch(cfg.arch)
        md = gguf.metadata
        arrays, dtypes = {}, {}
        for t in gguf.tensors.values():
            kname = family.kernel_name_from_gguf(t.name)
            if kname is None:
                continue
            values = np.frombuffer(_kernel.dequantize(t.ggml_type.name, t.data, t.n_elements), dtype="<f4").reshape(t.shape)
            values = family.to_hf_layout(kname, values, cfg)
            name = family.hf_name(kname)
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
    config = {
        **family.hf_config(cfg, md, tied),
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


__all__ = ["convert_gguf_to_hf", "ModelFileError"]
