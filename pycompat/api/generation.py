"""What the chat and completions routes share: sampling fields, prompts to
tokens within the context, starting generations, running one to its end, and
the usage object."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass

import trio

from pycompat.api.errors import APIError
from pycompat.api.params import INT32_MAX, Params
from pycompat.engine.engine import ContextOverflow, Engine, QueueFull
from pycompat.engine.request import Finished, Generation, SamplingOptions, TextPiece, start

# Sampling fields every generating route implements. top_k and min_p are not
# OpenAI's, but llama.cpp and vLLM accept them and so do we.
SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "min_p", "seed", "stop", "logit_bias"}
INT64 = (-(1 << 63), (1 << 63) - 1)


def sampling_options(p: Params, max_tokens: int | None, defaults: dict[str, float], vocab_size: int) -> SamplingOptions:
    """Sampling fields from the request; those it leaves out come from the
    model's recommended ``defaults``, then from OpenAI's defaults."""
    top_k = p.integer("top_k", 0, INT32_MAX)
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


def context_exceeded(context_length: int, asked: str, param: str) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {context_length} tokens. However, you requested {asked}. "
        "Please reduce the length of the prompt or the completion.",
        param=param,
        code="context_length_exceeded",
    )


def check_length_bound(engine: Engine, n_bytes: int, max_tokens: int | None, param: str) -> None:
    """Refuses, before tokenizing, a text that cannot fit the context whatever
    its tokens: tokenizing megabytes would hold a core for seconds for nothing."""
    at_least = math.ceil(n_bytes / engine.model.tokenizer.max_bytes_per_token)
    room = engine.model.context_length - (max_tokens if max_tokens is not None else 1)
    if at_least > room:
        raise context_exceeded(engine.model.context_length, f"a prompt of {n_bytes} bytes, at least {at_least} tokens", param)


async def tokenize(engine: Engine, text: str) -> list[int]:
    """``text``'s token ids, off the event loop. Callers bound the text first
    (``check_length_bound``); the engine checks the exact count at submission."""
    return await trio.to_thread.run_sync(engine.model.tokenizer.encode, text)


def start_generations(engine: Engine, prompts: list[list[int]], opts: SamplingOptions, param: str) -> list[Generation]:
    """Queues the prompts as one request, or answers why not: a 400 naming both
    numbers when a prompt (and completion) exceed the context, a 429 when the queue is full."""
    try:
        return start(engine, prompts, opts)
    except QueueFull:
        raise queue_full() from None
    except ContextOverflow as e:
        raise context_overflow(e, param) from None


def context_overflow(e: ContextOverflow, param: str) -> APIError:
    asked = f"{e.prompt_tokens} in the prompt" if e.max_tokens is None else (
        f"{e.prompt_tokens + e.max_tokens} tokens ({e.prompt_tokens} in the prompt, {e.max_tokens} in the completion)"
    )
    return context_exceeded(e.context_length, asked, param)


def cancel_all(generations: list[Generation]) -> Callable[[], None]:
    """A Response's ``on_close``: gives up whatever of these generations is still running."""
    def cancel() -> None:
        for g in generations:
            g.cancel()

    return cancel


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


async def run_to_end(generation: Generation) -> Result:
    pieces = []
    async with aclosing(generation.events()) as events:
        async for ev in events:
            if isinstance(ev, TextPiece):
                pieces.append(ev.text)
            else:
                return Result("".join(pieces), ev)
    raise RuntimeError("generation ended without finishing")


def now() -> int:
    return int(time.time())
