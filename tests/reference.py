"""An independent numpy implementation of the Llama forward pass, written from
the architecture's definition, to check the Rust kernel against.

It recomputes the whole sequence at every call (no cache), in float64.
"""

from __future__ import annotations

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


def forward(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits (tokens, vocab) for every position of ``tokens``.

    ``cfg`` uses the kernel's config keys; ``w`` maps GGUF tensor names to float arrays.
    """
    n, hd, nh, nkv = len(tokens), cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
    eps, inv_freq = cfg["norm_eps"], np.asarray(cfg["rope_inv_freq"], dtype=np.float64)
    pos = np.arange(n, dtype=np.float64)
    x = w["token_embd.weight"][tokens].astype(np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(cfg["n_layers"]):
        p = lambda name, layer=layer: w[f"blk.{layer}.{name}.weight"].astype(np.float64)
        h = rms_norm(x, p("attn_norm"), eps)
        q = rotate((h @ p("attn_q").T).reshape(n, nh, hd), pos, inv_freq, cfg["rope_neox"])
        k = rotate((h @ p("attn_k").T).reshape(n, nkv, hd), pos, inv_freq, cfg["rope_neox"])
        v = (h @ p("attn_v").T).reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", scores, v).reshape(n, nh * hd) @ p("attn_output").T
        h = rms_norm(x, p("ffn_norm"), eps)
        gate, up = h @ p("ffn_gate").T, h @ p("ffn_up").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ p("ffn_down").T
    head = w.get("output.weight", w["token_embd.weight"]).astype(np.float64)
    return rms_norm(x, w["output_norm.weight"].astype(np.float64), eps) @ head.T
