"""The plain request and response values the HTTP layer hands to the API layer
and takes back. The API layer never sees h11 or sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit


@dataclass
class Request:
    method: str
    target: str  # as sent: origin-form "/v1/models?x=1", or absolute-form "http://host/v1/models"
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes = b""
    client: str = ""  # the peer's address, for logs

    @property
    def path(self) -> str:
        """The percent-decoded path, without the query (and without scheme and
        host when the target is in absolute form, which servers must accept)."""
        target = self.target
        if not target.startswith("/") and "://" in target:  # "http://host/path?q"
            target = urlsplit(target).path or "/"
        return unquote(target.split("?", 1)[0])

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query's name-value pairs, percent-decoded, in order (a name may repeat)."""
        target = self.target
        if "?" not in target:
            return []
        return parse_qsl(target.split("?", 1)[1].split("#", 1)[0], keep_blank_values=True)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def describe(self) -> str:
        """``METHOD target from client``, for log lines."""
        return f"{self.method} {self.target[:200]} from {self.client or 'unknown'}"


@dataclass
class Response:
    """A whole response. ``stream``, when set, supplies the body in pieces
    instead of ``body`` (sent with chunked transfer encoding). ``on_close`` is
    called once the response is over, sent or not: what a handler started for
    it (a generation) is released there even if the stream was never read."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    on_close: Callable[[], None] | None = None
