"""The API's front door: which route answers a request (router.py), who may
ask (access.py) and how often (limits.py), and the guarantee that whatever goes wrong, the client gets
an error in the shape of the API it called.

Each API dialect (today only ``openai``) is a package that supplies its
routes, the prefixes they are served under, and its error rendering; errors
outside any dialect's routes (an unknown path, ``/health``) are rendered by
the first dialect, the default.

The App also answers for the server's lifecycle (pycompat.lifecycle): while
the models load, every route but ``/`` and ``/health`` is a 503; while the
server drains, every new request is a 503 that closes its connection, and
``/health`` says ``draining`` (with a 503, so a load balancer stops sending).
"""

from __future__ import annotations

import logging

from pycompat.api import openai
from pycompat.api.access import ALLOWED_METHODS, PUBLIC_ROUTES, AccessPolicy
from pycompat.api.errors import APIError, Loading, ServiceError, ShuttingDown
from pycompat.api.limits import ClientLimits
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, request_lifecycle
from pycompat.api.router import Match, Route, Router
from pycompat.http.messages import Request, Response
from pycompat.lifecycle import DRAINING, LOADING, READY, Lifecycle
from pycompat.state.store import Store

log = logging.getLogger(__name__)

DIALECTS = (openai,)


class App:
    """``registry`` None: the models are still loading; ``serve_models`` adds
    them (with ``lifecycle``, the CLI's; without, the App is ready at once)."""

    def __init__(self, registry: Registry | None, access: AccessPolicy | None = None, state: Store | None = None,
                 lifecycle: Lifecycle | None = None, limits: ClientLimits | None = None):
        self.registry = registry
        self.access = access or AccessPolicy()
        self.limits = limits or ClientLimits()
        self.state = state
        self.lifecycle = lifecycle or Lifecycle(READY)
        self.router = Router()
        self.router.add([Route("GET", "/", self._root), Route("GET", "/health", self._health)])
        if registry is not None:
            self.serve_models(registry)

    def serve_models(self, registry: Registry) -> None:
        self.registry = registry
        for dialect in DIALECTS:
            self.router.add(dialect.routes(registry, self.state), dialect.PREFIXES, owner=dialect)
        self.lifecycle.ready()

    async def __call__(self, request: Request) -> Response:
        match = None
        request_lifecycle.set(self.lifecycle)  # for the streams this request's task reads
        try:
            if request.method == "OPTIONS" and request.path.rstrip("/") == "*":  # "OPTIONS * HTTP/1.1": about the server itself
                response = Response(204, content_type="text/plain", headers=[("allow", ALLOWED_METHODS)])
            elif self.lifecycle.phase != READY and request.path.rstrip("/") not in ("", "/health"):
                raise Loading() if self.lifecycle.phase == LOADING else ShuttingDown()
            else:
                match = self.router.resolve(request.path)
                with self.lifecycle.cuttable() as scope:
                    response = await self._dispatch(request, match)
                if scope.cancelled_caught:
                    raise ShuttingDown()
        except (APIError, ServiceError) as e:
            response = self._dialect(match).error_response(e)
        except Exception:
            log.exception("unexpected error on %s", request.describe())
            response = self._dialect(match).error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(self.access.cors_headers(request))
        if self.lifecycle.phase == DRAINING and not any(k == "connection" for k, _ in response.headers):
            response.headers.append(("connection", "close"))
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
        """200 ``ok`` when ready; 503 ``loading`` or ``draining`` when requests would be refused."""
        models = self.registry.models if self.registry is not None else []
        engines = [m.engine for m in models if m.engine is not None]
        stats = [e.stats() for e in engines]
        phase = self.lifecycle.phase
        body = {
            "status": "ok" if phase == READY else phase,
            "models": [m.ids[0] for m in models],
            "generating": sum(s["running"] for s in stats),
            "queued": sum(s["waiting"] for s in stats),
        }
        if stats:  # the first text model's cache (most servers serve one)
            body["kv_cache"] = stats[0]["kv_cache"]
        return json_response(body, 200 if phase == READY else 503)


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
