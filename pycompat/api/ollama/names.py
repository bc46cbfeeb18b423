"""Ollama's model names: ``name:tag``, where a name without a tag means
``name:latest``. The models here are served under plain ids
(``smollm2-135m-instruct``), listed as ``smollm2-135m-instruct:latest`` as
Ollama lists them, and found by either spelling."""

from __future__ import annotations

from pycompat.api.errors import UnknownModel
from pycompat.api.registry import Registry, ServedModel

LATEST = ":latest"


def listed(model_id: str) -> str:
    """How Ollama lists a model id: with its tag (``:latest`` when it has none)."""
    return model_id if ":" in model_id.rsplit("/", 1)[-1] else model_id + LATEST


def served_id(registry: Registry, name: str) -> str:
    """The id ``name`` names here (``x:latest`` names ``x``); raises UnknownModel."""
    if name.endswith(LATEST) and name not in registry and name.removesuffix(LATEST) in registry:
        return name.removesuffix(LATEST)
    if name not in registry:
        raise UnknownModel(name)
    return name


def find(registry: Registry, name: str) -> ServedModel:
    return registry.get(served_id(registry, name))


def generator(registry: Registry, name: str) -> ServedModel:
    return registry.generator(served_id(registry, name))


def embedder(registry: Registry, name: str) -> ServedModel:
    return registry.embedder(served_id(registry, name))
