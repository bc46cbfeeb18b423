"""POST /v1/completions (the legacy text completion route)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import trio

from pycompat.api import json_body, sse
from pycompat.api.errors import APIError, invalid_type, invalid_value
from pycompat.api.generation import (SAMPLING_FIELDS, Result, cancel_all, check_length_bound, context_overflow, now,
                                     run_to_end, sampling_options, start_generations, tokenize, usage)
from pycompat.api.ids import new_id
from pycompat.api.params import INT32_MAX, Params
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, sse_response
from pycompat.engine.engine import ContextOverflow, Engine
from pycompat.engine.request import Finished, Generation
from pycompat.http.messages import Request, Response

IMPLEMENTED = {"model", "prompt", "max_tokens", "stream", "stream_options"} | SAMPLING_FIELDS
IGNORED = {"best_of", "echo", "frequency_penalty", "logprobs", "n", "presence_penalty", "suffix", "user"}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this route
MAX_PROMPTS = 64


def _is_token_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def parse_prompts(value) -> list[str | list[int]]:
    """The prompt field as a list of prompts: strings or token-id lists."""
    if value is None:
        raise APIError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if isinstance(value, str) or _is_token_list(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_token_list(v) for v in value):
        if len(value) > MAX_PROMPTS:
            raise invalid_value("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(value)}.")
        return value
    raise invalid_type("prompt", "a string, an array of strings, an array of tokens or an array of token arrays", value)


def _check_token_ids(engine: Engine, ids: list[int]) -> list[int]:
    vocab = engine.model.kernel.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        shown = bad if abs(bad) < 10**12 else f"{str(bad)[:12]}..."
        raise invalid_value("prompt", f"token id {shown} is outside the vocabulary (0..{vocab - 1}).")
    return list(ids)


async def _encode(engine: Engine, prompt: str, index: int) -> list[int]:
    tokenizer = engine.model.tokenizer
    ids = await tokenize(engine, prompt)
    if not ids:  # an empty prompt: start from BOS, as there is nothing else to condition on
        if tokenizer.bos_id is None:
            raise invalid_value("prompt", f"prompt {index} is empty and this model has no BOS token to start from.")
        ids = [tokenizer.bos_id]
    return ids


async def create(registry: Registry, request: Request) -> Response:
    p = Params(await json_body.parse_object(request.body), IMPLEMENTED, IGNORED)
    model_id = p.string("model", required=True)
    prompts = parse_prompts(p.raw("prompt"))
    stream = p.boolean("stream")
    include_usage = p.stream_include_usage(stream)
    max_tokens = p.integer("max_tokens", 0, INT32_MAX)
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    served = registry.get(model_id)
    engine = served.engine
    opts = sampling_options(p, max_tokens, engine.model.sampling_defaults, engine.model.kernel.vocab_size)
    # Strings are checked against the context before any is tokenized.
    for prompt in prompts:
        if isinstance(prompt, str):
            check_length_bound(engine, len(prompt.encode("utf-8")), max_tokens, "prompt")
    encoded = [_check_token_ids(engine, prompt) if isinstance(prompt, list) else await _encode(engine, prompt, i)
               for i, prompt in enumerate(prompts)]
    completion_id, created = new_id("cmpl-"), now()
    if max_tokens == 0:
        # Nothing to generate (the scoring idiom, with echo and logprobs): each prompt must still fit.
        for ids in encoded:
            try:
                engine.check_fits(len(ids), 0)
            except ContextOverflow as e:
                raise context_overflow(e, "prompt") from None
        finished = [Finished("length", len(ids), 0) for ids in encoded]
        if stream:
            return sse_response(_stream_finished(finished, completion_id, created, model_id, include_usage))
        return json_response(_body(completion_id, created, model_id, [("", f) for f in finished]))

    generations = start_generations(engine, encoded, opts, "prompt")
    if stream:
        return sse_response(_stream(generations, completion_id, created, model_id, include_usage), on_close=cancel_all(generations))
    # The prompts run at once: the engine batches them.
    results: list[Result | None] = [None] * len(generations)

    async def run(index: int) -> None:
        results[index] = await run_to_end(generations[index])

    try:
        async with trio.open_nursery() as nursery:
            for index in range(len(generations)):
                nursery.start_soon(run, index)
    finally:
        cancel_all(generations)()
    return json_response(_body(completion_id, created, model_id, [(r.text, r.finished) for r in results]))


def _body(completion_id: str, created: int, model_id: str, outcomes: list[tuple[str, Finished]]) -> dict:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": f.reason} for i, (text, f) in enumerate(outcomes)],
        "usage": _total_usage([f for _, f in outcomes]),
    }


def _chunker(completion_id: str, created: int, model_id: str, include_usage: bool):
    def chunk(choices: list[dict], usage_value: dict | None = None) -> bytes:
        body = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": choices}
        if include_usage:
            body["usage"] = usage_value
        return sse.event(body)

    return chunk


async def _stream(generations: list[Generation], completion_id: str, created: int, model_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    chunk = _chunker(completion_id, created, model_id, include_usage)
    finished = []
    # All prompts run together in the engine; their text is sent one prompt after another.
    for index, generation in enumerate(generations):
        async with aclosing(generation.events()) as events:
            async for ev in events:
                if isinstance(ev, Finished):
                    yield chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": ev.reason}])
                    finished.append(ev)
                else:
                    yield chunk([{"text": ev.text, "index": index, "logprobs": None, "finish_reason": None}])
    if include_usage:
        yield chunk([], _total_usage(finished))
    yield sse.DONE


async def _stream_finished(finished: list[Finished], completion_id: str, created: int, model_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    chunk = _chunker(completion_id, created, model_id, include_usage)
    for index, f in enumerate(finished):
        yield chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": f.reason}])
    if include_usage:
        yield chunk([], _total_usage(finished))
    yield sse.DONE


def _total_usage(finished: list[Finished]) -> dict:
    return usage(*(sum(getattr(f, k) for f in finished) for k in ("prompt_tokens", "completion_tokens", "cached_tokens")))
