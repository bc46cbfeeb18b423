"""The API's error types, free of any dialect's wording or shape.

Two kinds of failure reach a client:

- ``APIError``: an answer already worded (a status, a message and the fields
  OpenAI's error object carries), raised where the words are known: request
  fields, JSON bodies, access checks. Each dialect renders it in its own shape
  (OpenAI: ``{"error": {...}}``).
- ``ServiceError``: what the dialect-neutral layers (the registry, the
  generation service) refuse, carrying only facts (numbers, the request field
  at fault); each dialect words it itself.
"""

from __future__ import annotations


class APIError(Exception):
    """An error response: ``status`` with ``message``; ``param``, ``code`` and
    ``type`` as OpenAI's error object names them (``type`` None: the renderer
    derives it from the status); ``headers`` go on the response (Retry-After, Allow)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.headers = headers or []
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type


class ServiceError(Exception):
    """A request the dialect-neutral layers refuse; each dialect words it."""


class UnknownModel(ServiceError):
    """No model is served under ``model``."""

    def __init__(self, model: str):
        super().__init__(model)
        self.model = model


class WrongModelKind(ServiceError):
    """The model served as ``model`` cannot do ``wanted`` ("generate": chat
    and completions; "embed": embeddings)."""

    def __init__(self, model: str, wanted: str):
        super().__init__(model, wanted)
        self.model = model
        self.wanted = wanted


class InputTooLong(ServiceError):
    """Input ``index`` of ``field`` holds ``tokens`` tokens, more than the model's ``context_length``."""

    def __init__(self, field: str, index: int | None, tokens: int, context_length: int):
        super().__init__(field, index, tokens, context_length)
        self.field = field
        self.index = index  # None: the field holds one input
        self.tokens = tokens
        self.context_length = context_length


class Busy(ServiceError):
    """The queue is full; the client may retry after ``retry_after`` seconds (one, for every queue so far)."""

    def __init__(self, retry_after: int = 1):
        super().__init__(retry_after)
        self.retry_after = retry_after


class MaxTokensOverLimit(ServiceError):
    """The request's ``field`` asks for ``asked`` tokens, more than the server's ``limit`` (--max-tokens-limit)."""

    def __init__(self, field: str, asked: int, limit: int):
        super().__init__(field, asked, limit)
        self.field = field
        self.asked = asked
        self.limit = limit


class ContextExceeded(ServiceError):
    """A prompt and the completion asked for cannot fit the model's context.

    ``prompt_tokens`` is the prompt's length, or, for a prompt refused by its
    ``prompt_bytes`` before it was tokenized, the fewest tokens it could have.
    ``max_tokens`` is None when the request set no bound (the prompt alone is too long).
    ``field`` is the request field that holds the prompt."""

    def __init__(self, context_length: int, prompt_tokens: int, max_tokens: int | None, field: str,
                 prompt_bytes: int | None = None):
        super().__init__(context_length, prompt_tokens, max_tokens, field)
        self.context_length = context_length
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.field = field
        self.prompt_bytes = prompt_bytes


class PromptRejected(ServiceError):
    """The model's chat template refused the messages in ``field``; ``reason`` says why."""

    def __init__(self, reason: str, field: str):
        super().__init__(reason)
        self.reason = reason
        self.field = field


class ShuttingDown(ServiceError):
    """The server is draining: it takes no new request, and cuts the ones still
    running when the drain's deadline comes."""


class Loading(ServiceError):
    """The server is still loading its models."""
