"""POST /v1/completions (the legacy text completion route)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import trio

from pycompat.api import sse
from pycompat.api.errors import APIError, invalid_type, invalid_value
from pycompat.api.generation import SAMPLING_FIELDS, check_admissible, events, now, run_to_end, sampling_options, usage
from pycompat.api.ids import new_id
from pycompat.api.params import Params, parse_json_object
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, sse_response
from pycompat.engine.generate import Finished, SamplingOptions
from pycompat.engine.scheduler import Engine
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


def _encode(engine: Engine, prompt: str | list[int], index: int) -> list[int]:
    tokenizer = engine.model.tokenizer
    if isinstance(prompt, list):
        bad = next((t for t in prompt if not 0 <= t < engine.model.kernel.vocab_size), None)
        if bad is not None:
            raise invalid_value("prompt", f"token id {bad} is outside the vocabulary (0..{engine.model.kernel.vocab_size - 1}).")
        return list(prompt)
    ids = tokenizer.encode(prompt)
    if not ids:  # an empty prompt: start from BOS, as there is nothing else to condition on
        if tokenizer.bos_id is None:
            raise invalid_value("prompt", f"prompt {index} is empty and this model has no BOS token to start from.")
        ids = [tokenizer.bos_id]
    return ids


async def create(registry: Registry, request: Request) -> Response:
    p = Params(parse_json_object(request.body), IMPLEMENTED, IGNORED)
    model_id = p.string("model", required=True)
    prompts = parse_prompts(p.raw("prompt"))
    stream = p.boolean("stream")
    include_usage = p.stream_include_usage(stream)
    max_tokens = p.integer("max_tokens", 0)
    served = registry.get(model_id)
    opts = sampling_options(p, DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, served.engine.model.sampling_defaults,
                            served.engine.model.kernel.vocab_size)
    # Off the event loop: long prompts take a while to tokenize.
    encoded = await trio.to_thread.run_sync(lambda: [_encode(served.engine, prompt, i) for i, prompt in enumerate(prompts)])
    for ids in encoded:
        check_admissible(served.engine, len(ids), opts.max_tokens, "prompt")

    completion_id, created = new_id("cmpl-"), now()
    if stream:
        return sse_response(_stream(served.engine, encoded, opts, completion_id, created, model_id, include_usage))
    # Several prompts run at once: the engine batches them.
    results = [None] * len(encoded)

    async def run(index: int, ids: list[int]) -> None:
        results[index] = await run_to_end(served.engine, ids, opts)

    async with trio.open_nursery() as nursery:
        for index, ids in enumerate(encoded):
            nursery.start_soon(run, index, ids)
    choices = [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finished.reason} for i, r in enumerate(results)]
    finished = [r.finished for r in results]
    body = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": choices,
        "usage": usage(*(sum(getattr(f, k) for f in finished) for k in ("prompt_tokens", "completion_tokens", "cached_tokens"))),
    }
    return json_response(body)


async def _stream(engine: Engine, encoded: list[list[int]], opts: SamplingOptions, completion_id: str, created: int, model_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(choices: list[dict], usage_value: dict | None = None) -> bytes:
        body = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": choices}
        if include_usage:
            body["usage"] = usage_value
        return sse.event(body)

    prompt_tokens = completion_tokens = cached_tokens = 0
    for index, ids in enumerate(encoded):
        async with aclosing(events(engine, ids, opts)) as generation:
            async for ev in generation:
                if isinstance(ev, Finished):
                    yield chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": ev.reason}])
                    prompt_tokens += ev.prompt_tokens
                    completion_tokens += ev.completion_tokens
                    cached_tokens += ev.cached_tokens
                else:
                    yield chunk([{"text": ev.text, "index": index, "logprobs": None, "finish_reason": None}])
    if include_usage:
        yield chunk([], usage(prompt_tokens, completion_tokens, cached_tokens))
    yield sse.DONE
