"""Ollama's native API (its docs/api.md), so that Ollama's clients and the
tools built on them (the ``ollama`` Python and JS libraries, Open WebUI in
Ollama mode, Continue, n8n) work unchanged: chat and generate streamed as
JSON lines (chat.py, generate.py), embeddings (embed.py), the model routes
(models.py), requests read by fields.py and errors as ``{"error": "..."}``
(errors.py). The answers come from the same engine, templates, tools and
constrained decoding as the OpenAI dialect's.

Like every API dialect, this package gives the App ``PREFIXES``, ``routes``
and ``error_response``.
"""

from __future__ import annotations

from functools import partial

from pycompat.api.ollama import chat, embed, generate, models
from pycompat.api.ollama.errors import error_response
from pycompat.api.registry import Registry
from pycompat.api.router import Route
from pycompat.state.store import Store

__all__ = ["PREFIXES", "ROOT_TEXT", "error_response", "routes"]

PREFIXES = ("/api",)
# What GET / answers, as Ollama does: tools probe it to tell whether a server is up.
ROOT_TEXT = b"Ollama is running"


def routes(registry: Registry, state: Store | None = None) -> list[Route]:
    return [
        Route("GET", "/version", models.version),
        Route("GET", "/tags", partial(models.tags, registry)),
        Route("GET", "/ps", partial(models.ps, registry)),
        Route("POST", "/show", partial(models.show, registry)),
        Route("POST", "/chat", partial(chat.create, registry)),
        Route("POST", "/generate", partial(generate.create, registry)),
        Route("POST", "/embed", partial(embed.embed, registry)),
        Route("POST", "/embeddings", partial(embed.embeddings, registry)),
        Route("POST", "/copy", partial(models.copy, registry)),
        Route("DELETE", "/delete", partial(models.delete, registry)),
        Route("POST", "/pull", partial(models.pull, registry)),
        Route("POST", "/push", models.push),
        Route("POST", "/create", models.create),
    ]
