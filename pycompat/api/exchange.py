"""One request as the operator sees it: its id, what it asked of which model,
how long each part took, and how it ended. The metrics (metrics.py) and the
access log (access_log.py) are both written from it when the request ends.

The App opens an ``Exchange`` for each request and makes it the task's
current one; the layers that know the facts report them here through the
``note_*`` functions (the registry the model, the generation service the
tokens and their timing, the embedding service its tokens), so no route
handler has to carry it. Outside a request (warming the cache at start) the
notes go nowhere.
"""

from __future__ import annotations

import secrets
import string
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

MAX_CLIENT_ID_CHARS = 128
_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")  # visible ASCII and the space

# Status logged for a request whose client went away before its response was ready (nginx's convention).
CLIENT_CLOSED = 499


def new_request_id() -> str:
    """``req_`` and 32 hex digits, as OpenAI's ids look."""
    return "req_" + secrets.token_hex(16)


def request_id_for(sent: str | None) -> str:
    """The client's own ``X-Request-Id`` when it is sane (printable ASCII, not
    blank, at most 128 characters: it is echoed in a header and written to
    logs), else a new one."""
    if sent and len(sent) <= MAX_CLIENT_ID_CHARS and sent.strip() and all(c in _PRINTABLE for c in sent):
        return sent
    return new_request_id()


@dataclass
class Exchange:
    """What is known of one request. Times are ``time.monotonic()`` seconds."""

    id: str
    method: str
    path: str
    client: str
    started: float = field(default_factory=time.monotonic)
    keep_content: bool = False  # collect the generated text (--log-content)
    route: str = "unmatched"  # the route's template ("/v1/chat/completions"), bounded, unlike paths
    model: str = ""  # the served model's primary id, once the request named one that exists
    status: int = 0
    head_at: float | None = None  # its response head was ready
    ended_at: float | None = None
    cancelled: bool = False  # its client went away before the response was all sent
    streamed: bool = False  # its body is a stream (stream_done: sent to its end)
    stream_done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    generation_prompt_tokens: int = 0  # the part of prompt_tokens that went to a generation (not embeddings)
    first_token_at: float | None = None
    time_per_output_token: list[float] = field(default_factory=list)  # one per finished generation with 2+ tokens
    queue_waits: list[float] = field(default_factory=list)  # one per generation admitted by the engine
    completion: dict[int, list[str]] = field(default_factory=dict)  # generated text by choice, only with keep_content

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def duration(self) -> float:
        return (self.ended_at if self.ended_at is not None else time.monotonic()) - self.started

    @property
    def processing_ms(self) -> int:
        """Milliseconds from the request to its response head, as OpenAI's ``openai-processing-ms``."""
        return round(((self.head_at if self.head_at is not None else time.monotonic()) - self.started) * 1000)


current: ContextVar[Exchange | None] = ContextVar("pycompat_exchange", default=None)


def current_request_id() -> str | None:
    ex = current.get()
    return ex.id if ex is not None else None


# --- what the layers below the App report ---


def note_model(model_id: str) -> None:
    """The request names a served model (its primary id)."""
    ex = current.get()
    if ex is not None:
        ex.model = model_id


def note_text(index: int, text: str) -> None:
    """Generation ``index`` of the request produced a piece of text: the first
    piece's time is the request's time to first token."""
    ex = current.get()
    if ex is None:
        return
    if ex.first_token_at is None and text:
        ex.first_token_at = time.monotonic()
    if ex.keep_content:
        ex.completion.setdefault(index, []).append(text)


def note_generation_done(prompt_tokens: int, completion_tokens: int, cached_tokens: int, counts_prompt: bool,
                         first_token_at: float | None, queue_wait: float | None) -> None:
    """One generation finished. ``counts_prompt``: the first choice of its
    prompt (choices share their prompt, and usage counts it once).
    ``first_token_at``: when it made its first text, for its time per output
    token; ``queue_wait``: its time in the engine's queue."""
    ex = current.get()
    if ex is None:
        return
    if counts_prompt:
        ex.prompt_tokens += prompt_tokens
        ex.generation_prompt_tokens += prompt_tokens
        ex.cached_tokens += cached_tokens
    ex.completion_tokens += completion_tokens
    if first_token_at is not None and completion_tokens > 1:
        ex.time_per_output_token.append((time.monotonic() - first_token_at) / (completion_tokens - 1))
    if queue_wait is not None:
        ex.queue_waits.append(queue_wait)


def note_embedded(tokens: int) -> None:
    """An embeddings request's inputs held ``tokens`` tokens."""
    ex = current.get()
    if ex is not None:
        ex.prompt_tokens += tokens
