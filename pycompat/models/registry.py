"""Which family describes a model: picked by Hugging Face's `model_type`, GGUF's
`general.architecture`, or the kernel's `arch` (ModelConfig.arch)."""

from __future__ import annotations

from pathlib import Path

from pycompat.loading.errors import ModelFileError
from pycompat.models.llama import LLAMA, Llama
from pycompat.models.qwen2 import QWEN2

# Every family so far has the Llama layout; the first that does not (Gemma)
# makes this a Protocol of the methods llama.py defines.
Family = Llama

FAMILIES: tuple[Family, ...] = (LLAMA, QWEN2)


def family_for_hf(model_type: object, source: Path) -> Family:
    """The family of a Hugging Face model_type (from ``source``). Raises ModelFileError."""
    for family in FAMILIES:
        if model_type in family.hf_model_types:
            return family
    supported = sorted(t for f in FAMILIES for t in f.hf_model_types)
    raise ModelFileError(source, f"model_type {model_type!r} is not supported (supported: {', '.join(supported)})")


def family_for_gguf(architecture: object, source: Path) -> Family:
    """The family of a GGUF general.architecture (from ``source``). Raises ModelFileError."""
    for family in FAMILIES:
        if architecture in family.gguf_architectures:
            return family
    supported = sorted(a for f in FAMILIES for a in f.gguf_architectures)
    raise ModelFileError(source, f"architecture {architecture!r} is not supported (supported: {', '.join(supported)})")


def family_for_arch(arch: str) -> Family:
    """The family of a ModelConfig's arch."""
    return next(f for f in FAMILIES if f.arch == arch)
