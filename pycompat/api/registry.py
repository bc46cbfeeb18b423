"""The models a server answers for: one loaded model under its id and aliases."""

from __future__ import annotations

from dataclasses import dataclass

from pycompat.api.errors import model_not_found
from pycompat.engine.engine import Engine

OWNER = "pycompat"


@dataclass
class ServedModel:
    ids: list[str]  # the primary id first, then aliases
    engine: Engine
    created: int  # unix time of the model file


class Registry:
    def __init__(self, models: list[ServedModel]):
        self.models = models
        self._by_id = {i: m for m in models for i in m.ids}

    def get(self, model_id: str) -> ServedModel:
        """The model served as ``model_id``, or a 404 model_not_found."""
        try:
            return self._by_id[model_id]
        except KeyError:
            raise model_not_found(model_id) from None

    def model_object(self, model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": self.get(model_id).created, "owned_by": OWNER}

    def list_object(self) -> dict:
        return {"object": "list", "data": [self.model_object(i) for m in self.models for i in m.ids]}
