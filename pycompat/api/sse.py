"""Server-Sent Events framing, as OpenAI streams it: one ``data: {json}`` event
per chunk, each followed by a blank line, and ``data: [DONE]`` to close."""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n\n"
