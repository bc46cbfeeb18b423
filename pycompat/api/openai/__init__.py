"""OpenAI's API, as its SDKs and tools expect it: its routes (chat.py,
completions.py, embeddings.py, models.py, stored_chat.py, responses.py, conversations.py), its request
fields (protocol.py), its stream
framing (sse.py) and its error object and wording (errors.py).

Like every API dialect, this package gives the App three things:
``PREFIXES``, the path prefixes its routes are served under; ``routes``, its
routes as templates without the prefix; and ``error_response``, an APIError or
ServiceError as a response in its shape.
"""

from __future__ import annotations

from functools import partial

from pycompat.api.openai import chat, completions, conversations, embeddings, models, responses, stored_chat
from pycompat.api.openai.errors import error_response
from pycompat.api.registry import Registry
from pycompat.api.router import Route
from pycompat.state.store import Store

__all__ = ["PREFIXES", "error_response", "routes"]

# /openai/v1: Bifrost's drop-in base URL; /v3: OpenVINO Model Server's. Same routes, same answers.
PREFIXES = ("/v1", "/openai/v1", "/v3")


def routes(registry: Registry, state: Store | None = None) -> list[Route]:
    """The routes; ``state`` keeps stored objects (None: the server keeps none)."""
    return [
        Route("GET", "/models", partial(models.list_models, registry)),
        Route("GET", "/models/{model...}", partial(models.retrieve_model, registry)),
        Route("POST", "/chat/completions", partial(chat.create, registry, state)),
        Route("GET", "/chat/completions", partial(stored_chat.list_completions, state)),
        Route("GET", "/chat/completions/{completion_id}", partial(stored_chat.retrieve, state)),
        Route("POST", "/chat/completions/{completion_id}", partial(stored_chat.update, state)),
        Route("DELETE", "/chat/completions/{completion_id}", partial(stored_chat.delete, state)),
        Route("GET", "/chat/completions/{completion_id}/messages", partial(stored_chat.messages, state)),
        Route("POST", "/completions", partial(completions.create, registry)),
        Route("POST", "/embeddings", partial(embeddings.create, registry)),
        Route("POST", "/responses", partial(responses.create, registry, state)),
        Route("GET", "/responses/{response_id}", partial(responses.retrieve, state)),
        Route("DELETE", "/responses/{response_id}", partial(responses.delete, state)),
        Route("GET", "/responses/{response_id}/input_items", partial(responses.input_items, state)),
        Route("POST", "/conversations", partial(conversations.create, state)),
        Route("GET", "/conversations/{conversation_id}", partial(conversations.retrieve, state)),
        Route("POST", "/conversations/{conversation_id}", partial(conversations.update, state)),
        Route("DELETE", "/conversations/{conversation_id}", partial(conversations.delete, state)),
        Route("GET", "/conversations/{conversation_id}/items", partial(conversations.list_items, state)),
        Route("POST", "/conversations/{conversation_id}/items", partial(conversations.add_items, state)),
        Route("GET", "/conversations/{conversation_id}/items/{item_id}", partial(conversations.retrieve_item, state)),
        Route("DELETE", "/conversations/{conversation_id}/items/{item_id}", partial(conversations.delete_item, state)),
    ]
