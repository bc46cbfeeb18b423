"""Routing: which handler answers a method and path, and the guarantee that
whatever goes wrong, the client gets an OpenAI-shaped error."""

from __future__ import annotations

import logging

from pycompat.api import chat, completions, models
from pycompat.api.errors import APIError
from pycompat.api.registry import Registry
from pycompat.api.render import error_response, json_response
from pycompat.http.messages import Request, Response

log = logging.getLogger(__name__)

MODELS_PREFIX = "/v1/models/"
CORS_HEADERS = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    ("access-control-allow-headers", "*"),
]


class App:
    def __init__(self, registry: Registry):
        self.registry = registry
        # path -> {method: handler(request)}
        self._routes = {
            "/health": {"GET": self._health},
            "/v1/models": {"GET": lambda r: models.list_models(self.registry)},
            "/v1/chat/completions": {"POST": lambda r: chat.create(self.registry, r)},
            "/v1/completions": {"POST": lambda r: completions.create(self.registry, r)},
        }

    async def __call__(self, request: Request) -> Response:
        try:
            response = await self._dispatch(request)
        except APIError as e:
            response = error_response(e)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.target)
            response = error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(CORS_HEADERS)
        return response

    async def _dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        methods = self._routes.get(path)
        if methods is None and path.startswith(MODELS_PREFIX):
            model_id = path[len(MODELS_PREFIX) :]
            methods = {"GET": lambda r: models.retrieve_model(self.registry, model_id)}
        if methods is None:
            raise APIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
        if request.method == "OPTIONS":  # CORS preflight from browser clients
            return Response(204, content_type="text/plain", headers=[("allow", ", ".join(methods))])
        handler = methods.get(request.method)
        if handler is None:
            response = error_response(APIError(405, f"Method {request.method} is not allowed for {request.path}; use {', '.join(methods)}.", code="method_not_allowed"))
            response.headers.append(("allow", ", ".join(methods)))
            return response
        return await handler(request)

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
