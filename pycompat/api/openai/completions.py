"""POST /v1/completions (the legacy text completion route)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import generation, json_body
from pycompat.api.generation import Choices, Finished
from pycompat.api.openai import logprobs as logprob_shapes
from pycompat.api.openai import sse
from pycompat.api.openai.bodies import new_id, now, total_usage
from pycompat.api.openai.errors import invalid_type, invalid_value
from pycompat.api.openai.protocol import COMPLETIONS, Fields
from pycompat.api.registry import Registry, ServedModel
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response

MAX_PROMPTS = 64


def _is_token_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def parse_prompts(value) -> list[str | list[int]]:
    """The prompt field as a list of prompts: strings or token-id lists."""
    if isinstance(value, str) or _is_token_list(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) or _is_token_list(v) for v in value):
        if len(value) > MAX_PROMPTS:
            raise invalid_value("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(value)}.")
        return value
    raise invalid_type("prompt", "a string, an array of strings, an array of tokens or an array of token arrays", value)


def _check_token_ids(served: ServedModel, ids: list[int]) -> list[int]:
    vocab = served.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        shown = bad if abs(bad) < 10**12 else f"{str(bad)[:12]}..."
        raise invalid_value("prompt", f"token id {shown} is outside the vocabulary (0..{vocab - 1}).")
    return list(ids)


async def _encode(served: ServedModel, prompt: str, index: int) -> list[int]:
    ids = await generation.tokenize(served, prompt)
    if not ids:  # an empty prompt: start from BOS, as there is nothing else to condition on
        if served.bos_id is None:
            raise invalid_value("prompt", f"prompt {index} is empty and this model has no BOS token to start from.")
        ids = [served.bos_id]
    return ids


async def _fill_in_the_middle(served: ServedModel, prompts: list[str | list[int]], suffix: str) -> list[list[int]]:
    """Each prompt as the prefix of a fill-in-the-middle prompt before ``suffix``."""
    tokenizer = served.engine.model.tokenizer
    after = await generation.tokenize(served, suffix, add_bos=False)
    return [tokenizer.fill_in_the_middle(_check_token_ids(served, p) if isinstance(p, list)
                                         else await generation.tokenize(served, p, add_bos=False), after)
            for p in prompts]


async def create(registry: Registry, request: Request) -> Response:
    fields = Fields(await json_body.parse_object(request.body), COMPLETIONS)
    model_id = fields.get("model")
    prompts = parse_prompts(fields.get("prompt"))
    stream = fields.get("stream")
    include_usage = fields.get("stream_options", stream=stream)
    max_tokens = fields.get("max_tokens")
    served = registry.generator(model_id)
    requested, defaults = fields.sampling(served.vocab_size)
    opts = generation.sampling_options(served, max_tokens, requested, defaults)
    opts.top_logprobs = fields.get("logprobs")  # None: no log-probabilities
    opts.n = fields.get("n")
    suffix = fields.get("suffix")
    if suffix and served.engine.model.tokenizer.fim_ids is None:
        raise invalid_value("suffix", "this model has no fill-in-the-middle tokens, so a suffix cannot be used.")
    echo = fields.get("echo")
    if echo and opts.top_logprobs is not None:
        # Scoring a prompt needs its own tokens' log-probabilities, which the engine does not compute yet.
        raise invalid_value("echo", "echo together with logprobs (the prompt's log-probabilities) is not supported yet.")
    # Strings are checked against the context before any is tokenized.
    for prompt in prompts:
        if isinstance(prompt, str):
            generation.check_prompt_bytes(served, len(prompt.encode("utf-8")), max_tokens, "prompt")
    if suffix:
        generation.check_prompt_bytes(served, len(suffix.encode("utf-8")), max_tokens, "suffix")
        encoded = await _fill_in_the_middle(served, prompts, suffix)
    else:
        encoded = [_check_token_ids(served, prompt) if isinstance(prompt, list) else await _encode(served, prompt, i)
                   for i, prompt in enumerate(prompts)]
    # max_tokens 0 (the scoring idiom, with echo and logprobs) generates nothing: each prompt must still fit.
    choices = generation.start(served, encoded, opts, "prompt")
    completion_id, created = new_id("cmpl-"), now()
    # echo: each choice's text starts with its prompt (token ids as their text). Choices
    # come prompt by prompt, n each, as OpenAI orders them.
    echoed = [(p if isinstance(p, str) else served.engine.model.tokenizer.decode(p)) if echo else "" for p in prompts for _ in range(opts.n)]
    if stream:
        tokenizer = served.engine.model.tokenizer if opts.top_logprobs is not None else None
        return sse.sse_response(_stream(choices, completion_id, created, model_id, include_usage, tokenizer, echoed, opts.n),
                                on_close=choices.cancel)
    results = await choices.run_to_end()
    return json_response({
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"text": echoed[i] + r.text, "index": i, "logprobs": _legacy(served, opts, r.logprobs), "finish_reason": r.finished.reason}
                    for i, r in enumerate(results)],
        "usage": total_usage([r.finished for r in results], opts.n),
    })


def _legacy(served: ServedModel, opts, tokens) -> dict | None:
    if opts.top_logprobs is None:
        return None
    return logprob_shapes.completion_object(served.engine.model.tokenizer, tokens or [])


async def _stream(choices: Choices, completion_id: str, created: int, model_id: str, include_usage: bool,
                  tokenizer, echoed: list[str], n: int) -> AsyncIterator[bytes]:
    """The choices' chunks interleaved as the engine makes them. ``tokenizer`` is
    given when the request asked for log-probabilities; ``echoed`` is each
    choice's prompt text to send first (empty without echo)."""
    def chunk(entries: list[dict], usage_value: dict | None = None) -> bytes:
        body = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": entries}
        if include_usage:
            body["usage"] = usage_value
        return sse.event(body)

    for index, text in enumerate(echoed):
        if text:
            yield chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": None}])
    finished: list[Finished | None] = [None] * len(choices)
    offsets = [0] * len(choices)  # where each choice's next piece starts in its text
    async with aclosing(choices.stream()) as events:
        async for index, ev in events:
            if isinstance(ev, Finished):
                finished[index] = ev
                done = None if tokenizer is None else logprob_shapes.completion_object(tokenizer, [])
                yield chunk([{"text": "", "index": index, "logprobs": done, "finish_reason": ev.reason}])
            else:
                logprobs = None if tokenizer is None else logprob_shapes.completion_object(tokenizer, ev.logprobs or [], offsets[index])
                offsets[index] += len(ev.text)
                yield chunk([{"text": ev.text, "index": index, "logprobs": logprobs, "finish_reason": None}])
    if include_usage:
        yield chunk([], total_usage(finished, n))
    yield sse.DONE
