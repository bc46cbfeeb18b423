"""Text <-> token ids, on Hugging Face's `tokenizers` library.

Built either from a ``tokenizer.json`` or from a GGUF file's vocabulary,
merges and pre-tokenizer name, so that both give the ids llama.cpp gives.
Special tokens written in the text (``<|im_start|>`` in a rendered chat
template) are always recognised as the special tokens they name.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers.decoders import DecodeStream

from pycompat.loading.errors import ModelFileError

log = logging.getLogger(__name__)

# Pre-tokenizer split rules by GGUF `tokenizer.ggml.pre` name, as llama.cpp defines
# them. Each list is applied in order; the last rule is the byte-level word split.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SINGLE_DIGITS = r"\p{N}"
PRE_TOKENIZER_RULES = {
    "default": [_GPT2],
    "gpt-2": [_GPT2],
    "gpt2": [_GPT2],
    "smollm": [_SINGLE_DIGITS, _GPT2],
    "starcoder": [_SINGLE_DIGITS, _GPT2],
    "refact": [_SINGLE_DIGITS, _GPT2],
    "llama3": [_LLAMA3],
    "llama-bpe": [_LLAMA3],
    "llama-v3": [_LLAMA3],
    "qwen2": [_QWEN2],
}

# Token texts that end a turn in common chat formats. llama.cpp also stops on
# these when the vocabulary marks them as control tokens.
_END_OF_TURN_TEXTS = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>", "<|eom_id|>"}

# Fill-in-the-middle tokens (prefix, suffix, middle) as the model families that
# have them spell them: StarCoder, SmolLM and Granite; Qwen2.5-Coder; DeepSeek-Coder.
_FIM_SPELLINGS = [
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
]

# GGUF token types.
_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    """Encodes and decodes text for one model.

    Args:
        tk: the underlying `tokenizers.Tokenizer`, with special tokens registered.
        bos_id: the beginning-of-sequence token, if the model has one.
        add_bos: whether prompts start with ``bos_id``.
        eos_id: the model's end-of-sequence token (what chat templates call eos_token).
        stop_ids: token ids that end generation (EOS and end-of-turn tokens).
    """

    def __init__(self, tk: tokenizers.Tokenizer, bos_id: int | None, add_bos: bool, eos_id: int | None, stop_ids: set[int]):
        self._tk = tk
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None
        self.eos_id = eos_id
        self.stop_ids = frozenset(stop_ids | ({eos_id} if eos_id is not None else set()))

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def token_text(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    @property
    def bos_text(self) -> str:
        return (self.token_text(self.bos_id) or "") if self.bos_id is not None else ""

    @property
    def eos_text(self) -> str:
        return (self.token_text(self.eos_id) or "") if self.eos_id is not None else ""

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``, special tokens in it parsed as such.

        A BOS is prepended when the model wants one (or ``add_bos`` says so)
        and the text does not already begin with it.
        """
        # The batch call releases the GIL for its whole run (the single-text one does
        # not quite), and the fast variant skips offsets we never use.
        encode_batch = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)
        ids = encode_batch([text], add_special_tokens=False)[0].ids
        want_bos = self.add_bos if add_bos is None else add_bos and self.bos_id is not None
        if want_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def wrap(self, ids: list[int]) -> list[int]:
        """Token ids a client gave as a text's, with what ``encode`` adds to a text (a BOS)."""
        return [self.bos_id, *ids] if self.add_bos and (not ids or ids[0] != self.bos_id) else list(ids)

    @functools.cached_property
    def max_bytes_per_token(self) -> float:
        """The most bytes of text one token can stand for, so that a text of B
        bytes has at least B / this many tokens: what lets a request too long for
        the context be refused without tokenizing it. Infinite when no bound holds
        (an unknown-token model that fuses runs of unknown characters into one)."""
        model = self._tk.model
        if getattr(model, "unk_token", None) and getattr(model, "fuse_unk", False) and not getattr(model, "byte_fallback", False):
            return math.inf
        texts = self._tk.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)
        longest = max(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        # A normalizer may shorten text before it is split (NFC composes up to three bytes into one).
        return float(max(1, longest) * (3 if self._tk.normalizer is not None else 1))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens left out."""
        return self._tk.decode(ids, skip_special_tokens=True)

    def decoder(self, special_text: bool = False) -> IncrementalDecoder:
        """An incremental decoder; ``special_text``: special tokens come out as their text too."""
        return IncrementalDecoder(self._tk, special_text)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for, even when they are part of a
        character (what OpenAI's logprobs report as ``bytes``)."""
        piece = self._tk.id_to_token(token_id) or ""
        if isinstance(self._tk.decoder, decoders.ByteLevel) and token_id not in self._special_ids:
            table = _byte_level_table()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return self._tk.decode([token_id], skip_special_tokens=False).encode("utf-8", "surrogatepass")

    def is_special(self, token_id: int) -> bool:
        """Whether ``decode`` leaves the token out (a control token: BOS, end of turn, ...)."""
        return token_id in self._special_ids

    @functools.cached_property
    def fim_ids(self) -> tuple[int, int, int] | None:
        """The model's fill-in-the-middle tokens (prefix, suffix, middle), if its vocabulary has them."""
        for spelling in _FIM_SPELLINGS:
            ids = [self._tk.token_to_id(t) for t in spelling]
            if all(i is not None for i in ids):
                return ids[0], ids[1], ids[2]
        return None

    def fill_in_the_middle(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """The prompt that asks a model with FIM tokens for what goes between
        ``prefix`` and ``suffix`` (token ids, without BOS): prefix-suffix-middle
        order, as the models were trained and llama.cpp's infill builds it."""
        pre, suf, mid = self.fim_ids
        return self.wrap([pre, *prefix, suf, *suffix, mid])

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self._tk.get_added_tokens_decoder().items() if t.special)

    # --- construction -----------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: Path, md: dict[str, Any]) -> Tokenizer:
        kind = md.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelFileError(path, f"tokenizer model {kind!r} is not supported from GGUF yet (byte-level BPE, 'gpt2', is)")
        tokens: list[str] = md.get("tokenizer.ggml.tokens") or []
        merges: list[str] = md.get("tokenizer.ggml.merges") or []
        types: list[int] = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if not tokens or len(types) != len(tokens):
            raise ModelFileError(path, "tokenizer vocabulary is missing or inconsistent")
        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise ModelFileError(path, f"malformed merge {m!r}")
            pairs.append((left, right))
        tk = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=False))

        pre = md.get("tokenizer.ggml.pre", "default")
        rules = PRE_TOKENIZER_RULES.get(pre)
        if rules is None:
            log.warning("%s: unknown pre-tokenizer %r, splitting words as GPT-2 does", path, pre)
            rules = [_GPT2]
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in rules]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tk.decoder = decoders.ByteLevel()
        special = [i for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)]
        tk.add_special_tokens([AddedToken(tokens[i], special=types[i] == _CONTROL, normalized=False) for i in special])

        stop_ids = {md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in md}
        stop_ids |= {i for i in special if tokens[i] in _END_OF_TURN_TEXTS}
        bos = md.get("tokenizer.ggml.bos_token_id")
        return cls(tk, bos, bool(md.get("tokenizer.ggml.add_bos_token", False)), md.get("tokenizer.ggml.eos_token_id"), stop_ids)

    @classmethod
    def from_hf_dir(cls, directory: Path, tokenizer_config: dict, generation_config: dict) -> Tokenizer:
        path = directory / "tokenizer.json"
        try:
            tk = tokenizers.Tokenizer.from_file(str(path))
        except FileNotFoundError:
            raise ModelFileError(path, "missing (a model directory needs tokenizer.json)") from None
        except Exception as e:  # the library raises a bare Exception for malformed files
            raise ModelFileError(path, f"unreadable tokenizer: {e}") from None

        def token_id(entry: Any) -> int | None:
            text = entry.get("content") if isinstance(entry, dict) else entry
            return tk.token_to_id(text) if isinstance(text, str) else None

        bos = token_id(tokenizer_config.get("bos_token"))
        eos_id = token_id(tokenizer_config.get("eos_token"))
        eos = generation_config.get("eos_token_id", eos_id)
        stop_ids = {i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)}
        for text in _END_OF_TURN_TEXTS:
            tid = tk.token_to_id(text)
            if tid is not None and text in {t.content for t in tk.get_added_tokens_decoder().values() if t.special}:
                stop_ids.add(tid)
        # Whether the tokenizer's own post-processor would start prompts with BOS.
        probe = tk.encode("a", add_special_tokens=True).ids
        add_bos = bool(tokenizer_config.get("add_bos_token", bos is not None and probe[:1] == [bos]))
        if eos_id is None and stop_ids:
            eos_id = min(stop_ids)
        return cls(tk, bos, add_bos, eos_id, stop_ids)

    def to_json(self) -> str:
        """tokenizer.json text (used by `pycompat convert`)."""
        return self._tk.to_str()


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's alphabet back to bytes: printable Latin-1 bytes stand for
    themselves, the other 68 for code points from 256 on, in byte order."""
    own = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {chr(b): b for b in own}, 0
    for b in range(256):
        if b not in own:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class IncrementalDecoder:
    """Turns generated ids into text pieces, never splitting a UTF-8 character:
    a token that ends mid-character yields nothing until the character completes."""

    def __init__(self, tk: tokenizers.Tokenizer, special_text: bool = False):
        self._tk = tk
        self._stream = DecodeStream(skip_special_tokens=not special_text)

    def push(self, token_id: int) -> str:
        return self._stream.step(self._tk, token_id) or ""


def read_json(path: Path, required: bool = False) -> dict:
    """A JSON object from ``path``; {} if absent and not required."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ModelFileError(path, "missing") from None
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "is not a JSON object")
    return data
