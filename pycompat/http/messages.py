"""The plain request and response values the HTTP layer hands to the API layer
and takes back. The API layer never sees h11 or sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass
class Request:
    method: str
    target: str  # path and query as sent, e.g. "/v1/models?x=1"
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""

    @property
    def path(self) -> str:
        """The percent-decoded path, without the query."""
        return unquote(self.target.split("?", 1)[0])

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Response:
    """A whole response. ``stream``, when set, supplies the body in pieces
    instead of ``body`` (sent with chunked transfer encoding)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
