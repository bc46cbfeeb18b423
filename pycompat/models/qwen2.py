"""The Qwen2 family (Qwen2, Qwen2.5): the Llama layout plus biases on the Q, K
and V projections, with tied or untied embeddings.

Its GGUF files keep Hugging Face's rotary order: llama.cpp's converter does
not permute Qwen2's Q and K rows (only its llama models'), and llama.cpp runs
Qwen2 with NEOX rotation, pairs (i, i + d/2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pycompat.loading.errors import ModelFileError
from pycompat.models.config import ModelConfig
from pycompat.models.llama import Llama


class Qwen2(Llama):
    arch = "qwen2"
    hf_model_types = ("qwen2",)
    gguf_architectures = ("qwen2",)
    hf_architecture = "Qwen2ForCausalLM"
    gguf_rotary_permuted = False
    layer_tensors = {
        **Llama.layer_tensors,
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
    }

    def config_from_hf(self, hf: dict[str, Any], source: Path) -> ModelConfig:
        if hf.get("use_sliding_window"):
            raise ModelFileError(source, "sliding-window attention (use_sliding_window) is not supported")
        return super().config_from_hf(hf, source)


QWEN2 = Qwen2()
