"""Ollama's error shape, ``{"error": "..."}`` with the HTTP status, and Ollama's
words for the refusals it shares with every dialect.

The App renders every APIError and ServiceError raised on an Ollama route
here; the dialect-neutral ServiceErrors are worded as Ollama words them where
it has its own words (an unknown model, a full queue), else as the OpenAI
dialect does (the facts are the same; only the envelope differs).
"""

from __future__ import annotations

import json

from pycompat.api.errors import APIError, Busy, ServiceError, UnknownModel, WrongModelKind
from pycompat.api.openai.errors import as_api_error
from pycompat.http.messages import Response

CONTENT_TYPE = "application/json; charset=utf-8"


def as_ollama_error(e: APIError | ServiceError) -> APIError:
    """``e`` as a status, a message and headers."""
    if isinstance(e, UnknownModel):
        return APIError(404, f'model "{e.model[:200]}" not found: this server serves only the models it was started with '
                        "(pycompat serve --model); see /api/tags")
    if isinstance(e, Busy):  # Ollama's own status and words for a full queue
        return APIError(503, "server busy, please try again.  maximum pending requests exceeded",
                        headers=[("retry-after", str(e.retry_after))])
    if isinstance(e, WrongModelKind):  # Ollama's words: '"all-minilm" does not support chat'
        return APIError(400, f'"{e.model[:200]}" does not support ' + ("embeddings" if e.wanted == "embed" else "generate or chat"))
    return as_api_error(e)


def error_bytes(e: APIError | ServiceError) -> bytes:
    """The error object, as a JSON line would carry it."""
    # A message may quote what a client sent; "replace" keeps even a lone surrogate from failing the error itself.
    return json.dumps({"error": as_ollama_error(e).message}, ensure_ascii=False).encode("utf-8", "replace")


def error_response(e: APIError | ServiceError) -> Response:
    api_error = as_ollama_error(e)
    return Response(api_error.status, error_bytes(api_error), content_type=CONTENT_TYPE, headers=list(api_error.headers))


def bad_request(message: str) -> APIError:
    return APIError(400, message)
