"""A GGUF file as a ModelSpec. What its metadata and tensor names mean is the
model family's business (pycompat/models/)."""

from __future__ import annotations

from pathlib import Path

from pycompat.loading.gguf import read_gguf
from pycompat.loading.spec import KernelWeights, ModelSpec, WeightTensor
from pycompat.loading.tokenizer import Tokenizer
from pycompat.models.registry import family_for_gguf

_GGUF_SAMPLING = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}


def load_gguf(path: Path) -> ModelSpec:
    gguf = read_gguf(path)
    try:
        return _spec(path, gguf)
    except BaseException:
        gguf.close()
        raise


def _spec(path: Path, gguf) -> ModelSpec:
    md = gguf.metadata
    family = family_for_gguf(md.get("general.architecture"), path)
    config = family.config_from_gguf(md, gguf.tensors, path)
    tensors = []
    for t in gguf.tensors.values():
        kname = family.kernel_name_from_gguf(t.name)
        if kname is not None:
            tensors.append(WeightTensor(kname, t.ggml_type.name, t.shape, path, t.offset, t.data))
    return ModelSpec(
        name=md.get("general.name") or path.stem,
        weights=KernelWeights(config, tensors),
        tokenizer=Tokenizer.from_gguf(path, md),
        chat_template=md.get("tokenizer.chat_template"),
        sampling_defaults={k: md[f"general.sampling.{g}"] for k, g in _GGUF_SAMPLING.items() if f"general.sampling.{g}" in md},
        closers=[gguf.close],
    )
