"""POST /api/chat: the next message of a chat, streamed as JSON lines by default."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

from pycompat.api import chat as chat_service
from pycompat.api import json_body, tools
from pycompat.api.ollama import generating
from pycompat.api.ollama.fields import Body, bad
from pycompat.api.ollama.replies import Clock, json_reply, line, ndjson_reply, timestamp
from pycompat.api.openai.tools import function_tools
from pycompat.api.registry import Registry
from pycompat.http.messages import Request, Response

FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think", "truncate", "shift", "logprobs",
          "top_logprobs"}
ROLES = ("system", "user", "assistant", "tool")


def parse_messages(value) -> list[dict]:
    """Ollama's messages as the chat service takes them: role and text, an
    assistant's calls (arguments as JSON text), a tool result's function name."""
    if not isinstance(value, list):
        raise bad("invalid 'messages': expected an array")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"invalid {where}: expected an object")
        role = msg.get("role")
        role = role.lower() if isinstance(role, str) else role  # as Ollama reads it
        if role not in ROLES:
            raise bad(f"invalid {where}.role: {str(role)[:40]!r} is not one of {list(ROLES)}")
        content = msg.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise bad(f"invalid {where}.content: expected a string")
        generating.refuse_images(msg.get("images"), where)
        entry: dict = {"role": role, "content": content}
        if role == "assistant" and msg.get("tool_calls"):
            if not isinstance(msg["tool_calls"], list):
                raise bad(f"invalid {where}.tool_calls: expected an array")
            entry["tool_calls"] = [_past_call(c, f"{where}.tool_calls[{j}]", f"call_{i}_{j}") for j, c in enumerate(msg["tool_calls"])]
        if role == "tool":  # Ollama names the function; OpenAI-minded clients (Open WebUI) send the call's id
            if isinstance(msg.get("tool_name"), str):
                entry["name"] = msg["tool_name"]
            if isinstance(msg.get("tool_call_id"), str):
                entry["tool_call_id"] = msg["tool_call_id"]
        out.append(entry)
    return out


def _past_call(call, where: str, call_id: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad(f"invalid {where}: expected {{\"function\": {{\"name\": ..., \"arguments\": {{...}}}}}}")
    arguments = function.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    given = call.get("id")  # Ollama's calls have none; Open WebUI's carry the id its tool results refer to
    return {"id": given if isinstance(given, str) and given else call_id, "type": "function",
            "function": {"name": function["name"], "arguments": text}}


def _tool_request(value) -> tools.ToolRequest | None:
    """``tools`` (OpenAI's function tools): the model may call them or answer in text."""
    if not value:
        return None
    return tools.ToolRequest(function_tools(value), tools.ToolChoice(tools.AUTO), parallel=True)


async def create(registry: Registry, request: Request) -> Response:
    clock = Clock()
    body = Body(await json_body.parse_object(request.body), FIELDS)
    raw_messages = body.get("messages", list, [])
    asked = generating.Asked.read(registry, body, clock)
    name, served = asked.name, asked.served
    messages = parse_messages(raw_messages)
    tool_request = _tool_request(body.get("tools", list))
    if not messages:  # Ollama's way to load (keep_alive 0: unload) a model; models here stay loaded
        return json_reply({"model": name, "created_at": timestamp(), "message": {"role": "assistant", "content": ""},
                           "done_reason": generating.load_reason(body), "done": True})
    opts, scored = asked.sampling()
    calls, choices = await chat_service.start(served, messages, tool_request, asked.output, opts, "messages", format_field="format",
                                              window=asked.window)
    events = generating.answer(choices, clock, calls.parser())
    if asked.stream:
        return ndjson_reply(_lines(name, events, clock, scored), on_close=choices.cancel)
    try:
        async with aclosing(events):
            return json_reply(await _whole(name, events, clock, scored))
    finally:
        choices.cancel()


def _chunk(name: str, message: dict) -> dict:
    return {"model": name, "created_at": timestamp(), "message": {"role": "assistant", **message}, "done": False}


async def _lines(name: str, events: AsyncIterator, clock: Clock, scored) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, generating.Text):
            yield line(generating.scored(_chunk(name, {"content": event.text}), event.logprobs, scored))
        elif isinstance(event, generating.Calls):
            yield line(generating.scored(_chunk(name, {"content": "", "tool_calls": event.calls}), event.logprobs, scored))
        else:
            yield line(generating.scored({"model": name, "created_at": timestamp(), "message": {"role": "assistant", "content": ""},
                                **generating.final_fields(event, clock)}, event.logprobs, scored))


async def _whole(name: str, events: AsyncIterator, clock: Clock, scored) -> dict:
    text: list[str] = []
    tokens: list = []
    message: dict = {"role": "assistant", "content": ""}
    async for event in events:
        tokens += event.logprobs
        if isinstance(event, generating.Text):
            text.append(event.text)
        elif isinstance(event, generating.Calls):
            message["tool_calls"] = event.calls
        else:
            message["content"] = "".join(text)
            return generating.scored({"model": name, "created_at": timestamp(), "message": message, **generating.final_fields(event, clock)},
                           tokens, scored)
    raise RuntimeError("the answer ended without finishing")
