"""What every route over stored objects shares: the store itself (or the
refusal when the server keeps none), metadata as OpenAI limits it, list
parameters (``after``, ``limit``, ``order``) and list envelopes, and the 404
for an id that is not stored."""

from __future__ import annotations

import re

from pycompat.api.errors import APIError
from pycompat.api.openai.errors import invalid_type, invalid_value
from pycompat.http.messages import Request
from pycompat.state.store import ASC, DESC, Page, Store

# OpenAI's limits on metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_LIST_LIMIT = 100
_METADATA_FILTER = re.compile(r"metadata\[(.*)\]")


def require(state: Store | None, what: str) -> Store:
    """The store; a 400 when the server was started with ``--state none``."""
    if state is None:
        raise APIError(400, f"This server keeps no state (it was started with --state none), so {what} is not available. "
                       "Start it with --state PATH to keep responses, conversations and chat completions.",
                       code="state_disabled")
    return state


def not_found(label: str, id: str, param: str | None = None) -> APIError:
    """The 404 for an id that is not stored (never was, deleted, or expired)."""
    return APIError(404, f"No {label} found with id '{id[:100]}'.", param=param, code="not_found")


def metadata(value, field: str = "metadata") -> dict[str, str]:
    """A metadata object checked against OpenAI's limits; null is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type(field, "an object", value)
    if len(value) > MAX_METADATA_PAIRS:
        raise invalid_value(field, f"too many keys. Expected an object with at most {MAX_METADATA_PAIRS} keys, but got {len(value)} instead.")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise invalid_value(field, f"key '{key[:MAX_METADATA_KEY]}...' is too long. Keys may be at most {MAX_METADATA_KEY} characters, "
                                f"but this one has {len(key)}.")
        if not isinstance(text, str):
            raise invalid_type(f"{field}.{key}", "a string", text)
        if len(text) > MAX_METADATA_VALUE:
            raise invalid_value(f"{field}.{key}", f"string too long. Expected a string with maximum length {MAX_METADATA_VALUE}, "
                                f"but got a string with length {len(text)} instead.")
    return dict(value)


class ListQuery:
    """A list route's query: ``after`` (a cursor id), ``limit`` (1-100, default
    20), ``order`` (``asc``/``desc``, default ``default_order``), and the
    ``metadata[key]=value`` filters and other names a route allows."""

    def __init__(self, request: Request, default_order: str = DESC, extra: tuple[str, ...] = (), metadata_filters: bool = False):
        self.after: str | None = None
        self.limit = 20
        self.order = default_order
        self.extra: dict[str, str] = {}
        self.metadata: dict[str, str] = {}
        for name, value in request.query:
            m = _METADATA_FILTER.fullmatch(name)
            if metadata_filters and m:
                self.metadata[m[1]] = value
            elif name == "after":
                self.after = value or None
            elif name == "limit":
                # Leading zeros dropped and the digits counted first: int() refuses a
                # string of more than 4,300 digits (a ValueError, not a 400).
                digits = value.lstrip("0") if value.isascii() and value.isdigit() else "x"
                if not (len(digits) <= 3 and digits.isdigit() and 1 <= int(digits) <= MAX_LIST_LIMIT):
                    raise invalid_value("limit", f"expected an integer from 1 to {MAX_LIST_LIMIT}, but got '{value[:20]}' instead.")
                self.limit = int(digits)
            elif name == "order":
                if value not in (ASC, DESC):
                    raise invalid_value("order", f"'{value[:20]}' is not one of ['asc', 'desc'].")
                self.order = value
            elif name in extra:
                self.extra[name] = value
            # Other names (the SDKs send none) are ignored, as query strings usually are.
        if len(self.metadata) > MAX_METADATA_PAIRS:
            raise invalid_value("metadata", f"at most {MAX_METADATA_PAIRS} metadata filters.")


def list_body(page: Page, data: list[dict]) -> dict:
    """OpenAI's list envelope for a page whose objects, as served, are ``data``."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
