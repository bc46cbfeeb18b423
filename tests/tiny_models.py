"""Small random-weight Llama and Qwen2 models, written as GGUF files and as
Hugging Face directories, for tests that need shapes other than the bundled model's.

Weights are made in Hugging Face layout (rotary pairs (i, i + d/2)); for a
Llama model the GGUF writer permutes Q and K rows the way llama.cpp's converter
does (it leaves Qwen2's as they are), so the two files describe the same model
and must give the same logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pycompat.loading.gguf import write_gguf
from pycompat.loading.safetensors import write_safetensors

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class TinyConfig:
    arch: str = "llama"  # or "qwen2": Q, K and V biases
    dim: int = 96
    n_layers: int = 3
    n_heads: int = 6
    n_kv_heads: int = 2
    ffn_dim: int = 160
    rope_theta: float = 10000.0
    context_length: int = 256
    tied: bool = False
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def byte_vocab(extra_specials: tuple[str, ...] = ()) -> tuple[list[str], list[str], list[int]]:
    """A byte-level BPE vocabulary: the special tokens (then ``extra_specials``), the 256 byte symbols, a few merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet(), key=lambda s: ord(s))
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
    specials = SPECIALS + list(extra_specials)
    tokens = specials + symbols + [m.replace(" ", "") for m in merges]
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, merges, types


def random_weights(cfg: TinyConfig, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights under Hugging Face names."""
    rng = np.random.default_rng(seed)
    hd = cfg.head_dim

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(vocab, cfg.dim), "model.norm.weight": norm(cfg.dim)}
    if not cfg.tied:
        w["lm_head.weight"] = mat(vocab, cfg.dim)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(cfg.dim)
        w[p + "self_attn.q_proj.weight"] = mat(cfg.n_heads * hd, cfg.dim)
        w[p + "self_attn.k_proj.weight"] = mat(cfg.n_kv_heads * hd, cfg.dim)
        w[p + "self_attn.v_proj.weight"] = mat(cfg.n_kv_heads * hd, cfg.dim)
        if cfg.arch == "qwen2":
            # As large as the products they are added to, so that they matter.
            for proj, heads in (("q", cfg.n_heads), ("k", cfg.n_kv_heads), ("v", cfg.n_kv_heads)):
                w[p + f"self_attn.{proj}_proj.bias"] = rng.standard_normal(heads * hd).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = mat(cfg.dim, cfg.n_heads * hd)
        w[p + "post_attention_layernorm.weight"] = norm(cfg.dim)
        w[p + "mlp.gate_proj.weight"] = mat(cfg.ffn_dim, cfg.dim)
        w[p + "mlp.up_proj.weight"] = mat(cfg.ffn_dim, cfg.dim)
        w[p + "mlp.down_proj.weight"] = mat(cfg.dim, cfg.ffn_dim)
    return w


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face rotary row order -> llama.cpp's (adjacent pairs), per head."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


# Written out here rather than imported from pycompat.loading.hf_model, so that a
# wrong mapping there makes the two formats disagree with the reference and fail.
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
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


def gguf_name(hf: str) -> str:
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    _, _, layer, *rest = hf.split(".")
    return f"blk.{layer}.{GGUF_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"


# --- block quantizers, written here independently of the kernel's --------------------


def _f16_bytes(a: np.ndarray) -> np.ndarray:
    return a.astype("<f2").view(np.uint8).reshape(len(a), 2)


def quantize(values: np.ndarray, kind: str) -> bytes:
    """ggml block formats from float32 rows (row length a multiple of 32)."""
    if kind == "F32":
        return values.astype("<f4").tobytes()
    if kind == "F16":
        return values.astype("<f2").tobytes()
    if kind == "BF16":  # round to nearest even, keep the top 16 bits
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    blocks = values.reshape(-1, 32).astype(np.float32)
    if kind == "Q8_0":
        d = np.abs(blocks).max(1) / 127
        q = np.round(blocks / np.where(d == 0, 1, d)[:, None]).astype(np.int8)
        return np.concatenate([_f16_bytes(d), q.view(np.uint8)], 1).tobytes()
    if kind == "Q4_0":
        idx = np.abs(blocks).argmax(1)
        d = blocks[np.arange(len(blocks)), idx] / -8
        q = np.clip(np.floor(blocks / np.where(d == 0, 1, d)[:, None] + 8.5), 0, 15).astype(np.uint8)
        return np.concatenate([_f16_bytes(d), q[:, :16] | (q[:, 16:] << 4)], 1).tobytes()
    if kind == "Q4_1":
        lo, hi = blocks.min(1), blocks.max(1)
        d = (hi - lo) / 15
        q = np.clip(np.floor((blocks - lo[:, None]) / np.where(d == 0, 1, d)[:, None] + 0.5), 0, 15).astype(np.uint8)
        return np.concatenate([_f16_bytes(d), _f16_bytes(lo), q[:, :16] | (q[:, 16:] << 4)], 1).tobytes()
    raise ValueError(kind)


def dequantize(raw: bytes, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of quantize (what the file holds, as float32)."""
    if kind == "F32":
        return np.frombuffer(raw, "<f4").reshape(shape)
    if kind == "F16":
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(shape)
    if kind == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    width = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
    b = np.frombuffer(raw, np.uint8).reshape(-1, width)
    d = b[:, :2].copy().view("<f2").astype(np.float32)
    if kind == "Q8_0":
        out = d * b[:, 2:].view(np.int8).astype(np.float32)
    else:
        nib = b[:, -16:]
        q = np.concatenate([nib & 15, nib >> 4], 1).astype(np.float32)
        out = d * (q - 8) if kind == "Q4_0" else d * q + b[:, 2:4].copy().view("<f2").astype(np.float32)
    return out.reshape(shape)


def write_gguf_model(path: Path, cfg: TinyConfig, weights: dict[str, np.ndarray], kind: str = "F32") -> dict[str, np.ndarray]:
    """Writes a GGUF of ``cfg.arch``; 2-D weights in ``kind``, norms and biases in F32.
    Returns the weights exactly as stored (dequantized, Hugging Face names and
    layout) for references."""
    tokens, merges, types = byte_vocab()
    a = cfg.arch
    md = {
        "general.architecture": a,
        "general.name": "tiny-test",
        f"{a}.block_count": cfg.n_layers,
        f"{a}.context_length": cfg.context_length,
        f"{a}.embedding_length": cfg.dim,
        f"{a}.feed_forward_length": cfg.ffn_dim,
        f"{a}.attention.head_count": cfg.n_heads,
        f"{a}.attention.head_count_kv": cfg.n_kv_heads,
        f"{a}.rope.freq_base": cfg.rope_theta,
        f"{a}.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_tokenizer(cfg),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHATML,
    }
    permuted = cfg.arch == "llama"  # llama.cpp's converter permutes llama's Q and K only
    stored, tensors = {}, []
    for name, w in weights.items():
        data = w
        if permuted and name.endswith("q_proj.weight"):
            data = permute_rotary(w, cfg.n_heads)
        elif permuted and name.endswith("k_proj.weight"):
            data = permute_rotary(w, cfg.n_kv_heads)
        t = kind if w.ndim == 2 else "F32"
        raw = quantize(data, t)
        back = dequantize(raw, t, data.shape)
        if permuted and name.endswith("q_proj.weight"):
            back = unpermute(back, cfg.n_heads)
        elif permuted and name.endswith("k_proj.weight"):
            back = unpermute(back, cfg.n_kv_heads)
        stored[name] = back
        tensors.append((gguf_name(name), t, data.shape, raw))
    write_gguf(path, md, tensors)
    return stored


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def pre_tokenizer(cfg: TinyConfig) -> str:
    return {"llama": "smollm", "qwen2": "qwen2"}[cfg.arch]


HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def write_hf_model(directory: Path, cfg: TinyConfig, weights: dict[str, np.ndarray], dtype: str = "F32", shards: int = 1,
                   extra_specials: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Writes a Hugging Face directory (its vocabulary: ``byte_vocab(extra_specials)``);
    returns the weights as stored (float32)."""
    from pycompat.loading.tokenizer import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokens, merges, types = byte_vocab(extra_specials)
    config = {
        "model_type": cfg.arch,
        "architectures": [HF_ARCHITECTURES[cfg.arch]],
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn_dim,
        "vocab_size": len(tokens),
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.context_length,
        "tie_word_embeddings": cfg.tied,
    }
    (directory / "config.json").write_text(json.dumps(config))
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre_tokenizer(cfg), "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": 2}
    (directory / "tokenizer.json").write_text(Tokenizer.from_gguf(directory, md).to_json())
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": CHATML}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))

    stored, arrays, dtypes = {}, {}, {}
    for name, w in weights.items():
        if dtype == "F32":
            arrays[name], stored[name] = w, w
        elif dtype == "F16":
            arrays[name] = w.astype(np.float16)
            stored[name] = arrays[name].astype(np.float32)
        elif dtype == "BF16":
            bits = (w.view(np.uint32) + 0x7FFF + ((w.view(np.uint32) >> 16) & 1)) >> 16
            arrays[name], dtypes[name] = bits.astype(np.uint16), "BF16"
            stored[name] = (bits.astype(np.uint32) << 16).view(np.float32)
    names = list(arrays)
    if shards == 1:
        write_safetensors(directory / "model.safetensors", arrays, dtypes)
    else:
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            write_safetensors(directory / file, {n: arrays[n] for n in part}, {n: dtypes[n] for n in part if n in dtypes})
            weight_map.update({n: file for n in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return stored


def reference_config(cfg: TinyConfig, vocab: int) -> dict:
    """The numpy reference's config (Hugging Face layout: neox rotation)."""
    hd = cfg.head_dim
    return {
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads, "head_dim": hd,
        "norm_eps": cfg.norm_eps, "rope_neox": True, "vocab_size": vocab,
        "rope_inv_freq": 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd),
    }


def reference_weights(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face names -> the GGUF names the numpy reference reads."""
    return {gguf_name(k): v for k, v in stored.items()}


def load_tiny_chat_model(directory: Path, cfg: TinyConfig, seed: int):
    """A random-weight chat model over the byte vocabulary, written to
    ``directory`` as a Hugging Face model and loaded: what the in-process App
    tests serve."""
    from pycompat.loading.load import load_model

    write_hf_model(directory, cfg, random_weights(cfg, len(byte_vocab()[0]), seed=seed))
    return load_model(directory)
