"""GET /v1/models and GET /v1/models/{id}"""

from __future__ import annotations

from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Response


async def list_models(registry: Registry) -> Response:
    return json_response(registry.list_object())


async def retrieve_model(registry: Registry, model_id: str) -> Response:
    return json_response(registry.model_object(model_id))
