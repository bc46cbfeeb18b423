"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from pycompat.api import chat as chat_service
from pycompat.api import generation, json_body, tools
from pycompat.api.generation import Choices, Finished
from pycompat.api.openai import logprobs as logprob_shapes
from pycompat.api.openai import sse, stored
from pycompat.api.openai import structured as openai_structured
from pycompat.api.openai import tools as openai_tools
from pycompat.api.openai.bodies import new_id, now, total_usage
from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.openai.protocol import CHAT, Fields
from pycompat.api.registry import Registry
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response
from pycompat.state.store import CHAT_COMPLETION, Item, Record, Store

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
        if role == "assistant" and msg.get("tool_calls") is not None:
            calls = msg["tool_calls"]
            if not isinstance(calls, list):
                raise invalid_type(f"{where}.tool_calls", "an array", calls)
            entry["tool_calls"] = [_past_call(c, f"{where}.tool_calls[{j}]", f"call_{j}") for j, c in enumerate(calls)]
        if role == "assistant" and msg.get("function_call") is not None:  # the legacy spelling of one call
            entry["tool_calls"] = [_past_call({"function": msg["function_call"]}, where, f"call_{i}", legacy=True)]
        if role == "tool":
            if "tool_call_id" not in msg:
                raise missing(f"{where}.tool_call_id")
            if not isinstance(msg["tool_call_id"], str):
                raise invalid_type(f"{where}.tool_call_id", "a string", msg["tool_call_id"])
            entry["tool_call_id"] = msg["tool_call_id"]
        out.append(entry)
    return out


def _past_call(call, where: str, default_id: str, legacy: bool = False) -> dict:
    """A call in an assistant message, checked: its function's name and arguments
    (JSON text), its id (``default_id`` when it has none). ``legacy``: ``where``
    holds a ``function_call`` (the function itself, no id)."""
    if not isinstance(call, dict):
        raise invalid_type(where, "an object", call)
    at = f"{where}.function_call" if legacy else f"{where}.function"
    function = call.get("function")
    if not isinstance(function, dict):
        raise invalid_type(at, "an object", function)
    if "name" not in function:
        raise missing(f"{at}.name")
    if not isinstance(function["name"], str):
        raise invalid_type(f"{at}.name", "a string", function["name"])
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise invalid_type(f"{at}.arguments", "a string", arguments)
    return {"id": str(call.get("id") or default_id), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


async def create(registry: Registry, state: Store | None, request: Request) -> Response:
    fields = Fields(await json_body.parse_object(request.body), CHAT)
    model_id = fields.get("model")
    raw_messages = fields.get("messages")
    messages = parse_messages(raw_messages)
    metadata = fields.get("metadata") or {}
    store = stored.require(state, "store: true") if fields.get("store") else None
    fields.check("modalities", "audio", "reasoning_effort", "verbosity", "web_search_options", "moderation", "user",
                 "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options")
    stream = fields.get("stream")
    include_usage = fields.get("stream_options", stream=stream)
    max_tokens_field = "max_completion_tokens" if fields.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = fields.get(max_tokens_field)
    served = registry.generator(model_id)
    requested, defaults = fields.sampling(served.vocab_size)
    opts = generation.sampling_options(served, max_tokens, requested, defaults, max_tokens_field=max_tokens_field)
    opts.top_logprobs = _top_logprobs(fields)
    opts.n = fields.get("n")
    output = openai_structured.output_grammar(fields)
    tool_fields = openai_tools.read(fields)
    # The tier that served it, when the request names one: there is one tier here.
    tier = {"service_tier": "default"} if fields.get("service_tier") is not None else {}
    calls, choices = await chat_service.start(served, messages, tool_fields and tool_fields.request, output, opts, "messages",
                                              legacy=tool_fields is not None and tool_fields.legacy)

    completion_id, created = new_id("chatcmpl-"), now()
    tokenizer = served.engine.model.tokenizer

    def completion(results: list[generation.Result], parsers: list | None = None) -> dict:
        """The chat.completion object for the finished choices: the answer, and what
        is stored (``parsers``: a stream's, which have read each choice's text)."""
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [_choice(index, result, calls, tokenizer, opts, parsers and parsers[index]) for index, result in enumerate(results)],
            "usage": total_usage([r.finished for r in results], len(results)),
            **tier,
        }

    async def save(body: dict) -> None:
        """Stores the completion with the request's messages; returns once it is durable."""
        items = [Item(f"{completion_id}-{i}", _stored_message(f"{completion_id}-{i}", raw, parsed))
                 for i, (raw, parsed) in enumerate(zip(raw_messages, messages))]
        await store.save(Record(CHAT_COMPLETION, completion_id, created, body, metadata, model=model_id), items)

    if stream:
        keep = (lambda results, parsers: save(completion(results, parsers))) if store is not None else None
        return sse.sse_response(_stream(choices, completion_id, created, model_id, include_usage, tokenizer, tier, calls, keep),
                                on_close=choices.cancel)
    body = completion(await choices.run_to_end())
    if store is not None:
        await save(body)
    return json_response(body)


def _choice(index: int, result: generation.Result, calls: chat_service.Calls, tokenizer, opts, parser: tools.CallParser | None = None) -> dict:
    """One choice of the answer. ``parser``: one that has read the whole text
    already (a stream's: the calls keep the ids its client was sent)."""
    message = {"role": "assistant", "content": result.text, "refusal": None, "annotations": []}
    reason = result.finished.reason
    if parser is None and calls.parses:
        parser = calls.parser()
        parser.feed(result.text)
        parser.finish()
    if parser is not None:
        # Null beside calls, as OpenAI's; text otherwise, empty when nothing was said before a cut.
        message["content"] = parser.content if parser.calls else (parser.content or "")
        message.update(openai_tools.message_calls(parser.calls, calls.legacy))
        reason = openai_tools.finish_reason(reason, parser.calls, calls.legacy)
    return {
        "index": index,
        "message": message,
        "logprobs": logprob_shapes.chat_object(tokenizer, _asked(opts, result.logprobs)),
        "finish_reason": reason,
    }


def _stored_message(item_id: str, raw: dict, parsed: dict) -> dict:
    """A request message as OpenAI serves it from a stored completion: its role
    as sent, its content as text (an array's parts joined; the parts themselves
    in ``content_parts``, as text parts), its name, and the calls or call id it carries."""
    parts = raw.get("content")
    message = {
        "id": item_id,
        "role": raw["role"],
        "content": None if raw.get("content") is None else parsed["content"],
        "name": raw.get("name") if isinstance(raw.get("name"), str) else None,
        "content_parts": [{"type": "text", "text": p["text"]} for p in parts] if isinstance(parts, list) else None,
    }
    # The calls as read (parse_messages reads an assistant's only: on another role they are ignored).
    if "tool_calls" in parsed:
        if raw.get("tool_calls") is not None:
            message["tool_calls"] = parsed["tool_calls"]
        else:
            message["function_call"] = parsed["tool_calls"][0]["function"]
    if "tool_call_id" in parsed:
        message["tool_call_id"] = parsed["tool_call_id"]
    return message


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


def _tool_delta(event: tools.ToolEvent, legacy: bool) -> dict:
    """A parser's event as a chunk's delta: content, a call's first delta (id,
    type, name, empty arguments), or more of a call's arguments."""
    if isinstance(event, tools.ContentDelta):
        return {"content": event.text}
    if isinstance(event, tools.CallStarted):
        if legacy:
            return {"function_call": {"name": event.name, "arguments": ""}}
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function",
                                "function": {"name": event.name, "arguments": ""}}]}
    if legacy:
        return {"function_call": {"arguments": event.text}}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


async def _stream(choices: Choices, completion_id: str, created: int, model_id: str, include_usage: bool,
                  tokenizer, tier: dict, calls: chat_service.Calls,
                  keep: Callable[[list[generation.Result], list], Awaitable[None]] | None) -> AsyncIterator[bytes]:
    """The choices' chunks interleaved as the engine makes them, each with its index.
    ``keep``: stores the finished choices as one completion (the body a request
    without ``stream`` gets), before the usage chunk and ``[DONE]``, so a client
    that saw the stream end can fetch it. A stream cut short is never kept."""
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
        # An answer that must be calls has no content, as OpenAI's first delta then says.
        yield chunk(index, {"role": "assistant", "content": None if calls.forced else "", "refusal": None})
    finished: list[Finished | None] = [None] * len(choices)
    parsers = [calls.parser() for _ in range(len(choices))]
    held_logprobs: list[list] = [[] for _ in range(len(choices))]  # of text a parser has not released yet
    # Each choice's text and log-probabilities so far, for keep (what run_to_end would return).
    texts: list[list[str]] = [[] for _ in range(len(choices))]
    token_logprobs: list[list] = [[] for _ in range(len(choices))]
    async with aclosing(choices.stream()) as events:
        async for index, ev in events:
            parser = parsers[index]
            if keep is not None and not isinstance(ev, Finished):
                texts[index].append(ev.text)
                token_logprobs[index] += ev.logprobs or []
            if isinstance(ev, Finished):
                finished[index] = ev
                reason = ev.reason
                held = None
                if parser is not None:
                    for event in parser.finish():
                        yield chunk(index, _tool_delta(event, calls.legacy))
                    reason = openai_tools.finish_reason(reason, parser.calls, calls.legacy)
                    # Tokens whose text released nothing (a JSON answer's closing '"}') come with the last chunk.
                    held = logprob_shapes.chat_object(tokenizer, held_logprobs[index]) if held_logprobs[index] else None
                yield chunk(index, {}, reason, logprobs=held)
            elif parser is None:
                yield chunk(index, {"content": ev.text}, logprobs=logprob_shapes.chat_object(tokenizer, ev.logprobs))
            else:
                held_logprobs[index] += ev.logprobs or []
                for event in parser.feed(ev.text):
                    logprobs = logprob_shapes.chat_object(tokenizer, held_logprobs[index]) if ev.logprobs is not None else None
                    held_logprobs[index] = []
                    yield chunk(index, _tool_delta(event, calls.legacy), logprobs=logprobs)
    if keep is not None:
        await keep([generation.Result("".join(text), f, logprobs) for text, f, logprobs in zip(texts, finished, token_logprobs)], parsers)
    if include_usage:
        yield sse.event({
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "choices": [], "usage": total_usage(finished, len(finished)), **tier,
        })
    yield sse.DONE
