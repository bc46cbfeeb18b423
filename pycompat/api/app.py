"""The API's front door: which route answers a request (router.py), who may
ask (access.py) and how often (limits.py), and the guarantee that whatever goes wrong, the client gets
an error in the shape of the API it called.

Each API dialect (today only ``openai``) is a package that supplies its
routes, the prefixes they are served under, and its error rendering; errors
outside any dialect's routes (an unknown path, ``/health``) are rendered by
the first dialect, the default.
"""

from __future__ import annotations

import logging

from pycompat.api import openai
from pycompat.api.access import ALLOWED_METHODS, PUBLIC_ROUTES, AccessPolicy
from pycompat.api.errors import APIError, ServiceError
from pycompat.api.limits import ClientLimits
from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.api.router import Match, Route, Router
from pycompat.http.messages import Request, Response
from pycompat.state.store import Store

log = logging.getLogger(__name__)

DIALECTS = (openai,)


class App:
    def __init__(self, registry: Registry, access: AccessPolicy | None = None, state: Store | None = None,
                 limits: ClientLimits | None = None):
        self.registry = registry
        self.access = access or AccessPolicy()
        self.limits = limits or ClientLimits()
        self.state = state
        self.router = Router()
        self.router.add([Route("GET", "/", self._root), Route("GET", "/health", self._health)])
        for dialect in DIALECTS:
            self.router.add(dialect.routes(registry, state), dialect.PREFIXES, owner=dialect)

    async def __call__(self, request: Request) -> Response:
        match = None
        try:
            if request.method == "OPTIONS" and request.path.rstrip("/") == "*":  # "OPTIONS * HTTP/1.1": about the server itself
                response = Response(204, content_type="text/plain", headers=[("allow", ALLOWED_METHODS)])
            else:
                match = self.router.resolve(request.path)
                response = await self._dispatch(request, match)
        except (APIError, ServiceError) as e:
            response = self._dialect(match).error_response(e)
        except Exception:
            log.exception("unexpected error on %s", request.describe())
            response = self._dialect(match).error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(self.access.cors_headers(request))
        return response

    def _dialect(self, match: Match | None):
        return match.owner if match is not None and match.owner is not None else DIALECTS[0]

    async def _dispatch(self, request: Request, match: Match | None) -> Response:
        self.access.check(request, route_known=match is not None)
        if match is None:
            raise APIError(404, f"Invalid URL ({request.method} {request.path[:200]})", code="unknown_url")
        if request.method == "OPTIONS":  # CORS preflight from browser clients
            return Response(204, content_type="text/plain", headers=[("allow", match.allow)])
        handler = match.handler(request.method)
        if handler is None:
            raise APIError(405, f"Method {request.method[:20]} is not allowed for {request.path[:200]}; use {match.allow}.",
                           code="method_not_allowed", headers=[("allow", match.allow)])
        # Per-client limits, on every route the access check guards (liveness probes and preflights pass free).
        if (request.method, request.path) in PUBLIC_ROUTES:
            return await handler(request, **match.params)
        admission = self.limits.admit(*self.access.client_of(request))
        try:
            response = await handler(request, **match.params)
        except BaseException:
            admission.release()
            raise
        if response.stream is None:  # its work is done
            admission.release()
        else:  # a stream is in flight until it ends (its on_close: sent, failed or abandoned)
            response.on_close = _then(response.on_close, admission.release)
        return response

    async def _root(self, request: Request) -> Response:
        return Response(200, b"pycompat is running\n", content_type="text/plain; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        engines = [m.engine for m in self.registry.models if m.engine is not None]
        stats = [e.stats() for e in engines]
        body = {
            "status": "ok",
            "models": [m.ids[0] for m in self.registry.models],
            "generating": sum(s["running"] for s in stats),
            "queued": sum(s["waiting"] for s in stats),
        }
        if stats:  # the first text model's cache (most servers serve one)
            body["kv_cache"] = stats[0]["kv_cache"]
        return json_response(body)


def _then(first, second):
    """A callback that calls ``first`` (if any), then ``second`` whatever ``first`` did."""
    if first is None:
        return second

    def both() -> None:
        try:
            first()
        finally:
            second()

    return both
