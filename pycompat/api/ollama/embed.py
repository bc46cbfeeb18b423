"""POST /api/embed (texts in, ``embeddings`` out) and the older POST
/api/embeddings (one ``prompt``, one ``embedding``), served by the same
embedders as /v1/embeddings."""

from __future__ import annotations

from pycompat.api import embedding, json_body
from pycompat.api.ollama import names
from pycompat.api.ollama.fields import Body, bad, read_options
from pycompat.api.ollama.replies import Clock, json_reply
from pycompat.api.registry import Registry, ServedModel
from pycompat.http.messages import Request, Response

EMBED_FIELDS = {"model", "input", "truncate", "options", "keep_alive", "dimensions"}
EMBEDDINGS_FIELDS = {"model", "prompt", "options", "keep_alive"}
MAX_INPUTS = 2048


async def embed(registry: Registry, request: Request) -> Response:
    clock = Clock()
    body = Body(await json_body.parse_object(request.body), EMBED_FIELDS)
    name = body.required("model", str)
    given = body.get("input", (str, list), [])
    truncate = body.get("truncate", bool, True)
    dimensions = body.get("dimensions", int)
    body.get("keep_alive", (str, int, float))
    served = names.embedder(registry, name)
    clock.model_found()
    limit = _limit(served, body)
    inputs = [given] if isinstance(given, str) else given
    if not all(isinstance(x, str) for x in inputs):
        raise bad("invalid input: expected a string or an array of strings")
    if len(inputs) > MAX_INPUTS:
        raise bad(f"invalid input: at most {MAX_INPUTS} texts at once")
    dim = served.embedding.embedder.dim
    if dimensions is not None and not 1 <= dimensions <= dim:
        raise bad(f"invalid dimensions: this model's embeddings have {dim}; ask for 1 to {dim}")
    if not inputs:
        return json_reply({"model": name, "embeddings": []})
    ids = await embedding.token_ids(served, inputs, "input", isinstance(given, str), limit, truncate)
    rows = await embedding.embed(served, ids, dimensions)
    clock.finished()
    return json_reply({
        "model": name,
        "embeddings": rows.astype("float64").tolist(),
        "total_duration": clock.durations()["total_duration"],
        "load_duration": clock.durations()["load_duration"],
        "prompt_eval_count": sum(len(one) for one in ids),
    })


async def embeddings(registry: Registry, request: Request) -> Response:
    body = Body(await json_body.parse_object(request.body), EMBEDDINGS_FIELDS)
    name = body.required("model", str)
    prompt = body.get("prompt", str, "")
    body.get("keep_alive", (str, int, float))
    served = names.embedder(registry, name)
    limit = _limit(served, body)
    if not prompt:  # as Ollama answers an empty prompt
        return json_reply({"embedding": []})
    ids = await embedding.token_ids(served, [prompt], "prompt", True, limit)
    rows = await embedding.embed(served, ids)
    return json_reply({"embedding": rows[0].astype("float64").tolist()})


def _limit(served: ServedModel, body: Body) -> int:
    """The most tokens an input may have: the model's, or ``options.num_ctx`` when
    smaller (as Ollama cuts inputs to it). The other options (checked as on
    generation) change nothing in an embedding."""
    options = read_options(body.get("options", dict), served.embedding.context_length)
    return options.num_ctx or served.embedding.context_length
