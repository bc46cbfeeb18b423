"""The one error type of the API, and its JSON rendering.

Every failure a client can see is an APIError carrying the HTTP status and
OpenAI's error fields; ``body`` is the only place they become JSON.
"""

from __future__ import annotations

import json

_TYPE_FOR_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error response: ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.headers = headers or []  # e.g. Retry-After on a 429
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_FOR_STATUS.get(status, "invalid_request_error")

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        # A message may quote what a client sent; "replace" keeps even a lone surrogate from failing the error itself.
        return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8", "replace")


def error_body(status: int, message: str) -> bytes:
    """Body for errors raised below the API layer (HTTP protocol errors, limits)."""
    codes = {408: "request_timeout", 413: "request_too_large", 500: None}
    return APIError(status, message, code=codes.get(status)).body()


def invalid_type(param: str, expected: str, value) -> APIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return APIError(400, f"Invalid type for '{param}': expected {expected}, but got {got.get(type(value), type(value).__name__)} instead.", param=param, code="invalid_type")


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, f"Invalid '{param}': {message}", param=param, code="invalid_value")


def missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
