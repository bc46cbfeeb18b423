"""OpenAI's error object, and OpenAI's words for every refusal.

An error is ``{"error": {"message", "type", "param", "code"}}`` with its HTTP
status; ``error_json`` is the one place an APIError becomes that object, and
``as_api_error`` words the dialect-neutral ServiceErrors as OpenAI's API does.
"""

from __future__ import annotations

import json

from pycompat.api.errors import (APIError, Busy, ContextExceeded, InputTooLong, Loading, MaxTokensOverLimit, PromptRejected,
                                  ServiceError, ShuttingDown, UnknownModel, WrongModelKind)
from pycompat.api.structured import GrammarRejected
from pycompat.http.messages import Response

_TYPE_FOR_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def as_api_error(e: APIError | ServiceError) -> APIError:
    """``e`` in OpenAI's words: an APIError as it is, a ServiceError worded here."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, UnknownModel):
        return APIError(404, f"The model `{e.model}` does not exist or you do not have access to it.", code="model_not_found")
    if isinstance(e, Busy):
        return APIError(429, "The server is busy: too many requests are waiting. Please retry shortly.",
                        code="rate_limit_exceeded", headers=[("retry-after", str(e.retry_after))])
    if isinstance(e, ContextExceeded):
        return _context_exceeded(e)
    if isinstance(e, MaxTokensOverLimit):  # worded as OpenAI words a max_tokens over a model's output limit
        return APIError(400, f"{e.field} is too large: {e.asked}. This server supports at most {e.limit} completion tokens "
                        f"per request, whereas you provided {e.asked}.", param=e.field, code="invalid_value")
    if isinstance(e, ShuttingDown):
        return APIError(503, "The server is shutting down and could not finish this request. Please retry it.",
                        code="server_shutting_down", headers=[("connection", "close")])
    if isinstance(e, Loading):
        return APIError(503, "The server is still loading its models. Please retry shortly.",
                        code="server_loading", headers=[("retry-after", "1")])
    if isinstance(e, WrongModelKind):
        if e.wanted == "embed":
            message = f"The model `{e.model}` generates text and cannot make embeddings; use an embedding model with /v1/embeddings."
        else:
            message = (f"The model `{e.model}` is an embedding model: it cannot generate text. "
                       "Use it with /v1/embeddings, or a chat model here.")
        return APIError(400, message, param="model", code="model_not_supported")
    if isinstance(e, InputTooLong):
        where = e.field if e.index is None else f"{e.field}[{e.index}]"
        return APIError(400, f"Invalid '{where}': this model's maximum context length is {e.context_length} tokens, "
                        f"however {where} has {e.tokens} tokens. Please reduce its length.",
                        param=where, code="context_length_exceeded")
    if isinstance(e, PromptRejected):
        return APIError(400, e.reason, param=e.field)
    if isinstance(e, GrammarRejected):
        if e.kind == "json_schema":
            return APIError(400, f"Invalid schema for {e.label}: {e.reason}", param=e.field, code="invalid_json_schema")
        return APIError(400, f"Invalid '{e.field}': {e.reason}", param=e.field, code="invalid_grammar")
    raise TypeError(f"no OpenAI wording for {type(e).__name__}")


def _context_exceeded(e: ContextExceeded) -> APIError:
    if e.prompt_bytes is not None:
        asked = f"a prompt of {e.prompt_bytes} bytes, at least {e.prompt_tokens} tokens"
    elif e.max_tokens is None:
        asked = f"{e.prompt_tokens} in the prompt"
    else:
        asked = f"{e.prompt_tokens + e.max_tokens} tokens ({e.prompt_tokens} in the prompt, {e.max_tokens} in the completion)"
    return APIError(
        400,
        f"This model's maximum context length is {e.context_length} tokens. However, you requested {asked}. "
        "Please reduce the length of the prompt or the completion.",
        param=e.field,
        code="context_length_exceeded",
    )


def error_json(e: APIError | ServiceError) -> dict:
    """The error object for ``e``."""
    e = as_api_error(e)
    return {"error": {"message": e.message, "type": e.type or _TYPE_FOR_STATUS.get(e.status, "invalid_request_error"),
                      "param": e.param, "code": e.code}}


def error_bytes(e: APIError | ServiceError) -> bytes:
    # A message may quote what a client sent; "replace" keeps even a lone surrogate from failing the error itself.
    return json.dumps(error_json(e), ensure_ascii=False).encode("utf-8", "replace")


def error_response(e: APIError | ServiceError) -> Response:
    """The whole response for ``e``: its status, the error object and its headers."""
    api_error = as_api_error(e)
    return Response(api_error.status, error_bytes(api_error), headers=list(api_error.headers))


def error_body(status: int, message: str) -> bytes:
    """Body for errors raised below the API layer (HTTP protocol errors, limits)."""
    codes = {408: "request_timeout", 413: "request_too_large", 500: None}
    return error_bytes(APIError(status, message, code=codes.get(status)))


def invalid_type(param: str, expected: str, value) -> APIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return APIError(400, f"Invalid type for '{param}': expected {expected}, but got {got.get(type(value), type(value).__name__)} instead.", param=param, code="invalid_type")


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, f"Invalid '{param}': {message}", param=param, code="invalid_value")


def check_token_ids(param: str, ids: list[int], vocab_size: int) -> None:
    """Raises a 400 naming ``param`` for the first id outside the vocabulary."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        shown = bad if abs(bad) < 10**12 else f"{str(bad)[:12]}..."
        raise invalid_value(param, f"token id {shown} is outside the vocabulary (0..{vocab_size - 1}).")


def missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
