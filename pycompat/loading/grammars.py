"""A model's grammar compiler (constrained decoding, rust/grammar.rs), made on
first use: building it reads the whole vocabulary, which a server that never
gets a schema should not pay for at start-up."""

from __future__ import annotations

import threading

from pycompat import _kernel
from pycompat.loading.tokenizer import Tokenizer


class GrammarsUnavailable(Exception):
    """This model's tokenizer cannot back a grammar; the message says why."""


class GrammarSupport:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._lock = threading.Lock()
        self._grammars: _kernel.Grammars | None = None
        self._unavailable: str | None = None

    def compile(self, kind: str, source: str) -> _kernel.Grammar:
        """``source`` ("json_schema", "regex" or "lark") compiled for this model,
        or the grammar compiled before from the same source. Blocks (call it off
        the event loop). Raises _kernel.GrammarError, or GrammarsUnavailable."""
        return self._compiler().compile(kind, source)

    def _compiler(self) -> _kernel.Grammars:
        with self._lock:
            if self._grammars is None and self._unavailable is None:
                tk = self._tokenizer
                # The end of an output: the tokenizer's EOS first, then its other end-of-turn tokens.
                ends = sorted(tk.stop_ids, key=lambda t: (t != tk.eos_id, t))
                try:
                    self._grammars = _kernel.Grammars(tk.to_json(), self._vocab_size, ends)
                except _kernel.KernelError as e:
                    self._unavailable = f"this model's tokenizer cannot constrain its output ({e})"
            if self._grammars is None:
                raise GrammarsUnavailable(self._unavailable)
            return self._grammars
