"""The models a server answers for: one loaded model under its id and aliases."""

from __future__ import annotations

from dataclasses import dataclass

from pycompat.api.errors import UnknownModel
from pycompat.engine.engine import Engine


@dataclass
class ServedModel:
    ids: list[str]  # the primary id first, then aliases
    engine: Engine
    created: int  # unix time of the model file

    @property
    def vocab_size(self) -> int:
        return self.engine.model.kernel.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self.engine.model.tokenizer.bos_id


class Registry:
    def __init__(self, models: list[ServedModel]):
        self.models = models
        self._by_id = {i: m for m in models for i in m.ids}

    def get(self, model_id: str) -> ServedModel:
        """The model served as ``model_id``; raises UnknownModel."""
        try:
            return self._by_id[model_id]
        except KeyError:
            raise UnknownModel(model_id) from None

    def all_ids(self) -> list[str]:
        """Every id served, each model's primary id first, then its aliases."""
        return [i for m in self.models for i in m.ids]
