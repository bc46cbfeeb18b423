"""POST /v1/completions (the legacy text completion route)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
import math
from dataclasses import dataclass, field, replace

from pycompat.api import generation, json_body, structured
from pycompat.api.generation import Choices, Finished, PromptLogprobs, Result
from pycompat.api.openai import logprobs as logprob_shapes
from pycompat.api.openai import sse
from pycompat.api.openai import structured as openai_structured
from pycompat.api.openai.bodies import new_id, now, total_usage
from pycompat.api.openai.errors import check_token_ids, invalid_type, invalid_value
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
    check_token_ids("prompt", ids, served.vocab_size)
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
    fields.check("user")
    stream = fields.get("stream")
    include_usage = fields.get("stream_options", stream=stream)
    served = registry.generator(model_id)
    requested, defaults = fields.sampling(served.vocab_size)
    # Asked for, or this route's default (16): only an asked-for value above the server's limit is refused.
    opts = generation.sampling_options(served, fields.requested("max_tokens"), requested, defaults,
                                       max_tokens_default=fields.get("max_tokens"))
    max_tokens = opts.max_tokens
    opts.top_logprobs = fields.get("logprobs")  # None: no log-probabilities
    opts.n = n = fields.get("n")
    best_of = _best_of(fields, n, stream)
    suffix = fields.get("suffix")
    if suffix and served.engine.model.tokenizer.fim_ids is None:
        raise invalid_value("suffix", "this model has no fill-in-the-middle tokens, so a suffix cannot be used.")
    echo = fields.get("echo")
    # echo with logprobs scores the prompt: each of its tokens' log-probability comes first.
    opts.prompt_logprobs = echo and opts.top_logprobs is not None
    if suffix and opts.prompt_logprobs:
        # The tokens computed are prefix, suffix and FIM tokens around them: not the echoed text.
        raise invalid_value("echo", "echo with logprobs scores a prompt, which a fill-in-the-middle request (with a suffix) does not send as it is.")
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
    output = openai_structured.output_grammar(fields)
    if output is not None:
        opts.grammar = await structured.compile(served, output)
    asked_logprobs = opts.top_logprobs is not None
    if best_of > opts.n:  # candidates are ranked by their tokens' log-probabilities
        opts = replace(opts, n=best_of, top_logprobs=opts.top_logprobs if asked_logprobs else 0)
    # max_tokens 0 (the scoring idiom, with echo and logprobs) generates nothing: each prompt must still fit.
    choices = generation.start(served, encoded, opts, "prompt")
    completion_id, created = new_id("cmpl-"), now()
    tokenizer = served.engine.model.tokenizer
    # echo: each choice's text starts with its prompt (token ids as their text). Choices
    # come prompt by prompt, n each, as OpenAI orders them.
    echoes = [_Echo(p if isinstance(p, str) else tokenizer.decode(p), ids, _unechoed(tokenizer, p, ids)) if echo else _Echo()
              for p, ids in zip(prompts, encoded) for _ in range(opts.n)]
    if stream:
        return sse.sse_response(_stream(choices, completion_id, created, model_id, include_usage,
                                        tokenizer if opts.top_logprobs is not None else None, echoes, opts.n),
                                on_close=choices.cancel)
    results = await choices.run_to_end()
    usage = total_usage([r.finished for r in results], opts.n)  # every candidate's tokens count
    if opts.n > n:  # best_of: each prompt's n likeliest candidates
        results = _best(results, opts.n, n)
        echoes = [echoes[p * opts.n] for p in range(len(prompts)) for _ in range(n)]
        if not asked_logprobs:
            results, opts = [replace(r, logprobs=None) for r in results], replace(opts, top_logprobs=None)
    return json_response({
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"text": echoes[i].text + r.text, "index": i, "logprobs": _legacy(tokenizer, opts, r, echoes[i]),
                     "finish_reason": r.finished.reason}
                    for i, r in enumerate(results)],
        "usage": usage,
    })


def _best_of(fields: Fields, n: int, stream: bool) -> int:
    """``best_of``: how many candidates each prompt gets, of which the ``n`` likeliest are returned."""
    best_of = fields.requested("best_of")
    if best_of is None:
        return n
    if best_of < n:
        raise invalid_value("best_of", f"best_of must be at least n ({n}), but got {best_of}.")
    if best_of > n and stream:
        raise invalid_value("best_of", "best_of cannot be used with stream: the best candidates are known only once all have finished.")
    return best_of


def _best(results: list[Result], best_of: int, n: int) -> list[Result]:
    """Per prompt (``best_of`` candidates each, in order), the ``n`` candidates with the highest
    mean log-probability per token, best first, as OpenAI's best_of ranks them."""
    def score(r: Result) -> float:
        tokens = r.logprobs or []
        return sum(t.logprob for t in tokens) / len(tokens) if tokens else -math.inf

    out = []
    for start in range(0, len(results), best_of):
        out += sorted(results[start:start + best_of], key=score, reverse=True)[:n]
    return out


@dataclass(frozen=True)
class _Echo:
    """A choice's echoed prompt: its text, its tokens, and which of them the text leaves out."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    unechoed: frozenset[int] = frozenset()

    def logprobs(self, tokenizer, scores) -> dict:
        return logprob_shapes.prompt_object(tokenizer, self.tokens, scores, self.unechoed)


def _unechoed(tokenizer, prompt: str | list[int], ids: list[int]) -> frozenset[int]:
    """Positions of prompt tokens whose text the echoed prompt does not hold: a BOS
    the tokenizer put before a text prompt; special tokens in a token-id prompt,
    whose echo is its decoded text (without them)."""
    if isinstance(prompt, str):
        added_bos = bool(ids) and ids[0] == tokenizer.bos_id and not prompt.startswith(tokenizer.bos_text)
        return frozenset({0} if added_bos else ())
    return frozenset(i for i, t in enumerate(ids) if tokenizer.is_special(t))


def _legacy(tokenizer, opts, result: Result, echo: _Echo) -> dict | None:
    if opts.top_logprobs is None:
        return None
    generated = logprob_shapes.completion_object(tokenizer, result.logprobs or [], len(echo.text))
    if result.prompt_logprobs is None:
        return generated
    return logprob_shapes.joined(echo.logprobs(tokenizer, result.prompt_logprobs), generated)


async def _stream(choices: Choices, completion_id: str, created: int, model_id: str, include_usage: bool,
                  tokenizer, echoes: list[_Echo], n: int) -> AsyncIterator[bytes]:
    """The choices' chunks interleaved as the engine makes them. ``tokenizer`` is
    given when the request asked for log-probabilities; ``echoes`` hold each
    choice's prompt text to send first (empty without echo): at once, or with
    the prompt's log-probabilities when they were asked for."""
    def chunk(entries: list[dict], usage_value: dict | None = None) -> bytes:
        body = {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": entries}
        if include_usage:
            body["usage"] = usage_value
        return sse.event(body)

    for index, echo in enumerate(echoes):
        if echo.text and tokenizer is None:  # else it comes with its log-probabilities
            yield chunk([{"text": echo.text, "index": index, "logprobs": None, "finish_reason": None}])
    finished: list[Finished | None] = [None] * len(choices)
    offsets = [len(e.text) for e in echoes]  # where each choice's next piece starts in its text
    async with aclosing(choices.stream()) as events:
        async for index, ev in events:
            if isinstance(ev, PromptLogprobs):
                echo = echoes[index]
                yield chunk([{"text": echo.text, "index": index, "logprobs": echo.logprobs(tokenizer, ev.tokens), "finish_reason": None}])
            elif isinstance(ev, Finished):
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
