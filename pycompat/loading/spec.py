"""What a model loader hands on: the kernel's config and weights, and what the
server needs to talk to the model (tokenizer, chat template, stop tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycompat.loading.tokenizer import Tokenizer


@dataclass
class KernelWeights:
    """The kernel config (see rust/model.rs `Config`) and tensors named as in GGUF:
    (name, dtype name, shape, raw bytes)."""

    config: dict[str, Any]
    tensors: list[tuple[str, str, tuple[int, ...], memoryview]]


@dataclass
class ModelSpec:
    name: str  # a human name from the files (shown at start-up)
    weights: KernelWeights
    tokenizer: Tokenizer
    chat_template: str | None
    context_length: int  # what the model was trained for
    # The model's recommended sampling, used for fields a request leaves out:
    # temperature, top_p, top_k, min_p (from generation_config.json or GGUF general.sampling.*).
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)  # file handles to release once loaded

    def release(self) -> None:
        """Drops the mapped files once the kernel holds its own copy of the weights."""
        self.weights.tensors.clear()
        for c in self.closers:
            c()
        self.closers.clear()
