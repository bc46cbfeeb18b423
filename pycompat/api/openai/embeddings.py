"""POST /v1/embeddings"""

from __future__ import annotations

import base64

import numpy as np

from pycompat.api import embedding, json_body
from pycompat.api.openai.errors import check_token_ids, invalid_type, invalid_value
from pycompat.api.openai.protocol import EMBEDDINGS, Fields
from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_inputs(value) -> tuple[list[str | list[int]], bool]:
    """``input`` as a list of inputs (texts or token-id lists), and whether it held just one."""
    if isinstance(value, str):
        inputs, single = [value], True
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        inputs, single = [value], True
    elif isinstance(value, list) and value and (all(isinstance(v, str) for v in value)
                                                or all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value)):
        inputs, single = value, False
    elif value == []:
        raise invalid_value("input", "empty array. Expected an array with minimum length 1, but got an empty array instead.")
    else:
        raise invalid_type("input", "a string, an array of strings, an array of tokens or an array of token arrays", value)
    if len(inputs) > MAX_INPUTS:
        raise invalid_value("input", f"array too long. Expected an array with maximum length {MAX_INPUTS}, but got an array with length {len(inputs)} instead.")
    for index, one in enumerate(inputs):
        if len(one) == 0:
            where = "input" if single else f"input[{index}]"
            raise invalid_value(where, "an input must not be empty.")
    return inputs, single


def _check_token_ids(inputs: list[str | list[int]], single: bool, vocab_size: int) -> None:
    for index, one in enumerate(inputs):
        if isinstance(one, list):
            check_token_ids("input" if single else f"input[{index}]", one, vocab_size)


def _encoded(rows: np.ndarray, encoding_format: str) -> list:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's SDKs decode it
        return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows]
    return rows.astype(np.float64).tolist()


async def create(registry: Registry, request: Request) -> Response:
    fields = Fields(await json_body.parse_object(request.body), EMBEDDINGS)
    model_id = fields.get("model")
    inputs, single = parse_inputs(fields.get("input"))
    fields.check("user")
    encoding_format = fields.get("encoding_format")
    dimensions = fields.get("dimensions")
    served = registry.embedder(model_id)
    dim = served.embedding.embedder.dim
    if dimensions is not None and dimensions > dim:
        raise invalid_value("dimensions", f"this model's embeddings have {dim} dimensions; 'dimensions' may be 1 to {dim}, "
                            f"but got {dimensions} instead.")
    _check_token_ids(inputs, single, served.embedding.tokenizer.vocab_size)
    ids = await embedding.token_ids(served, inputs, "input", single)
    rows = await embedding.embed(served, ids, dimensions)
    n_tokens = sum(len(one) for one in ids)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(_encoded(rows, encoding_format))],
        "model": model_id,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    })
