"""What a model loader hands on: the kernel's config and weights, and what the
server needs to talk to the model (tokenizer, chat template, stop tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycompat.loading.tokenizer import Tokenizer
from pycompat.models.config import ModelConfig


@dataclass(frozen=True)
class WeightTensor:
    """One weight, named as in GGUF, and where its bytes lie in its file."""

    name: str
    dtype: str  # kernel dtype name: F32, F16, BF16, Q8_0, Q4_0, Q4_1
    shape: tuple[int, ...]
    path: Path
    offset: int  # of the first byte in the file
    data: memoryview  # the same bytes through the file's mapping, for readers in Python

    def kernel_source(self) -> tuple:
        """What the kernel reads the tensor from: it reads the file itself, once."""
        return (self.name, self.dtype, list(self.shape), str(self.path), self.offset, self.data.nbytes)


@dataclass
class KernelWeights:
    """The kernel config and its tensors."""

    config: ModelConfig
    tensors: list[WeightTensor]


@dataclass
class ModelSpec:
    name: str  # a human name from the files (shown at start-up)
    weights: KernelWeights
    tokenizer: Tokenizer
    chat_template: str | None
    # The model's recommended sampling, used for fields a request leaves out:
    # temperature, top_p, top_k, min_p (from generation_config.json or GGUF general.sampling.*).
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)  # file handles to release once loaded

    @property
    def context_length(self) -> int:
        """What the model was trained for."""
        return self.weights.config.max_seq_len

    def release(self) -> None:
        """Drops the mapped files once the kernel has read the weights."""
        self.weights.tensors.clear()
        for c in self.closers:
            c()
        self.closers.clear()
