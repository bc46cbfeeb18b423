"""The Llama family (Llama 2/3, Mistral, SmolLM2, TinyLlama): the one place that
knows how its models are described in each file format, Hugging Face's
config.json keys and tensor names and GGUF's metadata keys and tensor names.
The loaders read files and ask a family (registry.py picks it); `pycompat
convert` asks it the way back.

The kernel names tensors as GGUF does (`blk.N.attn_q.weight`, see
rust/model/llama.rs), so a GGUF tensor keeps its name and a Hugging Face one
is renamed.

Rotary layout: Hugging Face checkpoints rotate pairs (i, i + d/2) of each
head. llama.cpp's converter permutes the Q and K rows of `llama` models so
that pairs become adjacent (2i, 2i+1), and rotates adjacent pairs; the kernel
does the same for such files, and `convert` undoes the permutation. A family
whose GGUF files keep Hugging Face's order (Qwen2) says so with
`gguf_rotary_permuted = False`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pycompat.loading.errors import ModelFileError
from pycompat.models.config import ModelConfig
from pycompat.models.rope import inverse_frequencies

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_ROPE_FACTORS = "rope_freqs.weight"  # llama3-style long-context factors, folded into the config


class Llama:
    """The Llama layout. A family with the same layout and a few more tensors
    (qwen2.py) subclasses it and changes the class attributes."""

    arch = "llama"  # the kernel's name for it (rust/model/mod.rs `Arch`)
    hf_model_types: tuple[str, ...] = ("llama", "mistral")
    gguf_architectures: tuple[str, ...] = ("llama",)
    hf_architecture = "LlamaForCausalLM"  # what `convert` writes in config.json
    gguf_rotary_permuted = True
    # Hugging Face tensor names -> the kernel's: the whole model's, then each
    # layer's (below model.layers.N. and blk.N.).
    global_tensors = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_tensors = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }

    # --- Hugging Face -------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any], source: Path) -> ModelConfig:
        """The config that config.json (``hf``, read from ``source``) describes.

        Raises ModelFileError for a missing or bad hyper-parameter.
        """
        for key in ("attention_bias", "mlp_bias"):  # biases this layout has no place for
            if hf.get(key):
                raise ModelFileError(source, f"{key} is not supported for model_type {hf.get('model_type')!r}")
        try:
            dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            head_dim = int(hf.get("head_dim") or dim // n_heads)
            inv_freq = inverse_frequencies(head_dim, float(hf.get("rope_theta", 10000.0)), hf.get("rope_scaling"))
            return ModelConfig(
                arch=self.arch,
                dim=dim,
                n_layers=int(hf["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
                head_dim=head_dim,
                ffn_dim=int(hf["intermediate_size"]),
                vocab_size=int(hf["vocab_size"]),
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_neox=True,  # Hugging Face checkpoints rotate (i, i + d/2) pairs
                rope_inv_freq=[float(f) for f in inv_freq],
                max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(source, f"bad or missing hyper-parameter: {e}") from None

    def kernel_name_from_hf(self, name: str, hf: dict[str, Any]) -> str | None:
        """The kernel's name for the Hugging Face tensor ``name`` of the model that
        config.json ``hf`` describes, or None if the kernel does not read it (a
        tensor of another layout, or the LM head of a model that ties it to the embedding)."""
        if name in self.global_tensors:
            if name == "lm_head.weight" and hf.get("tie_word_embeddings", False):
                return None
            return self.global_tensors[name]
        m = _LAYER_RE.fullmatch(name)
        if m and m.group(2) in self.layer_tensors:
            return f"blk.{m.group(1)}.{self.layer_tensors[m.group(2)]}"
        return None

    # --- GGUF ---------------------------------------------------------------------

    def config_from_gguf(self, md: dict[str, Any], tensors: dict[str, Any], source: Path) -> ModelConfig:
        """The config that GGUF metadata ``md`` (keys ``{general.architecture}.*``)
        and ``tensors`` (by name: ``shape``, ``data``) describe.

        Raises ModelFileError for a missing or bad hyper-parameter.
        """
        arch = md.get("general.architecture")

        def hp(key: str, default=None):
            value = md.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelFileError(source, f"metadata {arch}.{key} is missing")
            return value

        embed = tensors.get("token_embd.weight")
        if embed is None:
            raise ModelFileError(source, "tensor token_embd.weight is missing")
        # A tensor the layout has no place for would be dropped, and the model
        # would answer wrongly without a word: refuse it instead.
        known = set(self.layer_tensors.values())
        extra = next((n for n in tensors if n.endswith(".bias") and n.split(".", 2)[-1] not in known), None)
        if extra is not None:
            raise ModelFileError(source, f"tensor {extra} is not supported for architecture {arch!r}")
        dim, n_heads = int(hp("embedding_length")), int(hp("attention.head_count"))
        head_dim = int(hp("attention.key_length", dim // max(n_heads, 1)))
        rot_dim = int(hp("rope.dimension_count", head_dim))
        scaling = None
        if md.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
            scaling = {"type": md[f"{arch}.rope.scaling.type"], "factor": md.get(f"{arch}.rope.scaling.factor", 1.0)}
        try:
            inv_freq = inverse_frequencies(rot_dim, float(hp("rope.freq_base", 10000.0)), scaling)
        except (ValueError, KeyError) as e:
            raise ModelFileError(source, str(e)) from None
        factors = tensors.get(_ROPE_FACTORS)
        if factors is not None:
            inv_freq = inv_freq / np.frombuffer(factors.data, dtype="<f4")[: len(inv_freq)]
        return ModelConfig(
            arch=self.arch,
            dim=dim,
            n_layers=int(hp("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(hp("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            ffn_dim=int(hp("feed_forward_length")),
            vocab_size=embed.shape[0],
            norm_eps=float(hp("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_neox=not self.gguf_rotary_permuted,
            rope_inv_freq=[float(f) for f in inv_freq],
            max_seq_len=int(hp("context_length", 2048)),
        )

    def kernel_name_from_gguf(self, name: str) -> str | None:
        """The kernel's name for a GGUF tensor (its own), or None for one the
        config has absorbed (rope_freqs.weight)."""
        return None if name == _ROPE_FACTORS else name

    # --- back to Hugging Face (pycompat convert) ----------------------------------

    def hf_name(self, kernel_name: str) -> str:
        """Inverse of kernel_name_from_hf."""
        for hf, kernel in self.global_tensors.items():
            if kernel == kernel_name:
                return hf
        _, layer, short = kernel_name.split(".", 2)
        hf = next(k for k, v in self.layer_tensors.items() if v == short)
        return f"model.layers.{layer}.{hf}"

    def to_hf_layout(self, kernel_name: str, values: np.ndarray, config: ModelConfig) -> np.ndarray:
        """A GGUF tensor's values in Hugging Face's layout: Q and K rows
        un-permuted where the GGUF converter permuted them."""
        if self.gguf_rotary_permuted and kernel_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.n_heads if kernel_name.endswith("attn_q.weight") else config.n_kv_heads
            return unpermute_rotary(values, heads)
        return values

    def hf_config(self, config: ModelConfig, md: dict[str, Any], tied: bool) -> dict[str, Any]:
        """The model's part of a config.json for a GGUF file's ``config`` and metadata ``md``."""
        arch = md.get("general.architecture")
        return {
            "architectures": [self.hf_architecture],
            "model_type": self.hf_model_types[0],
            "hidden_size": config.dim,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.n_kv_heads,
            "head_dim": config.head_dim,
            "intermediate_size": config.ffn_dim,
            "vocab_size": config.vocab_size,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": float(md.get(f"{arch}.rope.freq_base", 10000.0)),
            "max_position_embeddings": config.max_seq_len,
            "tie_word_embeddings": tied,
            "hidden_act": "silu",
        }


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo GGUF's per-head row interleave: row 2i+j of a head becomes row j·(d/2)+i."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


LLAMA = Llama()
