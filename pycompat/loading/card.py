"""What a model's files say about it, for the routes that describe models
(Ollama's /api/tags, /api/show, /api/ps): format, size, architecture,
parameter count, quantization, and the architecture's keys as GGUF names
them (``llama.context_length``, ``llama.block_count``...).

Read from the file headers only, never the weights, so describing a model
costs milliseconds whatever its size.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycompat.loading.gguf import read_gguf

# GGUF's general.file_type: what most of the weights are stored as (llama.cpp's LLAMA_FTYPE).
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}
# Hugging Face config.json keys, as GGUF names them under the architecture's prefix.
_HF_KEYS = {
    "max_position_embeddings": "context_length",
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "intermediate_size": "feed_forward_length",
    "vocab_size": "vocab_size",
    "rope_theta": "rope.freq_base",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "layer_norm_eps": "attention.layer_norm_epsilon",
}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class ModelCard:
    path: Path
    format: str  # "gguf" or "safetensors"
    size: int  # bytes of the weight files
    modified: float  # the newest weight file's mtime (unix seconds)
    family: str  # the architecture: "llama", "qwen2", "bert"
    parameter_count: int
    quantization: str  # what most weights are stored as: "Q4_1", "F16", "F32"
    info: dict[str, Any] = field(default_factory=dict)  # general.* and the architecture's keys; scalars only

    @property
    def digest(self) -> str:
        """A stable id of these files (sha256 of their path, size and mtime): hashing
        gigabytes of weights for a listing would take seconds."""
        return hashlib.sha256(f"{self.path.resolve()}\0{self.size}\0{self.modified}".encode()).hexdigest()

    @property
    def parameter_size(self) -> str:
        """The parameter count as Ollama shows it: "135.0M", "8.0B"."""
        n = self.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f}{unit}"
        return str(n)


def describe(path: str | Path) -> ModelCard:
    """The card of the model at ``path``: a GGUF file, or a Hugging Face
    directory of safetensors files and config.json."""
    path = Path(path)
    return _from_hf_dir(path) if path.is_dir() else _from_gguf(path)


def _from_gguf(path: Path) -> ModelCard:
    gguf = read_gguf(path)
    try:
        meta = gguf.metadata
        parameters = sum(t.n_elements for t in gguf.tensors.values())
    finally:
        gguf.close()
    arch = str(meta.get("general.architecture", "unknown"))
    # Scalars only: token lists and merges are megabytes, and the template is shown on its own.
    info = {k: v for k, v in meta.items()
            if isinstance(v, (int, float, str, bool)) and k != "tokenizer.chat_template"}
    info["general.parameter_count"] = parameters
    stat = path.stat()
    file_type = meta.get("general.file_type")
    return ModelCard(path, "gguf", stat.st_size, stat.st_mtime, arch, parameters,
                     GGUF_FILE_TYPES.get(file_type, f"type {file_type}" if file_type is not None else "unknown"), info)


def _from_hf_dir(directory: Path) -> ModelCard:
    config = json.loads((directory / "config.json").read_text())
    files = sorted(directory.glob("*.safetensors"))
    parameters, bytes_by_dtype = 0, {}
    for f in files:
        for name, entry in _safetensors_header(f).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in entry["shape"]:
                n *= int(d)
            parameters += n
            bytes_by_dtype[entry["dtype"]] = bytes_by_dtype.get(entry["dtype"], 0) + n * _SAFETENSORS_BYTES.get(entry["dtype"], 1)
    arch = str(config.get("model_type", "unknown"))
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": parameters}
    for hf_key, gguf_key in _HF_KEYS.items():
        if isinstance(config.get(hf_key), (int, float)):
            info[f"{arch}.{gguf_key}"] = config[hf_key]
    dtype = max(bytes_by_dtype, key=bytes_by_dtype.get) if bytes_by_dtype else "unknown"
    stats = [f.stat() for f in files]
    return ModelCard(directory, "safetensors", sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0),
                     arch, parameters, dtype, info)


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(min(length, 100 << 20)))
