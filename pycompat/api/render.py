"""Responses every dialect builds the same way: a JSON body, and a stream
guarded so that a failure mid-way ends it well-formed (each dialect supplies
its framing and its error event)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from contextvars import ContextVar

from pycompat.api.errors import APIError, ServiceError, ShuttingDown
from pycompat.http.messages import Response
from pycompat.lifecycle import READY, Lifecycle

log = logging.getLogger(__name__)

# The server's lifecycle, set by the App for the task that answers a request:
# the stream is built deep in a dialect that does not know the server, and
# read later by the HTTP layer in that same task.
request_lifecycle: ContextVar[Lifecycle] = ContextVar("request_lifecycle", default=Lifecycle(READY))

ErrorEvent = Callable[[APIError | ServiceError], bytes]


def json_response(body: dict, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(status, json.dumps(body, ensure_ascii=False).encode("utf-8", "replace"), content_type=content_type)


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
    them (which frees the request's place in the engine). At a drain's
    deadline, the wait for the next event is cut and the stream ends with a
    ShuttingDown error event."""
    lifecycle = request_lifecycle.get()
    try:
        async with aclosing(events) as inner:
            while True:
                with lifecycle.cuttable() as scope:  # never held across the yield below
                    try:
                        e = await anext(inner)
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise ShuttingDown()
                yield e
    except (APIError, ServiceError) as e:
        yield error_event(e)
    except Exception:
        log.exception("stream failed")
        yield error_event(APIError(500, "The server had an error while generating the response."))
