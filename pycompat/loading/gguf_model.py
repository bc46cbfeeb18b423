"""A GGUF file (llama architecture) as a ModelSpec."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pycompat.loading.errors import ModelFileError
from pycompat.loading.gguf import read_gguf
from pycompat.loading.rope import inverse_frequencies
from pycompat.loading.spec import KernelWeights, ModelSpec, WeightTensor
from pycompat.loading.tokenizer import Tokenizer

# Architectures whose tensors and hyper-parameters follow the llama layout.
SUPPORTED_ARCHITECTURES = {"llama"}
_GGUF_SAMPLING = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}


def load_gguf(path: Path) -> ModelSpec:
    gguf = read_gguf(path)
    try:
        return _spec(path, gguf)
    except BaseException:
        gguf.close()
        raise


def _spec(path: Path, gguf) -> ModelSpec:
    md = gguf.metadata
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(path, f"architecture {arch!r} is not supported (supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})")

    def hp(key: str, default=None):
        value = md.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelFileError(path, f"metadata {arch}.{key} is missing")
        return value

    embed = gguf.tensors.get("token_embd.weight")
    if embed is None:
        raise ModelFileError(path, "tensor token_embd.weight is missing")
    dim, n_heads = int(hp("embedding_length")), int(hp("attention.head_count"))
    head_dim = int(hp("attention.key_length", dim // max(n_heads, 1)))
    rot_dim = int(hp("rope.dimension_count", head_dim))
    scaling = None
    if md.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        scaling = {"type": md[f"{arch}.rope.scaling.type"], "factor": md.get(f"{arch}.rope.scaling.factor", 1.0)}
    try:
        inv_freq = inverse_frequencies(rot_dim, float(hp("rope.freq_base", 10000.0)), scaling)
    except (ValueError, KeyError) as e:
        raise ModelFileError(path, str(e)) from None
    tensors = dict(gguf.tensors)
    factors = tensors.pop("rope_freqs.weight", None)  # llama3-style long-context factors
    if factors is not None:
        inv_freq = inv_freq / np.frombuffer(factors.data, dtype="<f4")[: len(inv_freq)]

    config = {
        "dim": dim,
        "n_layers": int(hp("block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(hp("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "ffn_dim": int(hp("feed_forward_length")),
        "vocab_size": embed.shape[0],
        "norm_eps": float(hp("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_neox": False,  # GGUF's llama tensors are permuted for adjacent-pair rotation
        "rope_inv_freq": [float(f) for f in inv_freq],
    }
    weights = KernelWeights(config, [WeightTensor(t.name, t.ggml_type.name, t.shape, path, t.offset, t.data) for t in tensors.values()])
    name = md.get("general.name") or path.stem
    return ModelSpec(
        name=name,
        weights=weights,
        tokenizer=Tokenizer.from_gguf(path, md),
        chat_template=md.get("tokenizer.chat_template"),
        context_length=int(hp("context_length", 2048)),
        sampling_defaults={k: md[f"general.sampling.{g}"] for k, g in _GGUF_SAMPLING.items() if f"general.sampling.{g}" in md},
        closers=[gguf.close],
    )
