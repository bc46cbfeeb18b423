"""GET /v1/models and GET /v1/models/{model}"""

from __future__ import annotations

from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response

OWNER = "pycompat"


def model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}


async def list_models(registry: Registry, request: Request) -> Response:
    # Read from the list, not through registry.get: a listing is about no one model (its access line names none).
    return json_response({"object": "list", "data": [model_object(i, m.created) for m in registry.models for i in m.ids]})


async def retrieve_model(registry: Registry, request: Request, model: str) -> Response:
    return json_response(model_object(model, registry.get(model).created))
