"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import json_body, sse
from pycompat.api.errors import APIError, invalid_type, invalid_value
from pycompat.api.generation import (SAMPLING_FIELDS, check_length_bound, now, run_to_end, sampling_options,
                                     start_generations, tokenize, usage)
from pycompat.api.ids import new_id
from pycompat.api.params import INT32_MAX, Params
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, sse_response
from pycompat.engine.request import Finished, Generation
from pycompat.http.messages import Request, Response
from pycompat.loading.chat_template import TemplateError

IMPLEMENTED = {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options"} | SAMPLING_FIELDS
# Defined by OpenAI for this route; accepted and ignored until implemented.
IGNORED = {
    "audio", "frequency_penalty", "function_call", "functions", "logprobs", "metadata",
    "modalities", "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "service_tier", "store", "tool_choice", "tools",
    "top_logprobs", "user", "verbosity", "web_search_options",
}
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
    if value is None:
        raise APIError(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
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
            raise APIError(400, f"Missing required parameter: '{where}.role'.", param=f"{where}.role", code="missing_required_parameter")
        if role not in ROLES:
            raise invalid_value(f"{where}.role", f"'{role}' is not one of {sorted(ROLES)}.")
        if "content" not in msg and role not in ("assistant",):
            raise APIError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content", code="missing_required_parameter")
        entry = {"role": "system" if role == "developer" else role, "content": _content_text(msg.get("content"), where, role)}
        if isinstance(msg.get("name"), str):
            entry["name"] = msg["name"]
        out.append(entry)
    return out


async def create(registry: Registry, request: Request) -> Response:
    p = Params(await json_body.parse_object(request.body), IMPLEMENTED, IGNORED)
    model_id = p.string("model", required=True)
    messages = parse_messages(p.raw("messages"))
    stream = p.boolean("stream")
    include_usage = p.stream_include_usage(stream)
    max_tokens = p.integer("max_completion_tokens", 1, INT32_MAX)
    if max_tokens is None:
        max_tokens = p.integer("max_tokens", 1, INT32_MAX)
    served = registry.get(model_id)
    engine = served.engine
    model = engine.model
    opts = sampling_options(p, max_tokens, model.sampling_defaults, model.kernel.vocab_size)
    # Before any work: messages that cannot fit the context whatever their tokens.
    check_length_bound(engine, sum(len(m["content"].encode("utf-8")) for m in messages), max_tokens, "messages")
    try:
        prompt_text = model.chat_template.render(messages, add_generation_prompt=True)
    except TemplateError as e:
        raise APIError(400, str(e), param="messages") from None
    prompt = await tokenize(engine, prompt_text)
    (generation,) = start_generations(engine, [prompt], opts, "messages")

    completion_id, created = new_id("chatcmpl-"), now()
    if stream:
        return sse_response(_stream(generation, completion_id, created, model_id, include_usage), on_close=generation.cancel)
    try:
        result = await run_to_end(generation)
    finally:
        generation.cancel()
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": result.finished.reason,
            }
        ],
        "usage": usage(result.finished.prompt_tokens, result.finished.completion_tokens, result.finished.cached_tokens),
    }
    return json_response(body)


async def _stream(generation: Generation, completion_id: str, created: int, model_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return sse.event(body)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    async with aclosing(generation.events()) as events:
        async for ev in events:
            if isinstance(ev, Finished):
                yield chunk({}, ev.reason)
                if include_usage:
                    yield sse.event({
                        "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                        "choices": [], "usage": usage(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens),
                    })
            else:
                yield chunk({"content": ev.text})
    yield sse.DONE
