"""How Ollama's answers are framed: JSON objects, one per line, streamed as
``application/x-ndjson`` (or one object with ``stream: false``); timestamps
in RFC 3339 with fractions of a second; durations in nanoseconds, measured
here for the final object of every generation."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

from pycompat.api.ollama.errors import CONTENT_TYPE, error_bytes
from pycompat.api.render import json_response, stream_response
from pycompat.http.messages import Response

NDJSON_CONTENT_TYPE = "application/x-ndjson"


def timestamp(unix: float | None = None) -> str:
    """``created_at``: UTC, with microseconds, as Ollama writes it."""
    moment = datetime.now(timezone.utc) if unix is None else datetime.fromtimestamp(unix, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local_timestamp(unix: float) -> str:
    """``modified_at``: local time with its offset, as Ollama lists models."""
    return datetime.fromtimestamp(unix).astimezone().isoformat()


def line(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "replace") + b"\n"


def json_reply(body: dict, status: int = 200) -> Response:
    return json_response(body, status, CONTENT_TYPE)


def ndjson_reply(lines: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> Response:
    """A stream of JSON lines; a failure part-way ends it with an ``{"error": ...}`` line, as Ollama's do."""
    return stream_response(lines, NDJSON_CONTENT_TYPE, [], lambda e: error_bytes(e) + b"\n", on_close=on_close)


class Clock:
    """The phases of one generation, for the final object's durations: from the
    request's arrival; the model found (``load``); the prompt queued, its
    first token out (``prompt_eval``, queue wait included: the prompt's
    evaluation is what the client waited for); the last token out (``eval``)."""

    def __init__(self) -> None:
        self.arrived = time.monotonic()
        self.loaded = self.first_token = self.done = None

    def model_found(self) -> None:
        self.loaded = time.monotonic()

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def finished(self) -> None:
        self.done = time.monotonic()

    def durations(self) -> dict:
        done = self.done or time.monotonic()
        loaded = self.loaded or self.arrived
        first = self.first_token or done
        ns = lambda seconds: max(0, int(seconds * 1e9))  # noqa: E731
        return {
            "total_duration": ns(done - self.arrived),
            "load_duration": ns(loaded - self.arrived),
            "prompt_eval_duration": ns(first - loaded),
            "eval_duration": ns(done - first),
        }
