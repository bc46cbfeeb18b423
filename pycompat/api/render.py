"""Responses every dialect builds the same way: a JSON body, and a stream
guarded so that a failure mid-way ends it well-formed (each dialect supplies
its framing and its error event)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from pycompat.api.errors import APIError, ServiceError
from pycompat.http.messages import Response

log = logging.getLogger(__name__)

ErrorEvent = Callable[[APIError | ServiceError], bytes]


def json_response(body: dict, status: int = 200) -> Response:
    return Response(status, json.dumps(body, ensure_ascii=False).encode("utf-8", "replace"))


def stream_response(events: AsyncIterator[bytes], content_type: str, headers: list[tuple[str, str]], error_event: ErrorEvent,
                    on_close: Callable[[], None] | None = None) -> Response:
    """A 200 whose body is ``events``; ``on_close`` releases what produces them,
    even if the stream is never read. ``error_event`` frames an error that
    ends the stream early."""
    return Response(200, content_type=content_type, headers=list(headers), stream=_guarded(events, error_event), on_close=on_close)


async def _guarded(events: AsyncIterator[bytes], error_event: ErrorEvent) -> AsyncIterator[bytes]:
    """Passes events through; if producing one fails, the client gets an error
    event (which the OpenAI SDKs raise as an APIError) instead of a cut stream.
    Closing it closes ``events`` at once, and with it the generation behind
    them (which frees the request's place in the engine)."""
    try:
        async with aclosing(events) as inner:
            async for e in inner:
                yield e
    except (APIError, ServiceError) as e:
        yield error_event(e)
    except Exception:
        log.exception("stream failed")
        yield error_event(APIError(500, "The server had an error while generating the response."))
