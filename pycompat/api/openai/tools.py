"""OpenAI's tool-calling fields, read into a ToolRequest, and calls written back
in OpenAI's shapes.

- ``tools``: function tools (``{"type": "function", "function": {"name",
  "description", "parameters", "strict"}}``); ``tool_choice``: ``none``,
  ``auto`` (the default with tools), ``required`` or ``{"type": "function",
  "function": {"name"}}``; ``parallel_tool_calls`` (default true).
- The legacy ``functions`` and ``function_call`` map onto them (one call at
  most); the answer then comes as ``message.function_call`` with
  ``finish_reason: "function_call"``, as OpenAI answered them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.openai.protocol import Fields
from pycompat.api.tools import AUTO, NAMED, NONE, REQUIRED, Tool, ToolCall, ToolChoice, ToolRequest

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128  # OpenAI's limit


@dataclass
class ToolFields:
    request: ToolRequest
    legacy: bool  # asked with functions / function_call


def read(fields: Fields) -> ToolFields | None:
    """The request's tools and how they may be called; None when it offers none."""
    tools, choice, parallel = fields.requested("tools"), fields.requested("tool_choice"), fields.requested("parallel_tool_calls")
    functions, function_call = fields.requested("functions"), fields.requested("function_call")
    if functions is not None or function_call is not None:
        if tools is not None or choice is not None:
            raise invalid_value("functions", "use either 'tools' and 'tool_choice' or the deprecated 'functions' and 'function_call', not both.")
        if functions is None:
            raise invalid_value("function_call", "'function_call' is only allowed when 'functions' are specified.")
        parsed = _checked_list(functions, "functions", lambda f, where: _function(f, where))
        return ToolFields(ToolRequest(parsed, _choice(function_call, "function_call", parsed, legacy=True), parallel=False), legacy=True)
    if tools is None:
        if choice is not None:
            raise invalid_value("tool_choice", "'tool_choice' is only allowed when 'tools' are specified.")
        if parallel is not None:
            raise invalid_value("parallel_tool_calls", "'parallel_tool_calls' is only allowed when 'tools' are specified.")
        return None
    parsed = _checked_list(tools, "tools", _tool)
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid_type("parallel_tool_calls", "a boolean", parallel)
    return ToolFields(ToolRequest(parsed, _choice(choice, "tool_choice", parsed, legacy=False), parallel=parallel is not False), legacy=False)


def read_flat(tools, choice, parallel: bool) -> ToolFields | None:
    """The Responses API's spelling: each tool ``{"type": "function", "name",
    "description", "parameters", "strict"}``, ``tool_choice`` ``none`` /
    ``auto`` / ``required`` or ``{"type": "function", "name"}``."""
    if choice is not None and not isinstance(choice, (str, dict)):
        raise invalid_type("tool_choice", "a string or an object", choice)
    if tools is None or tools == []:  # the SDKs send [] for "no tools"
        if choice not in (None, NONE, AUTO):
            raise invalid_value("tool_choice", "'tool_choice' may name a tool only when 'tools' are specified.")
        return None
    parsed = _checked_list(tools, "tools", _flat_tool)
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise invalid_value("tool_choice.type", f"{str(choice.get('type'))[:40]!r} is not supported here; name a function: "
                                "{\"type\": \"function\", \"name\": ...}.")
        if not isinstance(choice.get("name"), str):
            raise missing("tool_choice.name")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return ToolFields(ToolRequest(parsed, _choice(choice, "tool_choice", parsed, legacy=False), parallel=parallel), legacy=False)


def function_tools(value, field: str = "tools") -> list[Tool]:
    """A list of function tools in chat's spelling, checked (Ollama's /api/chat takes the same shape)."""
    return _checked_list(value, field, _tool)


def _flat_tool(tool, where: str) -> Tool:
    if not isinstance(tool, dict):
        raise invalid_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise invalid_value(f"{where}.type", f"tools of type {str(tool.get('type'))[:40]!r} are not supported by this server; only 'function' tools are.")
    return _function({k: v for k, v in tool.items() if k != "type"}, where)


def _checked_list(value, field: str, read) -> list[Tool]:
    """``tools`` or ``functions``: 1 to MAX_TOOLS entries, each read by ``read(entry, where)``, names unique."""
    if not isinstance(value, list):
        raise invalid_type(field, "an array", value)
    if not value:
        raise invalid_value(field, "empty array. Expected an array with minimum length 1, but got an empty array instead.")
    if len(value) > MAX_TOOLS:
        raise invalid_value(field, f"array too long. Expected an array with maximum length {MAX_TOOLS}, but got an array with length {len(value)} instead.")
    parsed = [read(entry, f"{field}[{i}]") for i, entry in enumerate(value)]
    names = [t.name for t in parsed]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise invalid_value(field, f"the function name '{duplicate}' is used by more than one tool.")
    return parsed


def _tool(tool, where: str) -> Tool:
    if not isinstance(tool, dict):
        raise invalid_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise invalid_value(f"{where}.type", f"tools of type {str(tool.get('type'))[:40]!r} are not supported by this server; only 'function' tools are.")
    if "function" not in tool:
        raise missing(f"{where}.function")
    return _function(tool["function"], f"{where}.function")


def _function(value, where: str) -> Tool:
    if not isinstance(value, dict):
        raise invalid_type(where, "an object", value)
    name = value.get("name")
    if name is None:
        raise missing(f"{where}.name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise invalid_value(f"{where}.name", "must be a string of a-z, A-Z, 0-9, underscores and dashes, at most 64 long.")
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_type(f"{where}.description", "a string", description)
    parameters = value.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_type(f"{where}.parameters", "an object", parameters)
    # An object schema: {"type": "object", ...}, or without a type but with properties (a type is then implied).
    if parameters and parameters.get("type", "object" if "properties" in parameters else None) != "object":
        raise invalid_value(f"{where}.parameters", "a function's parameters must be a JSON schema of type 'object'.")
    strict = value.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_type(f"{where}.strict", "a boolean", strict)
    return Tool(name, description, parameters or {"type": "object", "properties": {}})


def _choice(value, field: str, tools: list[Tool], legacy: bool) -> ToolChoice:
    if value is None:
        return ToolChoice(AUTO if tools else NONE)
    if value in (NONE, AUTO) or (value == REQUIRED and not legacy):
        return ToolChoice(value)
    if isinstance(value, str):
        allowed = ["none", "auto"] if legacy else ["none", "auto", "required"]
        raise invalid_value(field, f"'{value[:40]}' is not one of {allowed}, or an object naming a function.")
    if not isinstance(value, dict):
        raise invalid_type(field, "a string or an object", value)
    if legacy:
        name = value.get("name")
    else:
        if value.get("type") != "function":
            raise invalid_value(f"{field}.type", f"{value.get('type')!r} is not supported here; name a function: {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.")
        function = value.get("function")
        if not isinstance(function, dict):
            raise missing(f"{field}.function")
        name = function.get("name")
    if not isinstance(name, str):
        raise missing(f"{field}.name" if legacy else f"{field}.function.name")
    if name not in {t.name for t in tools}:
        raise invalid_value(field, f"no function named '{name[:64]}' is among the tools.")
    return ToolChoice(NAMED, name)


def message_calls(calls: list[ToolCall], legacy: bool) -> dict:
    """The message fields for ``calls``: ``tool_calls``, or the legacy ``function_call``."""
    if legacy:
        return {"function_call": {"name": calls[0].name, "arguments": calls[0].arguments}} if calls else {}
    return {"tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]} if calls else {}


def finish_reason(reason: str, calls: list[ToolCall], legacy: bool) -> str:
    """``tool_calls`` (``function_call``) for an answer that ends in complete
    calls, else the engine's reason (a stop string may cut one short)."""
    if calls and reason == "stop" and all(c.complete for c in calls):
        return "function_call" if legacy else "tool_calls"
    return reason
