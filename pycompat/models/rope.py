"""Rotary embedding frequencies, with the context-extension schemes real checkpoints use.

The kernel takes one inverse frequency per rotary pair and knows nothing of
scaling; every scheme is folded into those numbers here.
"""

from __future__ import annotations

import math

import numpy as np


def inverse_frequencies(rot_dim: int, theta: float, scaling: dict | None = None) -> np.ndarray:
    """``theta ** (-2i / rot_dim)`` for each pair i, adjusted by ``scaling``.

    ``scaling`` follows Hugging Face's ``rope_scaling``: None, ``linear`` (factor) or
    ``llama3`` (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
    Raises ValueError for any other kind.
    """
    inv = 1.0 / theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if kind in (None, "default"):
        return inv.astype(np.float32)
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        between = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        scaled = np.where(between, (1 - smooth) * inv / factor + smooth * inv, scaled)
        return scaled.astype(np.float32)
    raise ValueError(f"rope scaling {kind!r} is not supported (linear and llama3 are)")
