"""The models a server answers for, each under its id and aliases, and what
each can do: generate text (chat, completions) through an Engine, embed
text through an Embedder, or both."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from pycompat.api import exchange, tools
from pycompat.api.errors import UnknownModel, WrongModelKind
from pycompat.engine.embedder import Embedder
from pycompat.engine.engine import Engine
from pycompat.loading.card import ModelCard

GENERATE, EMBED = "generate", "embed"
# Bounds on the aliases clients add while serving (Ollama's copy): each is kept in memory.
MAX_ALIAS_LENGTH = 256
MAX_ADDED_ALIASES = 1000


class EmbeddingTokenizer(Protocol):
    """Turns an embeddings request's inputs into the token ids the model embeds."""

    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """A text's ids with the special tokens the model embeds it with."""

    def wrap(self, ids: list[int]) -> list[int]:
        """Token ids given by the client, with the same special tokens around them."""


@dataclass
class Embedding:
    """A model's embedding side."""

    embedder: Embedder
    tokenizer: EmbeddingTokenizer
    context_length: int  # the most tokens one input may hold, special tokens included


@dataclass
class ServedModel:
    ids: list[str]  # the primary id first, then aliases
    created: int  # unix time of the model file
    engine: Engine | None = None  # generates text
    embedding: Embedding | None = None  # embeds text
    card: ModelCard | None = None  # what its files say of it (None: a model built in memory, in tests)

    @property
    def kinds(self) -> set[str]:
        return {kind for kind, has in ((GENERATE, self.engine), (EMBED, self.embedding)) if has is not None}

    @property
    def vocab_size(self) -> int:
        return self.engine.model.kernel.vocab_size

    @functools.cached_property
    def call_format(self) -> tools.JsonFormat | tools.HermesFormat:
        """How this model is told about tools and writes its calls (decided once)."""
        return tools.format_for(self.engine.model)

    @property
    def bos_id(self) -> int | None:
        return self.engine.model.tokenizer.bos_id


class Registry:
    def __init__(self, models: list[ServedModel]):
        self.models = models
        self._by_id: dict[str, ServedModel] = {}
        self._added: set[str] = set()  # aliases added while serving
        for m in models:
            for i in m.ids:
                if i in self._by_id:
                    raise ValueError(f"two models are served as {i!r}")
                self._by_id[i] = m

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._by_id

    def get(self, model_id: str) -> ServedModel:
        """The model served as ``model_id``; raises UnknownModel."""
        try:
            served = self._by_id[model_id]
        except KeyError:
            raise UnknownModel(model_id) from None
        exchange.note_model(served.ids[0])  # the request's model, for metrics and logs
        return served

    def generator(self, model_id: str) -> ServedModel:
        """The model served as ``model_id``, which must generate text; raises
        UnknownModel or WrongModelKind."""
        return self._able(model_id, GENERATE)

    def embedder(self, model_id: str) -> ServedModel:
        """The model served as ``model_id``, which must embed text; raises
        UnknownModel or WrongModelKind."""
        return self._able(model_id, EMBED)

    def _able(self, model_id: str, kind: str) -> ServedModel:
        served = self.get(model_id)
        if kind not in served.kinds:
            raise WrongModelKind(model_id, kind)
        return served

    def add_alias(self, model_id: str, alias: str) -> ServedModel:
        """Serves the model served as ``model_id`` as ``alias`` too (Ollama's
        ``copy``), until ``remove_alias``; raises UnknownModel, or ValueError when
        ``alias`` already names another model. Kept in memory only."""
        served = self.get(model_id)
        if not alias or len(alias) > MAX_ALIAS_LENGTH:
            raise ValueError(f"a model name is 1 to {MAX_ALIAS_LENGTH} characters long")
        other = self._by_id.get(alias)
        if other is not None and other is not served:
            raise ValueError(f"{alias!r} already names another model")
        if other is None:
            if len(self._added) >= MAX_ADDED_ALIASES:
                raise ValueError(f"this server keeps at most {MAX_ADDED_ALIASES} copies; delete one first")
            served.ids.append(alias)
            self._by_id[alias] = served
            self._added.add(alias)
        return served

    def remove_alias(self, alias: str) -> None:
        """Stops serving ``alias``; raises UnknownModel, or ValueError for an id
        the server was started with (only aliases added since can go)."""
        served = self.get(alias)
        if alias not in self._added:
            raise ValueError(f"{alias!r} is a model this server was started with")
        served.ids.remove(alias)
        del self._by_id[alias]
        self._added.discard(alias)

    def all_ids(self) -> list[str]:
        """Every id served, each model's primary id first, then its aliases."""
        return [i for m in self.models for i in m.ids]
