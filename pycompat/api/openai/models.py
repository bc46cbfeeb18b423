"""GET /v1/models and GET /v1/models/{model}"""

from __future__ import annotations

from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response

OWNER = "pycompat"


def model_object(registry: Registry, model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": registry.get(model_id).created, "owned_by": OWNER}


async def list_models(registry: Registry, request: Request) -> Response:
    return json_response({"object": "list", "data": [model_object(registry, i) for i in registry.all_ids()]})


async def retrieve_model(registry: Registry, request: Request, model: str) -> Response:
    return json_response(model_object(registry, model))
