"""Who may use the server: API keys, browser origins (CORS) and the Host header.

A server on localhost is reachable from every web page its user opens: a page
can send requests to it, and by rebinding its own domain name to 127.0.0.1 it
can even read the answers. So:

- With API keys set (``--api-key``), every route but the liveness ones needs
  ``Authorization: Bearer KEY``. A browser page cannot know the key, so any
  origin may then use the server from a browser (with it).
- Without keys, only browser pages on this machine (localhost origins) and a
  few non-web app schemes may use it, and, while it listens on loopback only,
  requests must not name a public domain (which defeats DNS rebinding), as
  Ollama does by default. ``--cors-origin`` names more origins.

A request from a browser carries ``Origin``; one from any other client does not,
and is never refused for its origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Iterable

from pycompat.api.errors import APIError
from pycompat.http.messages import Request

# Routes that answer without a key: liveness probes.
PUBLIC_ROUTES = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/")}
# Public too with --metrics-public: a Prometheus scraper that holds no key.
METRICS_ROUTES = {("GET", "/metrics"), ("HEAD", "/metrics")}
ALLOWED_METHODS = "GET, POST, DELETE, HEAD, OPTIONS"
# Schemes of origins that are apps on this machine, not web pages (editors' webviews, desktop shells, extensions).
APP_SCHEMES = {"app", "tauri", "vscode-webview", "vscode-file", "chrome-extension", "moz-extension", "safari-web-extension"}
_ORIGIN = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[^\]]*\]|[^:/]*)(?::\d+)?$", re.IGNORECASE)


def is_local_host(host: str) -> bool:
    """localhost, *.localhost, or a loopback address (IPv4 127/8, IPv6 ::1)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Names that only local resolution gives meaning to.
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def may_name_this_server(host: str) -> bool:
    """Whether a Host header's host could be this loopback server's own name.
    DNS rebinding needs a public domain name (the page's own, pointed at
    127.0.0.1), so what is refused is exactly that: a dotted name outside the
    local suffixes. Addresses and single-label names pass."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return "." not in host or host.endswith(LOCAL_SUFFIXES)


def _host_of(host_header: str) -> str:
    """The host part of a Host header ("example.com:8000", "[::1]:8000")."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class AccessPolicy:
    """Decides, per request, whether it may proceed and which CORS headers it gets.

    Args:
        api_keys: keys accepted as ``Authorization: Bearer KEY``; none means no key is needed.
        cors_origins: origins allowed besides the defaults (``*`` allows any).
        listen_host: the address the server listens on; on loopback, Host headers are checked.
    """

    def __init__(self, api_keys: Iterable[str] = (), cors_origins: Iterable[str] = (), listen_host: str = "127.0.0.1",
                 metrics_public: bool = False):
        self._public = PUBLIC_ROUTES | (METRICS_ROUTES if metrics_public else set())
        self._keys = [k.encode("utf-8") for k in api_keys if k]  # as a client sends them: UTF-8
        origins = [o.rstrip("/") for o in cors_origins]
        self._any_origin = "*" in origins or bool(self._keys)
        self._origins = {o.lower() for o in origins if o != "*"}
        self._check_host = not self._keys and is_local_host(listen_host)
        self._own_names = {socket.gethostname().lower()} if self._check_host else set()

    @property
    def keys_required(self) -> bool:
        return bool(self._keys)

    def is_public(self, request: Request) -> bool:
        """A route that answers without a key (and outside per-client limits): liveness probes, and /metrics with --metrics-public."""
        return (request.method, request.path) in self._public

    def origin_allowed(self, origin: str) -> bool:
        if self._any_origin or origin.lower() in self._origins:
            return True
        m = _ORIGIN.match(origin)
        if m is None:
            return False  # includes "null": sandboxed frames and file pages
        scheme = m["scheme"].lower()
        return scheme in APP_SCHEMES or (scheme in ("http", "https") and is_local_host(m["host"]))

    def check(self, request: Request, route_known: bool) -> None:
        """Raises the APIError that refuses ``request``, if any (403 for a host or
        origin, 401 for a key). Preflights and liveness routes need no key."""
        if self._check_host:
            host = _host_of(request.header("host") or "")
            if host and not may_name_this_server(host) and host.lower() not in self._own_names:
                raise APIError(403, f"Requests to this server must name a local host, not {host[:100]!r}: it listens on "
                               "loopback and has no API key. Start it with --api-key to serve other names.",
                               code="host_not_allowed")
        origin = request.header("origin")
        if origin is not None and not self.origin_allowed(origin):
            raise APIError(403, f"Browser pages from {origin[:100]!r} may not use this server. Start it with "
                           f"--cors-origin {origin[:100]} (or with --api-key) to allow them.", code="origin_not_allowed")
        if not self._keys or request.method == "OPTIONS" or self.is_public(request) or not route_known:
            return
        self._check_key(request.header("authorization"))

    def client_of(self, request: Request) -> tuple[str, str]:
        """Who is asking, for per-client limits, and what that is: the API key
        when keys are set (``check`` has let only a valid one through), else the
        client's address without its port."""
        if self._keys:
            return "key:" + (request.header("authorization") or "").strip().partition(" ")[2].strip(), "API key"
        address = request.client
        address = address[1 : address.find("]")] if address.startswith("[") else address.rsplit(":", 1)[0]
        return "address:" + address, "client address"

    def _check_key(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "No API key was given. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
                           type="invalid_request_error")
        given = token.encode("latin-1")  # the bytes as sent (headers are decoded as latin-1)
        # Compare against every key, always, so the time taken says nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            shown = f"{token[:3]}****{token[-4:]}" if len(token) > 10 else "****"
            raise APIError(401, f"The API key {shown} is not one this server accepts.", type="invalid_request_error",
                           code="invalid_api_key")

    def cors_headers(self, request: Request) -> list[tuple[str, str]]:
        """Headers that let a browser page from an allowed origin read the response."""
        origin = request.header("origin")
        if origin is None or not origin.isascii() or not self.origin_allowed(origin):
            return []
        headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
        if request.method == "OPTIONS":
            # "*" in Allow-Headers does not cover Authorization, so name what the page asked for.
            asked = request.header("access-control-request-headers")
            asked = asked if asked and asked.isascii() else None
            headers += [
                ("access-control-allow-methods", ALLOWED_METHODS),
                ("access-control-allow-headers", asked or "authorization, content-type"),
                ("access-control-max-age", "600"),
            ]
        else:
            headers.append(("access-control-expose-headers", "retry-after"))
        return headers
