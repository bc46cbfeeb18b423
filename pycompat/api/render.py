"""JSON responses and the guard that keeps a failing stream well-formed."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from pycompat.api import sse
from pycompat.api.errors import APIError
from pycompat.http.messages import Response

log = logging.getLogger(__name__)


def json_response(body: dict, status: int = 200) -> Response:
    return Response(status, json.dumps(body, ensure_ascii=False).encode("utf-8", "replace"))


def error_response(e: APIError) -> Response:
    return Response(e.status, e.body(), headers=list(e.headers))


def sse_response(events: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> Response:
    """A stream of events; ``on_close`` releases what produces them, even if the stream is never read."""
    return Response(200, content_type=sse.CONTENT_TYPE, headers=list(sse.HEADERS), stream=_guarded(events), on_close=on_close)


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Passes events through; if producing one fails, the client gets an error
    event (which the OpenAI SDKs raise as an APIError) instead of a cut stream.
    Closing it closes ``events`` at once, and with it the generation behind
    them (which frees the request's place in the engine)."""
    try:
        async with aclosing(events) as inner:
            async for e in inner:
                yield e
    except APIError as e:
        yield sse.event(e.to_dict())
    except Exception:
        log.exception("stream failed")
        yield sse.event(APIError(500, "The server had an error while generating the response.").to_dict())
