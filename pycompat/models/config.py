"""The model config the kernel runs by: what a family (pycompat/models/llama.py,
...) reads from a model's files, and what rust/model/mod.rs `Config` reads
back, attribute by attribute, when the model is loaded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # the kernel's architecture: "llama" or "qwen2"
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    # Rotary pairs are (i, i + rot/2) when true (Hugging Face's layout), (2i, 2i+1) otherwise.
    rope_neox: bool
    # One inverse frequency per rotary pair, any context-extension scaling folded in.
    rope_inv_freq: list[float]
    # The most positions a sequence may hold: the model's trained context, until
    # load_model caps it at the context asked for.
    max_seq_len: int
    # Keep the KV cache in f16 (llama.cpp's default) rather than f32; set by load_model.
    kv_f16: bool = False
