"""What the chat and completions routes share: sampling fields, context checks,
running a generation to its end, and the usage object."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from pycompat.api.errors import APIError
from pycompat.api.params import Params
from pycompat.engine.generate import Finished, SamplingOptions, TextPiece, generate
from pycompat.engine.scheduler import ContextOverflow, Engine, QueueFull

# Sampling fields every generating route implements. top_k and min_p are not
# OpenAI's, but llama.cpp and vLLM accept them and so do we.
SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "min_p", "seed", "stop", "logit_bias"}
INT64 = (-(1 << 63), (1 << 63) - 1)


def sampling_options(p: Params, max_tokens: int | None, defaults: dict[str, float], vocab_size: int) -> SamplingOptions:
    """Sampling fields from the request; those it leaves out come from the
    model's recommended ``defaults``, then from OpenAI's defaults."""
    top_k = p.integer("top_k", 0)
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=p.number("temperature", defaults.get("temperature", 1.0), 0.0, 2.0),
        top_p=p.number("top_p", defaults.get("top_p", 1.0), 0.0, 1.0),
        top_k=int(defaults.get("top_k", 0)) if top_k is None else top_k,
        min_p=p.number("min_p", defaults.get("min_p", 0.0), 0.0, 1.0),
        seed=p.integer("seed", *INT64),
        stop=p.stop(),
        logit_bias=p.logit_bias(vocab_size),
    )


# What a client is told to wait before retrying when the queue is full.
RETRY_AFTER_SECONDS = 1


def queue_full() -> APIError:
    return APIError(
        429,
        "The server is busy: too many requests are waiting. Please retry shortly.",
        code="rate_limit_exceeded",
        headers=[("retry-after", str(RETRY_AFTER_SECONDS))],
    )


def check_admissible(engine: Engine, prompt_tokens: int, max_tokens: int | None, param: str) -> None:
    """Before a response starts: a 400 naming both numbers when the prompt (and
    completion) exceed the context, a 429 when the queue is full."""
    try:
        engine.check_queue()
    except QueueFull:
        raise queue_full() from None
    try:
        engine.check_fits(prompt_tokens, max_tokens)
    except ContextOverflow as e:
        asked = f"{e.prompt_tokens} in the prompt" if max_tokens is None else (
            f"{e.prompt_tokens + max_tokens} tokens ({e.prompt_tokens} in the prompt, {max_tokens} in the completion)"
        )
        raise APIError(
            400,
            f"This model's maximum context length is {e.context_length} tokens. However, you requested {asked}. "
            "Please reduce the length of the prompt or the completion.",
            param=param,
            code="context_length_exceeded",
        ) from None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


@dataclass
class Result:
    text: str
    finished: Finished


async def run_to_end(engine: Engine, prompt: list[int], opts: SamplingOptions) -> Result:
    pieces = []
    async with aclosing(events(engine, prompt, opts)) as generation:
        async for ev in generation:
            if isinstance(ev, TextPiece):
                pieces.append(ev.text)
            else:
                return Result("".join(pieces), ev)
    raise RuntimeError("generation ended without finishing")


async def events(engine: Engine, prompt: list[int], opts: SamplingOptions) -> AsyncIterator[TextPiece | Finished]:
    """The engine's generation, closed promptly if the consumer stops early; a
    full queue (a race with ``check_admissible``) becomes a 429."""
    try:
        async with aclosing(generate(engine, prompt, opts)) as gen:
            async for ev in gen:
                yield ev
    except QueueFull:
        raise queue_full() from None


def now() -> int:
    return int(time.time())
