"""Routing: which handler answers a method and path, who may ask (access.py),
and the guarantee that whatever goes wrong, the client gets an OpenAI-shaped error."""

from __future__ import annotations

import logging

from pycompat.api import chat, completions, models
from pycompat.api.access import ALLOWED_METHODS, AccessPolicy
from pycompat.api.errors import APIError
from pycompat.api.registry import Registry
from pycompat.api.render import error_response, json_response
from pycompat.http.messages import Request, Response

log = logging.getLogger(__name__)

MODELS_PREFIX = "/v1/models/"


class App:
    def __init__(self, registry: Registry, access: AccessPolicy | None = None):
        self.registry = registry
        self.access = access or AccessPolicy()
        # path -> {method: handler(request)}; HEAD is answered wherever GET is.
        self._routes = {
            "/": {"GET": self._root},
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
            log.exception("unexpected error on %s", request.describe())
            response = error_response(APIError(500, "The server had an error while processing your request."))
        response.headers.extend(self.access.cors_headers(request))
        return response

    def _methods(self, path: str) -> dict | None:
        methods = self._routes.get(path)
        if methods is None and path.startswith(MODELS_PREFIX):
            model_id = path[len(MODELS_PREFIX) :]
            methods = {"GET": lambda r: models.retrieve_model(self.registry, model_id)}
        return methods

    async def _dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if path == "*" and request.method == "OPTIONS":  # "OPTIONS * HTTP/1.1": about the server itself
            return Response(204, content_type="text/plain", headers=[("allow", ALLOWED_METHODS)])
        methods = self._methods(path)
        self.access.check(request, route_known=methods is not None)
        if methods is None:
            raise APIError(404, f"Invalid URL ({request.method} {request.path[:200]})", code="unknown_url")
        allowed = ", ".join([*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"])
        if request.method == "OPTIONS":  # CORS preflight from browser clients
            return Response(204, content_type="text/plain", headers=[("allow", allowed)])
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            response = error_response(APIError(405, f"Method {request.method[:20]} is not allowed for {request.path[:200]}; "
                                               f"use {allowed}.", code="method_not_allowed"))
            response.headers.append(("allow", allowed))
            return response
        return await handler(request)

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
