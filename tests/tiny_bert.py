"""A small random-weight BERT encoder written as a sentence-transformers
directory (config.json, model.safetensors, a WordPiece tokenizer.json, and
optionally modules.json with its Pooling config), for tests of the encoder.

The Hugging Face -> kernel tensor names are written out here rather than
imported from pycompat.models.bert, so that a wrong mapping there makes the
kernel disagree with the numpy reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pycompat.loading.safetensors import write_safetensors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "hello", "world", "quick", "brown", "fox", ".", ",", "!"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = SPECIALS + WORDS + LETTERS + ["##" + c for c in LETTERS]
CLS, SEP = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")


@dataclass
class TinyBert:
    dim: int = 64  # a multiple of 32, so that quantizing has matrices to quantize
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 128
    n_positions: int = 40
    max_seq_length: int | None = 32  # sentence_bert_config.json's; None: no such file
    pooling: str = "mean"  # "mean" or "cls"
    normalize: bool = True
    sentence_transformers: bool = True  # write modules.json and the Pooling config
    norm_eps: float = 1e-12


def random_weights(cfg: TinyBert, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights under Hugging Face names. Biases, positions and the token
    type are as large as what they are added to, so that leaving one out shows."""
    rng = np.random.default_rng(seed)
    d, f = cfg.dim, cfg.ffn_dim

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n, center=0.0, spread=0.5):
        return (center + spread * rng.standard_normal(n)).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": rng.standard_normal((len(VOCAB), d)).astype(np.float32),
        "embeddings.position_embeddings.weight": rng.standard_normal((cfg.n_positions, d)).astype(np.float32),
        "embeddings.token_type_embeddings.weight": rng.standard_normal((2, d)).astype(np.float32),
        "embeddings.LayerNorm.weight": vec(d, 1.0, 0.1),
        "embeddings.LayerNorm.bias": vec(d, 0.0, 0.1),
        "pooler.dense.weight": mat(d, d),  # not read by an embedding model
        "pooler.dense.bias": vec(d),
    }
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}."
        # Sharper attention than 1/sqrt(cols) weights give; MLP inputs spread over
        # the range where GELU's approximations are furthest off (|x| ~ 2-3), and
        # its output as large as the residual it is added to.
        for name, rows, cols, scale in [
            ("attention.self.query", d, d, 2.0),
            ("attention.self.key", d, d, 2.0),
            ("attention.self.value", d, d, 1.0),
            ("attention.output.dense", d, d, 1.0),
            ("intermediate.dense", f, d, 3.0),
            ("output.dense", d, f, 3.0),
        ]:
            w[p + name + ".weight"] = mat(rows, cols) * scale
            w[p + name + ".bias"] = vec(rows)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = vec(d, 1.0, 0.1)
            w[p + name + ".bias"] = vec(d, 0.0, 0.1)
    return w


def write_tokenizer(path: Path) -> None:
    """A lower-casing WordPiece tokenizer.json that adds [CLS] ... [SEP], with
    truncation and padding switched on as sentence-transformers' files have them
    (the loader must switch them off)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    tk.add_special_tokens(SPECIALS)
    tk.enable_truncation(8)
    tk.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tk.save(str(path))


def write_tiny_bert(directory: Path, cfg: TinyBert = TinyBert(), seed: int = 0) -> dict[str, np.ndarray]:
    """Writes the model to ``directory``; returns its weights (Hugging Face names)."""
    directory.mkdir(parents=True, exist_ok=True)
    w = random_weights(cfg, seed)
    arrays = {"embeddings.position_ids": np.arange(cfg.n_positions, dtype=np.int64)[None], **w}
    write_safetensors(directory / "model.safetensors", arrays, {"embeddings.position_ids": "I64"})
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_dim,
        "hidden_act": "gelu",
        "vocab_size": len(VOCAB),
        "max_position_embeddings": cfg.n_positions,
        "type_vocab_size": 2,
        "layer_norm_eps": cfg.norm_eps,
        "position_embedding_type": "absolute",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(directory / "tokenizer.json")
    if cfg.max_seq_length is not None:
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": cfg.max_seq_length}))
    if cfg.sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if cfg.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "modules.json").write_text(json.dumps(modules, indent=2))
        (directory / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": cfg.dim,
            "pooling_mode_cls_token": cfg.pooling == "cls",
            "pooling_mode_mean_tokens": cfg.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return w


# Hugging Face -> kernel names (rust/model/bert.rs), written from llama.cpp's naming of BERT.
_GLOBAL = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def reference_weights(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face names -> the kernel's, which the numpy reference reads (others dropped)."""
    out = {}
    for name, value in hf.items():
        if name in _GLOBAL:
            out[_GLOBAL[name]] = value
        elif m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name):
            out[f"blk.{m[1]}.{_LAYER[m[2]]}.{m[3]}"] = value
    return out


def reference_config(cfg: TinyBert) -> dict:
    return {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "norm_eps": cfg.norm_eps, "pooling": cfg.pooling, "normalize": cfg.normalize}
