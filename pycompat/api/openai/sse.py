"""Server-Sent Events framing, as OpenAI streams it: one ``data: {json}`` event
per chunk, each followed by a blank line, and ``data: [DONE]`` to close. An
error that ends a stream early is one more event holding the error object
(which the OpenAI SDKs raise as an APIError)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from pycompat.api.errors import APIError, ServiceError
from pycompat.api.openai.errors import error_json
from pycompat.api.render import stream_response
from pycompat.http.messages import Response

DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n\n"


def error_event(e: APIError | ServiceError) -> bytes:
    return event(error_json(e))


def sse_response(events: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> Response:
    """A stream of events; ``on_close`` releases what produces them, even if the stream is never read."""
    return stream_response(events, CONTENT_TYPE, HEADERS, error_event, on_close)
