"""Tool calling, in no dialect's words: the tools a request offers, how the
model is told about them, the grammar its answer follows, and the parser that
reads calls back out of its text, piece by piece as it streams.

Two formats:

- ``HermesFormat`` for chat templates that render ``tools`` themselves and
  teach the model Hermes' call syntax (Qwen2.5, Hermes, and the many
  templates that copied them): the model writes
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.
- ``JsonFormat``, ours, for every other template (SmolLM2's among them): the
  tools are described in the system message and the model answers one JSON
  object, ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`` or
  ``{"content": "..."}``, which the grammar enforces.

In both, ``required`` and a named tool force a call (the named tool's
parameters exactly), ``auto`` lets the model choose but holds any call it
starts to its tool's schema, and ``none`` leaves the output free.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any

from pycompat.api import structured
from pycompat.api.structured import OutputGrammar

NONE, AUTO, REQUIRED, NAMED = "none", "auto", "required", "named"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict  # a JSON schema for the arguments object


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # NONE, AUTO, REQUIRED or NAMED
    name: str | None = None  # the tool, for NAMED


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object
    complete: bool = False  # its arguments were read to their end (not cut by max_tokens or a stop string)


def new_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


# --- what a parser reports as the text streams ---


@dataclass
class ContentDelta:
    text: str


@dataclass
class CallStarted:
    index: int
    id: str
    name: str


@dataclass
class ArgumentsDelta:
    index: int
    text: str


ToolEvent = ContentDelta | CallStarted | ArgumentsDelta


@dataclass
class ToolRequest:
    """What a request asks of tool calling."""

    tools: list[Tool]
    choice: ToolChoice
    parallel: bool = True  # more than one call in an answer

    def offered(self) -> list[Tool]:
        """The tools the model may call (a named choice: that one)."""
        if self.choice.mode == NAMED:
            return [t for t in self.tools if t.name == self.choice.name]
        return [] if self.choice.mode == NONE else self.tools


def arguments_schema(tool: Tool) -> dict:
    """The schema a call's arguments follow: the tool's, always of an object
    (openai/tools.py refuses parameters that are not an object schema)."""
    params = tool.parameters or {"type": "object", "properties": {}}
    return params if params.get("type") == "object" else {**params, "type": "object"}


def _as_arguments(value: Any) -> Any:
    """A call's arguments as a template expects them: the object, not its JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


class CallParser:
    """Reads an answer's text, piece by piece; ``feed`` and ``finish`` return
    what the new text makes known. ``content`` and ``calls`` hold everything read."""

    def __init__(self) -> None:
        self.content_parts: list[str] = []
        self.calls: list[ToolCall] = []

    @property
    def content(self) -> str | None:
        return "".join(self.content_parts) if self.content_parts else None

    def _content(self, text: str, out: list[ToolEvent]) -> None:
        if text:
            self.content_parts.append(text)
            out.append(ContentDelta(text))

    def _start_call(self, name: str, out: list[ToolEvent]) -> None:
        call = ToolCall(new_call_id(), name, "")
        self.calls.append(call)
        out.append(CallStarted(len(self.calls) - 1, call.id, name))

    def _arguments(self, text: str, out: list[ToolEvent]) -> None:
        if text:
            self.calls[-1].arguments += text
            out.append(ArgumentsDelta(len(self.calls) - 1, text))

    def feed(self, text: str) -> list[ToolEvent]:
        raise NotImplementedError

    def finish(self) -> list[ToolEvent]:
        raise NotImplementedError


# --- our JSON format ---


class JsonFormat:
    """Tools described in the system message; the answer is one JSON object."""

    name = "json"

    def prompt_messages(self, messages: list[dict], request: ToolRequest) -> list[dict]:
        """``messages`` with the tools described and past calls and results told as the model reads them."""
        out = _history_as_text(messages)
        if request.choice.mode == NONE:
            return _untold(out)
        text = self._instructions(request)
        if out and out[-1].get("told") and request.choice.mode == AUTO:
            # Said last, where a small model heeds it.
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\nUse these results to answer."}
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text}
        else:
            out.insert(0, {"role": "system", "content": text})
        return _untold(out)

    @staticmethod
    def _instructions(request: ToolRequest) -> str:
        lines = ["You can call these tools:"]
        for tool in request.offered():
            described = f": {tool.description}" if tool.description else ""
            lines.append(f"- {tool.name}{described} Arguments (JSON schema): {json.dumps(arguments_schema(tool), ensure_ascii=False)}")
        lines.append('Answer with JSON only. To call a tool: {"tool_calls": [{"name": "<tool name>", "arguments": {<its arguments>}}]}')
        if request.choice.mode == AUTO:
            lines.append('To answer without calling a tool: {"content": "<your answer>"}')
        elif request.choice.mode == NAMED:
            lines.append(f"Call {request.choice.name} now.")
        else:
            lines.append("Call a tool now.")
        return "\n".join(lines)

    def grammar(self, request: ToolRequest, field: str) -> OutputGrammar | None:
        if request.choice.mode == NONE:
            return None
        calls = []
        for tool in request.offered():
            calls.append({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments_schema(tool)},
                "required": ["name", "arguments"],
            })
        call_list: dict = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}, "minItems": 1}
        if not request.parallel or request.choice.mode == NAMED:
            call_list["maxItems"] = 1
        answer_with_calls = {"type": "object", "properties": {"tool_calls": call_list}, "required": ["tool_calls"]}
        if request.choice.mode == AUTO:
            plain = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
            schema = {"anyOf": [answer_with_calls, plain]}
        else:
            schema = answer_with_calls
        label = f"function '{request.choice.name}'" if request.choice.mode == NAMED else field
        return structured.json_schema(schema, field, label)

    def template_tools(self, request: ToolRequest) -> None:
        return None  # the tools are described in the system message instead

    def parser(self, forced: bool = False) -> CallParser:
        return _JsonAnswerParser()


def _history_as_text(messages: list[dict]) -> list[dict]:
    """Past calls and their results, told to the model in a user turn: "you
    called ... and it returned ...". Templates without tools know no 'tool'
    role, and a small model shown its own earlier call as an answer copies it
    instead of using the result. The turn joins the user's message before it,
    so roles still alternate (some templates insist)."""
    out: list[dict] = []
    calls: dict[str, dict] = {}
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            calls.update({c["id"]: c["function"] for c in msg["tool_calls"]})
            said = [f"You called {c['function']['name']} with {c['function']['arguments']}." for c in msg["tool_calls"]]
            if msg.get("content"):
                said.insert(0, f"You said: {msg['content']}")
            _tell(out, "\n".join(said))
        elif msg["role"] in ("tool", "function"):
            name = msg.get("name") or calls.get(msg.get("tool_call_id"), {}).get("name", "The tool")
            _tell(out, f"{name} returned: {msg['content']}")
        else:
            out.append({k: v for k, v in msg.items() if k not in ("tool_calls", "tool_call_id")})
    return out


def _untold(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "told"} for m in messages]


def _tell(out: list[dict], text: str) -> None:
    """Adds ``text`` to the user turn at the end of ``out`` (a new one after an assistant turn)."""
    if out and out[-1]["role"] == "user":
        out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{text}" if out[-1]["content"] else text, "told": True}
    else:
        out.append({"role": "user", "content": text, "told": True})


class _JsonAnswerParser(CallParser):
    """Reads ``{"content": "..."}`` (streaming the string's characters) or
    ``{"tool_calls": [{"name": "...", "arguments": {...}}, ...]}`` (streaming
    each call's arguments text), as the grammar lays them out."""

    _CONTENT, _CALLS = '{"content": "', '{"tool_calls": ['

    def __init__(self) -> None:
        super().__init__()
        self._head = ""  # text before the answer's kind is known
        self._mode: str | None = None
        self._escape = ""  # an unfinished escape sequence inside the content string
        self._done = False
        # Inside tool_calls: where we are in the current call.
        self._state = "before_call"
        self._buf = ""
        self._depth = 0
        self._in_string = False
        self._string_escape = False

    def feed(self, text: str) -> list[ToolEvent]:
        out: list[ToolEvent] = []
        if self._mode is None:
            self._head += text
            for prefix, mode in ((self._CONTENT, "content"), (self._CALLS, "calls")):
                if self._head.startswith(prefix):
                    self._mode, text = mode, self._head[len(prefix):]
                    break
            else:
                if not any(p.startswith(self._head) for p in (self._CONTENT, self._CALLS)):
                    self._mode, text = "raw", self._head  # not our shape (no grammar held it): plain text
                else:
                    return out
        if self._mode == "raw":
            self._content(text, out)
        elif self._mode == "content":
            self._read_content(text, out)
        else:
            for ch in text:
                self._read_call_char(ch, out)
        return out

    def finish(self) -> list[ToolEvent]:
        # Cut short before its kind was known: the start of our wrapper, which is no answer.
        return []

    def _read_content(self, text: str, out: list[ToolEvent]) -> None:
        plain = []
        pending = list(text)
        while pending and not self._done:
            ch = pending.pop(0)
            if self._escape:
                self._escape += ch
                decoded, rest = _json_escape(self._escape)
                if decoded is not None:
                    plain.append(decoded)
                    self._escape = ""
                    pending[:0] = rest  # what followed a lone surrogate is read again
            elif ch == "\\":
                self._escape = ch
            elif ch == '"':
                self._done = True
            else:
                plain.append(ch)
        self._content("".join(plain), out)

    def _read_call_char(self, ch: str, out: list[ToolEvent]) -> None:
        if self._state == "before_call":
            self._buf += ch
            if self._buf.endswith('"name": "'):
                self._state, self._buf = "name", ""
        elif self._state == "name":
            if ch == '"':
                self._start_call(json.loads(f'"{self._buf}"'), out)
                self._state, self._buf = "before_arguments", ""
            else:
                self._buf += ch
        elif self._state == "before_arguments":
            self._buf += ch
            if self._buf.endswith('"arguments": '):
                self._state, self._buf, self._depth = "arguments", "", 0
        elif self._state == "arguments":
            self._arguments(ch, out)
            if self._in_string:
                if self._string_escape:
                    self._string_escape = False
                elif ch == "\\":
                    self._string_escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.calls[-1].complete = True
                    self._state, self._buf = "before_call", ""

    def _arguments(self, text: str, out: list[ToolEvent]) -> None:
        # Consecutive characters of one call's arguments go out as one delta.
        if out and isinstance(out[-1], ArgumentsDelta) and out[-1].index == len(self.calls) - 1:
            self.calls[-1].arguments += text
            out[-1].text += text
        else:
            super()._arguments(text, out)


def _json_escape(seq: str) -> tuple[str | None, str]:
    """The text of a complete JSON escape sequence (None while it is incomplete),
    and the characters after it that are not part of it. A high surrogate waits
    for a low one; one that has none stands alone (as U+FFFD)."""
    if len(seq) < 2:
        return None, ""
    if seq[1] != "u":
        return json.loads(f'"{seq}"'), ""
    if len(seq) < 6:
        return None, ""
    if 0xD800 <= int(seq[2:6], 16) < 0xDC00:  # a pair: \\uD83D\\uDE00
        if not "\\u".startswith(seq[6:8]) or (len(seq) >= 12 and not 0xDC00 <= int(seq[8:12], 16) < 0xE000):
            return "\ufffd", seq[6:]  # a lone high surrogate
        if len(seq) < 12:
            return None, ""
    text = json.loads(f'"{seq}"', strict=False)
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), ""


# --- Hermes' format ---

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


class HermesFormat:
    """For templates that render ``tools`` and teach ``<tool_call>`` blocks."""

    name = "hermes"

    def __init__(self, open_is_special: bool):
        self.open_is_special = open_is_special
        # A special token is written <tool_call> in Lark (the token itself), a plain one as its text.
        self._open = CALL_OPEN if open_is_special else structured.lark_string(CALL_OPEN)
        self._close = CALL_CLOSE if open_is_special else structured.lark_string(CALL_CLOSE)

    def prompt_messages(self, messages: list[dict], request: ToolRequest) -> list[dict]:
        out = []
        for msg in messages:
            if msg["role"] == "function":  # the legacy result: templates know only 'tool'
                msg = {**msg, "role": "tool"}
            if msg.get("tool_calls"):
                calls = [{"type": "function", "id": c.get("id"),
                          "function": {"name": c["function"]["name"], "arguments": _as_arguments(c["function"]["arguments"])}}
                         for c in msg["tool_calls"]]
                msg = {**msg, "tool_calls": calls}
            out.append(msg)
        return out

    def template_tools(self, request: ToolRequest) -> list[dict] | None:
        if request.choice.mode == NONE:
            return None
        return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                  "parameters": arguments_schema(t)}} for t in request.offered()]

    def grammar(self, request: ToolRequest, field: str) -> OutputGrammar | None:
        if request.choice.mode == NONE:
            return None
        rules, names = [], []
        for i, tool in enumerate(request.offered()):
            schema = structured.json_schema_value({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments_schema(tool)},
                "required": ["name", "arguments"],
            })
            names.append(f"call_{i}")
            rules.append(f"call_{i}: {self._open} \"\\n\" %json {json.dumps(schema, ensure_ascii=False)} \"\\n\" {self._close}")
        one = "call: " + " | ".join(names)
        calls = 'calls: call ("\\n" call)*' if request.parallel and request.choice.mode != NAMED else "calls: call"
        if request.choice.mode == AUTO:
            # Free text that never opens a call, then optionally the calls.
            start = "start: TEXT | TEXT? calls\nTEXT: /(?s:.+)/ & ~/(?s:.*<tool_call>.*)/"
        else:
            start = "start: calls"
        label = f"function '{request.choice.name}'" if request.choice.mode == NAMED else field
        return structured.lark("\n".join([start, calls, one, *rules]), field, label)

    def parser(self, forced: bool = False) -> CallParser:
        return _HermesParser(forced)


class _HermesParser(CallParser):
    """Text outside ``<tool_call>`` blocks is content (a possible start of a
    block held back); each block's JSON becomes a call when it closes."""

    def __init__(self, forced: bool = False) -> None:
        super().__init__()
        self._buf = ""
        self._in_call = False
        self._forced = forced  # the answer had to be calls: an unfinished one is no text either

    def feed(self, text: str) -> list[ToolEvent]:
        out: list[ToolEvent] = []
        self._buf += text
        while True:
            if not self._in_call:
                at = self._buf.find(CALL_OPEN)
                if at < 0:
                    # Held back: what may begin a call, and the whitespace before it (dropped if a call follows).
                    keep = _partial_suffix(self._buf, CALL_OPEN)
                    text = self._buf[: len(self._buf) - keep].rstrip()
                    self._content(text, out)
                    self._buf = self._buf[len(text):]
                    return out
                self._content(self._buf[:at].rstrip(), out)
                self._buf, self._in_call = self._buf[at + len(CALL_OPEN):], True
            else:
                end = self._buf.find(CALL_CLOSE)
                if end < 0:
                    return out
                self._call(self._buf[:end], out)
                self._buf, self._in_call = self._buf[end + len(CALL_CLOSE):].lstrip("\n"), False

    def _call(self, body: str, out: list[ToolEvent]) -> None:
        try:
            value = json.loads(body)
        except ValueError:
            self._content(CALL_OPEN + body + CALL_CLOSE, out)  # not a call after all: keep the text
            return
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            self._content(CALL_OPEN + body + CALL_CLOSE, out)
            return
        self._start_call(value["name"], out)
        args = value.get("arguments", value.get("parameters", {}))
        self._arguments(args if isinstance(args, str) else json.dumps(args, ensure_ascii=False), out)
        self.calls[-1].complete = True

    def finish(self) -> list[ToolEvent]:
        out: list[ToolEvent] = []
        if self._buf and not (self._in_call and self._forced):  # an unfinished block (cut by max_tokens) stays text
            self._content((CALL_OPEN if self._in_call else "") + self._buf, out)
        self._buf = ""
        return out


def _partial_suffix(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could begin ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def format_for(model) -> JsonFormat | HermesFormat:
    """The call format for a LoadedModel: Hermes' where its template renders
    tools and writes ``<tool_call>``, else ours."""
    template, tokenizer = model.chat_template, model.tokenizer
    if template.renders_tools and CALL_OPEN in template.source:
        opener = tokenizer.encode(CALL_OPEN, add_bos=False)
        return HermesFormat(open_is_special=len(opener) == 1 and tokenizer.is_special(opener[0]))
    return JsonFormat()
