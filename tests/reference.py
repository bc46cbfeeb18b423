"""An independent numpy implementation of each architecture's forward pass,
written from its definition, to check the Rust kernel against: one function
per architecture, over shared pieces (and ``bert``, the sentence encoder).

It recomputes the whole sequence at every call (no cache), in float64.
``cfg`` uses the kernel's config keys (a dict); ``w`` maps GGUF tensor names
to float arrays.
"""

from __future__ import annotations

import math

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rotate(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, neox: bool) -> np.ndarray:
    """x: (tokens, heads, head_dim). Rotates the first 2·len(inv_freq) dims of each head."""
    half = len(inv_freq)
    angles = positions[:, None] * inv_freq[None, :]  # (tokens, half)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half : 2 * half]
        out[..., :half], out[..., half : 2 * half] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0 : 2 * half : 2], x[..., 1 : 2 * half : 2]
        out[..., 0 : 2 * half : 2], out[..., 1 : 2 * half : 2] = a * cos - b * sin, a * sin + b * cos
    return out


def attention(cfg: dict, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention with RoPE: q (tokens, n_heads·head_dim),
    k and v (tokens, n_kv_heads·head_dim) -> (tokens, n_heads·head_dim)."""
    n, hd, nh, nkv = len(q), cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
    pos, inv_freq = np.arange(n, dtype=np.float64), np.asarray(cfg["rope_inv_freq"], dtype=np.float64)
    q = rotate(q.reshape(n, nh, hd), pos, inv_freq, cfg["rope_neox"])
    k = rotate(k.reshape(n, nkv, hd), pos, inv_freq, cfg["rope_neox"])
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v.reshape(n, nkv, hd), nh // nkv, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", scores, v).reshape(n, nh * hd)


def swiglu_mlp(h: np.ndarray, gate_w: np.ndarray, up_w: np.ndarray, down_w: np.ndarray) -> np.ndarray:
    gate, up = h @ gate_w.T, h @ up_w.T
    return (gate / (1 + np.exp(-gate)) * up) @ down_w.T


def embed(w: dict, tokens: list[int]) -> np.ndarray:
    return w["token_embd.weight"][tokens].astype(np.float64)


def logits(cfg: dict, w: dict, x: np.ndarray) -> np.ndarray:
    """Final norm and LM head (the embedding when the model ties them)."""
    head = w.get("output.weight", w["token_embd.weight"]).astype(np.float64)
    return rms_norm(x, w["output_norm.weight"].astype(np.float64), cfg["norm_eps"]) @ head.T


def tensors(w: dict, layer: int):
    """The layer's tensor ``name`` (``attn_q.weight``, ...) in float64."""
    return lambda name: w[f"blk.{layer}.{name}"].astype(np.float64)


def llama(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits (tokens, vocab) of a Llama model for every position of ``tokens``."""
    return logits(cfg, w, llama_hidden(cfg, w, tokens))


def llama_hidden(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """A Llama model's hidden states (tokens, dim) after the last layer, before the output norm."""
    x, eps = embed(w, tokens), cfg["norm_eps"]
    for layer in range(cfg["n_layers"]):
        p = tensors(w, layer)
        h = rms_norm(x, p("attn_norm.weight"), eps)
        q, k, v = h @ p("attn_q.weight").T, h @ p("attn_k.weight").T, h @ p("attn_v.weight").T
        x = x + attention(cfg, q, k, v) @ p("attn_output.weight").T
        h = rms_norm(x, p("ffn_norm.weight"), eps)
        x = x + swiglu_mlp(h, p("ffn_gate.weight"), p("ffn_up.weight"), p("ffn_down.weight"))
    return x


def decoder_embedding(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """A sentence embedding from a Llama model, as llama.cpp's server makes one:
    the output-normed hidden states averaged over the tokens, at unit length."""
    h = rms_norm(llama_hidden(cfg, w, tokens), w["output_norm.weight"].astype(np.float64), cfg["norm_eps"])
    mean = h.mean(0)
    return mean / np.linalg.norm(mean)


def qwen2(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits (tokens, vocab) of a Qwen2 model: Llama's, with biases added to
    the Q, K and V projections."""
    x, eps = embed(w, tokens), cfg["norm_eps"]
    for layer in range(cfg["n_layers"]):
        p = tensors(w, layer)
        h = rms_norm(x, p("attn_norm.weight"), eps)
        q = h @ p("attn_q.weight").T + p("attn_q.bias")
        k = h @ p("attn_k.weight").T + p("attn_k.bias")
        v = h @ p("attn_v.weight").T + p("attn_v.bias")
        x = x + attention(cfg, q, k, v) @ p("attn_output.weight").T
        h = rms_norm(x, p("ffn_norm.weight"), eps)
        x = x + swiglu_mlp(h, p("ffn_gate.weight"), p("ffn_up.weight"), p("ffn_down.weight"))
    return logits(cfg, w, x)


FORWARD = {"llama": llama, "qwen2": qwen2}  # by ModelConfig.arch


# --- BERT (encoder) -------------------------------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU, x·Φ(x), with Φ from math.erf."""
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def bert(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """The sentence embedding (dim,) of ``tokens`` (special tokens included) by a
    post-norm BERT encoder: bidirectional attention, every token of type 0,
    pooled by ``cfg["pooling"]`` ("mean" or "cls"), L2-normalized if ``cfg["normalize"]``.
    Tensors under the kernel's names (rust/model/bert.rs)."""
    n, eps, nh = len(tokens), cfg["norm_eps"], cfg["n_heads"]

    def t(name: str) -> np.ndarray:
        return w[name].astype(np.float64)

    def dense(h: np.ndarray, name: str) -> np.ndarray:
        return h @ t(f"{name}.weight").T + t(f"{name}.bias")

    def norm(h: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(h, t(f"{name}.weight"), t(f"{name}.bias"), eps)

    embedded = w["token_embd.weight"][tokens].astype(np.float64) + t("position_embd.weight")[:n] + t("token_types.weight")[0]
    x = norm(embedded, "token_embd_norm")
    for layer in range(cfg["n_layers"]):
        b = f"blk.{layer}."
        q, k, v = (dense(x, b + name).reshape(n, nh, -1) for name in ("attn_q", "attn_k", "attn_v"))
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])  # no mask: every token sees every token
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, -1)
        x = norm(x + dense(attn, b + "attn_output"), b + "attn_output_norm")
        x = norm(x + dense(gelu(dense(x, b + "ffn_up")), b + "ffn_down"), b + "layer_output_norm")
    out = x.mean(0) if cfg["pooling"] == "mean" else x[0]
    return out / np.linalg.norm(out) if cfg["normalize"] else out
