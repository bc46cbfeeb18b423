"""The Responses API's items: what a request's ``input`` (and a
conversation's items) may hold, checked and stored in the shape OpenAI
serves them, and items turned into the chat messages the model is prompted with.

Input items read here:

- messages: ``{"role", "content"}`` (``type: "message"`` optional), the
  content a string or text parts (``input_text``; an assistant's
  ``output_text`` or ``refusal``); roles user, assistant, system, developer;
- ``function_call``: a call the model made earlier (``call_id``, ``name``,
  ``arguments``);
- ``function_call_output``: its result (``call_id``, ``output``).

Each is stored with an id (the client's, or a new ``msg_``/``fc_``/``fco_``
one) and ``status: completed``. Other item types (images, files, built-in
tools, item references) are a 400 naming the item.
"""

from __future__ import annotations

import re

from pycompat.api.openai.bodies import new_id
from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.tools import ToolCall

MESSAGE, FUNCTION_CALL, FUNCTION_CALL_OUTPUT = "message", "function_call", "function_call_output"
ROLES = ("user", "assistant", "system", "developer")
MAX_ID = 256  # characters of a client-chosen item id
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_ID)


def read_input(value, field: str = "input") -> list[dict]:
    """``input`` (a string: one user message; or a list of items) as stored items."""
    if isinstance(value, str):
        return [message_item("user", value)]
    return read_items(value, field)


def read_items(value, field: str) -> list[dict]:
    """A list of input items, each checked and given its stored shape."""
    if not isinstance(value, list):
        raise invalid_type(field, "a string or an array of input items" if field == "input" else "an array of items", value)
    items = [_item(item, f"{field}[{i}]") for i, item in enumerate(value)]
    seen: set[str] = set()  # a set, not list.count: an input may hold tens of thousands of items
    for item in items:
        if item["id"] in seen:
            raise invalid_value(field, f"the item id '{item['id'][:MAX_ID]}' is used by more than one item.")
        seen.add(item["id"])
    return items


def message_item(role: str, text: str, id: str | None = None, status: str = "completed") -> dict:
    """A message item as stored: an assistant's text as ``output_text``, anyone else's as ``input_text``."""
    if role == "assistant":
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"type": MESSAGE, "id": id or new_id("msg_"), "status": status, "role": role, "content": [part]}


def call_item(call: ToolCall, status: str = "completed") -> dict:
    """A call the model made, as an output item."""
    return {"type": FUNCTION_CALL, "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id, "name": call.name,
            "arguments": call.arguments, "status": status}


def _item(item, where: str) -> dict:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    kind = item.get("type", MESSAGE if "role" in item else None)
    id = item.get("id")
    # Ids go into paths (/items/{item_id}): no slashes, nothing that needs escaping.
    if id is not None and (not isinstance(id, str) or not _ID.fullmatch(id)):
        raise invalid_value(f"{where}.id", f"must be 1 to {MAX_ID} characters of a-z, A-Z, 0-9, '_', '-', '.' and ':'.")
    if kind == MESSAGE:
        return _message(item, where, id)
    if kind == FUNCTION_CALL:
        call_id, name, arguments = (_string(item, name, where) for name in ("call_id", "name", "arguments"))
        return {"type": FUNCTION_CALL, "id": id or new_id("fc_"), "call_id": call_id, "name": name, "arguments": arguments,
                "status": "completed"}
    if kind == FUNCTION_CALL_OUTPUT:
        call_id = _string(item, "call_id", where)
        output = item.get("output")
        if isinstance(output, list):
            output = _text_of(output, f"{where}.output", ("input_text",))
        elif not isinstance(output, str):
            raise missing(f"{where}.output") if output is None else invalid_type(f"{where}.output", "a string", output)
        return {"type": FUNCTION_CALL_OUTPUT, "id": id or new_id("fco_"), "call_id": call_id, "output": output, "status": "completed"}
    if kind is None:
        raise missing(f"{where}.type")
    raise invalid_value(f"{where}.type", f"items of type '{str(kind)[:40]}' are not supported by this server; "
                        "only messages, function_call and function_call_output are.")


def _message(item: dict, where: str, id: str | None) -> dict:
    role = item.get("role")
    if role is None:
        raise missing(f"{where}.role")
    if role not in ROLES:
        raise invalid_value(f"{where}.role", f"'{str(role)[:40]}' is not one of {list(ROLES)}.")
    content = item.get("content")
    if isinstance(content, str):
        return message_item(role, content, id)
    if content is None:
        raise missing(f"{where}.content")
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
    if role != "assistant":
        return message_item(role, _text_of(content, f"{where}.content", ("input_text",)), id)
    # An assistant's parts are kept one by one: a refusal stays a refusal.
    message = message_item(role, "", id)
    message["content"] = [{"type": "refusal", "refusal": text} if kind == "refusal" else
                          {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                          for kind, text in _parts(content, f"{where}.content", ("output_text", "refusal", "input_text"))]
    return message


def _text_of(parts: list, where: str, kinds: tuple[str, ...]) -> str:
    """Text content parts joined; any other part is a 400 (this server reads text only)."""
    return "".join(text for _, text in _parts(parts, where, kinds))


def _parts(parts: list, where: str, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each text part's type and text (a refusal's words); any other part is a 400."""
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise invalid_type(f"{where}[{i}]", "an object", part)
        kind = part.get("type")
        if kind not in kinds:
            raise invalid_value(f"{where}[{i}].type", f"content of type '{str(kind)[:40]}' is not supported here; "
                                f"only {', '.join(repr(k) for k in kinds)} is.")
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise invalid_type(f"{where}[{i}].{'refusal' if kind == 'refusal' else 'text'}", "a string", text)
        texts.append((kind, text))
    return texts


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if value is None:
        raise missing(f"{where}.{name}")
    if not isinstance(value, str):
        raise invalid_type(f"{where}.{name}", "a string", value)
    return value


def text_of(item: dict) -> str:
    """A stored message item's text."""
    return "".join(p.get("text", p.get("refusal", "")) for p in item["content"])


def to_messages(items: list[dict]) -> list[dict]:
    """Stored items as chat messages (role, content, tool_calls, tool_call_id):
    a call joins the assistant message before it (or one of its own), its
    output becomes a tool message."""
    out: list[dict] = []
    for item in items:
        kind = item["type"]
        if kind == MESSAGE:
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": text_of(item)})
        elif kind == FUNCTION_CALL:
            if not out or out[-1]["role"] != "assistant":
                out.append({"role": "assistant", "content": ""})
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            out[-1].setdefault("tool_calls", []).append(call)
        elif kind == FUNCTION_CALL_OUTPUT:
            out.append({"role": "tool", "content": item["output"], "tool_call_id": item["call_id"]})
    return out
