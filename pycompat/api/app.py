"""The API's front door: which route answers a request (router.py), who may
ask (access.py) and how often (limits.py), and the guarantee that whatever goes wrong, the client gets
an error in the shape of the API it called.

Each API dialect (``openai``, and ``ollama``: Ollama's native /api routes) is a package that supplies its
routes, the prefixes they are served under, and its error rendering; errors
outside any dialect's routes (an unknown path, ``/health``) are rendered by
the first dialect, the default.

The App also answers for the server's lifecycle (pycompat.lifecycle): while
the models load, every route but ``/`` and ``/health`` is a 503; while the
server drains, every new request is a 503 that closes its connection, and
``/health`` says ``draining`` (with a 503, so a load balancer stops sending).

And it is where each request is observed (exchange.py): it gets an id
(``x-request-id``, the client's own if sane) and ``openai-processing-ms`` on
its response, and when it ends (a stream: when its last event is sent or its
client leaves) it is counted in the metrics (metrics.py, served at
``/metrics``) and written to the access log (access_log.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import exchange, ollama, openai
from pycompat.api.access import ALLOWED_METHODS, AccessPolicy
from pycompat.api.access_log import AccessLog
from pycompat.api.errors import APIError, Loading, ServiceError, ShuttingDown
from pycompat.api.limits import ClientLimits
from pycompat.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, request_lifecycle
from pycompat.api.router import Match, Route, Router
from pycompat.http.messages import Request, Response
from pycompat.lifecycle import DRAINING, LOADING, READY, Lifecycle
from pycompat.state.store import Store

log = logging.getLogger(__name__)

DIALECTS = (openai, ollama)


class App:
    """``registry`` None: the models are still loading; ``serve_models`` adds
    them (with ``lifecycle``, the CLI's; without, the App is ready at once)."""

    def __init__(self, registry: Registry | None, access: AccessPolicy | None = None, state: Store | None = None,
                 lifecycle: Lifecycle | None = None, limits: ClientLimits | None = None, access_log: AccessLog | None = None):
        self.registry = registry
        self.metrics = Metrics(lambda: self.registry.models if self.registry is not None else [])
        self.access_log = access_log or AccessLog()
        self.access = access or AccessPolicy()
        self.limits = limits or ClientLimits()
        self.state = state
        self.lifecycle = lifecycle or Lifecycle(READY)
        self.router = Router()
        self.router.add([Route("GET", "/", self._root), Route("GET", "/health", self._health), Route("GET", "/metrics", self._metrics)])
        if registry is not None:
            self.serve_models(registry)

    def serve_models(self, registry: Registry) -> None:
        self.registry = registry
        for dialect in DIALECTS:
            self.router.add(dialect.routes(registry, self.state), dialect.PREFIXES, owner=dialect)
        self.lifecycle.ready()

    async def __call__(self, request: Request) -> Response:
        ex = exchange.Exchange(exchange.request_id_for(request.header("x-request-id")), request.method, request.target[:200],
                               request.client, keep_content=self.access_log.content)
        exchange.current.set(ex)  # for the layers below, the stream, and log lines, all in this task
        try:
            response = await self._answer(request, ex)
        except BaseException:  # cancelled: the client went away before its response was ready (or the server stops)
            ex.status, ex.cancelled = exchange.CLIENT_CLOSED, True
            self._ended(ex, request)
            raise
        ex.status, ex.head_at = response.status, time.monotonic()
        response.headers += [("x-request-id", ex.id), ("openai-processing-ms", str(ex.processing_ms))]
        if response.stream is not None and request.method != "HEAD":
            ex.streamed, response.stream = True, _watched(response.stream, ex)
        response.on_close = _then(response.on_close, lambda: self._ended(ex, request))
        return response

    def _ended(self, ex: exchange.Exchange, request: Request) -> None:
        """Counts and logs a request that has ended; never fails the request for it."""
        ex.ended_at = time.monotonic()
        ex.cancelled = ex.cancelled or (ex.streamed and not ex.stream_done)
        try:
            self.metrics.observe(ex)
            self.access_log.write(ex, request.body)
        except Exception:
            log.exception("could not record %s", request.describe())

    async def _answer(self, request: Request, ex: exchange.Exchange) -> Response:
        match = None
        request_lifecycle.set(self.lifecycle)  # for the streams this request's task reads
        try:
            if request.method == "OPTIONS" and request.path.rstrip("/") == "*":  # "OPTIONS * HTTP/1.1": about the server itself
                response = Response(204, content_type="text/plain", headers=[("allow", ALLOWED_METHODS)])
            elif self.lifecycle.phase != READY and request.path.rstrip("/") not in ("", "/health", "/metrics"):
                raise Loading() if self.lifecycle.phase == LOADING else ShuttingDown()
            else:
                match = self.router.resolve(request.path)
                if match is not None:
                    ex.route = match.template
                with self.lifecycle.cuttable() as scope:
                    response = await self._dispatch(request, match)
                if scope.cancelled_caught:
                    raise ShuttingDown()
        except (APIError, ServiceError) as e:
            response = self._dialect(match, request.path).error_response(e)
        except Exception:
            log.exception("unexpected error on %s", request.describe())
            response = self._dialect(match, request.path).error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(self.access.cors_headers(request))
        if self.lifecycle.phase == DRAINING and not any(k == "connection" for k, _ in response.headers):
            response.headers.append(("connection", "close"))
        return response

    def _dialect(self, match: Match | None, path: str):
        """The dialect that renders an error: the route's owner; for a path no route
        matches, the dialect whose prefix it is under (an unknown /api/... gets
        Ollama's shape); else the first."""
        if match is not None and match.owner is not None:
            return match.owner
        return next((d for d in DIALECTS if any(path == p or path.startswith(p + "/") for p in d.PREFIXES)), DIALECTS[0])

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
        if self.access.is_public(request):
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
        # Ollama's words: its clients and tools probe / to tell whether the server is up.
        return Response(200, ollama.ROOT_TEXT, content_type="text/plain; charset=utf-8")

    async def _metrics(self, request: Request) -> Response:
        """The Prometheus exposition (metrics.py)."""
        return Response(200, self.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

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


async def _watched(stream: AsyncIterator[bytes], ex: exchange.Exchange) -> AsyncIterator[bytes]:
    """Passes a stream through; one the HTTP layer stops reading before its end
    (its client went away) marks its request cancelled."""
    async with aclosing(stream) as pieces:
        async for piece in pieces:
            yield piece
    ex.stream_done = True


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
