"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import generation, json_body
from pycompat.api.generation import Choices, Finished
from pycompat.api.openai import logprobs as logprob_shapes
from pycompat.api.openai import sse
from pycompat.api.openai.bodies import new_id, now, total_usage
from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.openai.protocol import CHAT, Fields
from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _content_text(value, where: str, role: str) -> str:
    """A message's content as text: a string, or an array of text parts joined."""
    if value is None and role in ("assistant", "tool", "function"):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid_type(f"{where}.content[{i}]", "an object with a 'type'", part)
            if part["type"] not in ("text", "input_text"):
                raise invalid_value(f"{where}.content[{i}].type", f"content of type '{part['type']}' is not supported by this model; only text is.")
            if not isinstance(part.get("text"), str):
                raise invalid_type(f"{where}.content[{i}].text", "a string", part.get("text"))
            texts.append(part["text"])
        return "".join(texts)
    raise invalid_type(f"{where}.content", "a string or an array of content parts", value)


def parse_messages(value) -> list[dict]:
    """The messages as the chat template expects them: role and text content."""
    if not isinstance(value, list):
        raise invalid_type("messages", "an array", value)
    if not value:
        raise invalid_value("messages", "empty array. Expected an array with minimum length 1, but got an empty array instead.")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_type(where, "an object", msg)
        role = msg.get("role")
        if not isinstance(role, str):
            raise missing(f"{where}.role")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", f"'{role}' is not one of {sorted(ROLES)}.")
        if "content" not in msg and role not in ("assistant",):
            raise missing(f"{where}.content")
        entry = {"role": "system" if role == "developer" else role, "content": _content_text(msg.get("content"), where, role)}
        if isinstance(msg.get("name"), str):
            entry["name"] = msg["name"]
        out.append(entry)
    return out


async def create(registry: Registry, request: Request) -> Response:
    fields = Fields(await json_body.parse_object(request.body), CHAT)
    model_id = fields.get("model")
    messages = parse_messages(fields.get("messages"))
    stream = fields.get("stream")
    include_usage = fields.get("stream_options", stream=stream)
    max_tokens = fields.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = fields.get("max_tokens")
    served = registry.generator(model_id)
    requested, defaults = fields.sampling(served.vocab_size)
    opts = generation.sampling_options(served, max_tokens, requested, defaults)
    opts.top_logprobs = _top_logprobs(fields)
    opts.n = fields.get("n")
    # The tier that served it, when the request names one: there is one tier here.
    tier = {"service_tier": "default"} if fields.get("service_tier") is not None else {}
    # Before any work: messages that cannot fit the context whatever their tokens.
    generation.check_prompt_bytes(served, sum(len(m["content"].encode("utf-8")) for m in messages), max_tokens, "messages")
    prompt_text = generation.chat_prompt(served, messages, "messages")
    prompt = await generation.tokenize(served, prompt_text)
    choices = generation.start(served, [prompt], opts, "messages")

    completion_id, created = new_id("chatcmpl-"), now()
    tokenizer = served.engine.model.tokenizer
    if stream:
        return sse.sse_response(_stream(choices, completion_id, created, model_id, include_usage, tokenizer, tier),
                                on_close=choices.cancel)
    results = await choices.run_to_end()
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text, "refusal": None, "annotations": []},
                "logprobs": logprob_shapes.chat_object(tokenizer, _asked(opts, result.logprobs)),
                "finish_reason": result.finished.reason,
            }
            for index, result in enumerate(results)
        ],
        "usage": total_usage([r.finished for r in results], len(results)),
        **tier,
    }
    return json_response(body)


def _top_logprobs(fields: Fields) -> int | None:
    """How many alternatives each token's log-probability comes with; None: no log-probabilities."""
    top = fields.get("top_logprobs")
    if not fields.get("logprobs"):
        if top is not None:
            raise invalid_value("top_logprobs", "'logprobs' must be set to true when 'top_logprobs' is set.")
        return None
    return top or 0


def _asked(opts, tokens):
    """The tokens' log-probabilities when the request asked for them (none generated: an empty list)."""
    return None if opts.top_logprobs is None else (tokens or [])


async def _stream(choices: Choices, completion_id: str, created: int, model_id: str, include_usage: bool,
                  tokenizer, tier: dict) -> AsyncIterator[bytes]:
    """The choices' chunks interleaved as the engine makes them, each with its index."""
    def chunk(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
            **tier,
        }
        if include_usage:
            body["usage"] = None
        return sse.event(body)

    for index in range(len(choices)):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
    finished: list[Finished | None] = [None] * len(choices)
    async with aclosing(choices.stream()) as events:
        async for index, ev in events:
            if isinstance(ev, Finished):
                finished[index] = ev
                yield chunk(index, {}, ev.reason)
            else:
                yield chunk(index, {"content": ev.text}, logprobs=logprob_shapes.chat_object(tokenizer, ev.logprobs))
    if include_usage:
        yield sse.event({
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "choices": [], "usage": total_usage(finished, len(finished)), **tier,
        })
    yield sse.DONE
