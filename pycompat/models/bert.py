"""BERT encoders (sentence-transformers models such as all-MiniLM-L6-v2): the
one place that knows how Hugging Face describes them, config.json keys and
tensor names, and what the kernel's encoder (rust/model/bert.rs) is told.

The kernel names tensors as llama.cpp's GGUF files of BERT models do
(`token_embd.weight`, `blk.N.attn_q.weight`, ...); a Hugging Face name is
mapped here. Checkpoints saved from a task model carry a `bert.` prefix, and
old ones name LayerNorm's parameters gamma and beta; both are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycompat.loading.errors import ModelFileError


@dataclass(frozen=True)
class EncoderConfig:
    """What rust/model/bert.rs `BertConfig` reads, attribute by attribute."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    vocab_size: int
    n_positions: int  # rows of the position embedding (max_position_embeddings)
    n_token_types: int  # rows of the token-type embedding (every token takes type 0)
    max_seq_len: int  # the most tokens a sequence may have, [CLS] and [SEP] included
    norm_eps: float
    pooling: str  # "mean" or "cls"
    normalize: bool  # L2-normalize each embedding


_GLOBAL_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
# Below encoder.layer.N. -> below blk.N. (each with .weight and .bias).
_LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
_OLD_NAMES = {"gamma": "weight", "beta": "bias"}

HF_MODEL_TYPES = ("bert",)


def kernel_name_from_hf(name: str) -> str | None:
    """The kernel's name for the Hugging Face tensor ``name``, or None for one the
    encoder does not read (the pooler, the masked-LM head, position_ids)."""
    name = name.removeprefix("bert.")
    stem, _, last = name.rpartition(".")
    if last in _OLD_NAMES and stem.endswith("LayerNorm"):
        name = f"{stem}.{_OLD_NAMES[last]}"
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_TENSORS:
        return f"blk.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}.{m.group(3)}"
    return None


def config_from_hf(hf: dict[str, Any], source: Path, max_seq_len: int | None, pooling: str, normalize: bool) -> EncoderConfig:
    """The encoder config.json (``hf``, read from ``source``) describes, for
    sequences of at most ``max_seq_len`` tokens (None: as many as it has positions).

    Raises ModelFileError for a missing or bad hyper-parameter, or a variant of
    BERT the kernel does not compute (another activation, relative positions).
    """
    if hf.get("model_type") not in HF_MODEL_TYPES:
        raise ModelFileError(source, f"model_type {hf.get('model_type')!r} is not an encoder the kernel runs (supported: {', '.join(HF_MODEL_TYPES)})")
    # Anything else would be computed wrongly without a word: refuse it.
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ModelFileError(source, f"hidden_act {hf['hidden_act']!r} is not supported (the kernel's BERT uses the exact gelu)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ModelFileError(source, f"position_embedding_type {hf['position_embedding_type']!r} is not supported (only absolute)")
    if hf.get("is_decoder"):
        raise ModelFileError(source, "a BERT decoder (is_decoder) is not an encoder")
    try:
        n_positions = int(hf.get("max_position_embeddings", 512))
        return EncoderConfig(
            dim=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]),
            ffn_dim=int(hf["intermediate_size"]),
            vocab_size=int(hf["vocab_size"]),
            n_positions=n_positions,
            n_token_types=int(hf.get("type_vocab_size", 2)),
            max_seq_len=min(max_seq_len or n_positions, n_positions),
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            pooling=pooling,
            normalize=normalize,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(source, f"bad or missing hyper-parameter: {e}") from None
