"""The API's front door: which route answers a request (router.py), who may ask
(access.py), and the guarantee that whatever goes wrong, the client gets an OpenAI-shaped error."""

from __future__ import annotations

import logging

from pycompat.api import chat, completions, models
from pycompat.api.access import ALLOWED_METHODS, AccessPolicy
from pycompat.api.errors import APIError
from pycompat.api.registry import Registry
from pycompat.api.render import error_response, json_response
from pycompat.api.router import Route, Router
from pycompat.http.messages import Request, Response

log = logging.getLogger(__name__)

# The prefixes OpenAI's routes are served under.
PREFIXES = ("/v1",)


class App:
    def __init__(self, registry: Registry, access: AccessPolicy | None = None):
        self.registry = registry
        self.access = access or AccessPolicy()
        self.router = Router()
        self.router.add([Route("GET", "/", self._root), Route("GET", "/health", self._health)])
        self.router.add([
            Route("GET", "/models", lambda r: models.list_models(self.registry)),
            Route("GET", "/models/{model...}", lambda r, model: models.retrieve_model(self.registry, model)),
            Route("POST", "/chat/completions", lambda r: chat.create(self.registry, r)),
            Route("POST", "/completions", lambda r: completions.create(self.registry, r)),
        ], PREFIXES)

    async def __call__(self, request: Request) -> Response:
        try:
            response = await self._dispatch(request)
        except APIError as e:
            response = error_response(e)
        except Exception:
            log.exception("unexpected error on %s", request.describe())
            response = error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(self.access.cors_headers(request))
        return response

    async def _dispatch(self, request: Request) -> Response:
        if request.method == "OPTIONS" and request.path.rstrip("/") == "*":  # "OPTIONS * HTTP/1.1": about the server itself
            return Response(204, content_type="text/plain", headers=[("allow", ALLOWED_METHODS)])
        match = self.router.resolve(request.path)
        self.access.check(request, route_known=match is not None)
        if match is None:
            raise APIError(404, f"Invalid URL ({request.method} {request.path[:200]})", code="unknown_url")
        if request.method == "OPTIONS":  # CORS preflight from browser clients
            return Response(204, content_type="text/plain", headers=[("allow", match.allow)])
        handler = match.handler(request.method)
        if handler is None:
            raise APIError(405, f"Method {request.method[:20]} is not allowed for {request.path[:200]}; use {match.allow}.",
                           code="method_not_allowed", headers=[("allow", match.allow)])
        return await handler(request, **match.params)

    async def _root(self, request: Request) -> Response:
        return Response(200, b"pycompat is running\n", content_type="text/plain; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        # One model per server for now: its engine's figures are the server's.
        engine = self.registry.models[0].engine
        stats = engine.stats()
        return json_response({
            "status": "ok",
            "models": [m.ids[0] for m in self.registry.models],
            "generating": stats["running"],
            "queued": stats["waiting"],
            "kv_cache": stats["kv_cache"],
        })
