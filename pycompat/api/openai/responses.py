"""The Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

A response is a chat turn: its input items (after the history it continues:
a ``previous_response_id``'s chain, or a ``conversation``'s items) are turned
into chat messages and answered by the same machinery as chat completions
(pycompat.api.chat: tools, output grammars, the engine). Its output is a message
item, or function_call items.

Stored (``store``, the default) it keeps its input items and its body, and a
response given a ``conversation`` adds its input and output items to it, in
the same transaction, committed before the response's last byte is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from pycompat.api import chat as chat_service
from pycompat.api import generation, json_body, tools
from pycompat.api.errors import APIError, ServiceError
from pycompat.api.generation import Finished
from pycompat.api.openai import items, stored
from pycompat.api.openai import structured as openai_structured
from pycompat.api.openai import tools as openai_tools
from pycompat.api.openai.bodies import new_id, now
from pycompat.api.openai.errors import as_api_error, invalid_type, invalid_value, missing
from pycompat.api.openai.protocol import RESPONSES, Fields, sampling_defaults
from pycompat.api.registry import Registry
from pycompat.api.render import json_response, stream_response
from pycompat.http.messages import Request, Response
from pycompat.state.store import CONVERSATION, RESPONSE, DuplicateId, Item, NotFound, Record, Store

# Fields a response repeats as they were sent, when they were.
ECHOED = ("user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "max_tool_calls", "top_logprobs")
log = logging.getLogger(__name__)

MAX_CHAIN = 10_000  # responses a previous_response_id chain is followed back through
SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


async def create(registry: Registry, state: Store | None, request: Request) -> Response:
    fields = Fields(await json_body.parse_object(request.body), RESPONSES)
    model_id = fields.get("model")
    fields.check("service_tier", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
                 "moderation", "top_logprobs", "truncation", "background", "prompt", "context_management", "max_tool_calls")
    _check_unsupported(fields)
    stream = fields.get("stream")
    metadata = fields.requested("metadata") or {}
    store = fields.get("store")
    if fields.requested("store") is True:
        stored.require(state, "'store': true")
    store = store and state is not None  # the default (store) on a server that keeps nothing: not stored
    previous_id = fields.requested("previous_response_id")
    conversation_id = _conversation_id(fields.requested("conversation"))
    if previous_id is not None and conversation_id is not None:
        raise invalid_value("previous_response_id", "'previous_response_id' and 'conversation' cannot be used together.")
    if previous_id is not None:
        stored.require(state, "'previous_response_id'")
    if conversation_id is not None:
        stored.require(state, "'conversation'")
    input_items = items.read_input(fields.requested("input")) if fields.requested("input") is not None else []
    instructions = fields.requested("instructions")
    instruction_messages = _instructions(instructions)
    served = registry.generator(model_id)
    requested = {"temperature": fields.requested("temperature"), "top_p": fields.requested("top_p")}
    defaults = sampling_defaults()
    max_tokens = fields.requested("max_output_tokens")
    opts = generation.sampling_options(served, max_tokens, requested, defaults, max_tokens_field="max_output_tokens")
    output = openai_structured.text_format(fields.requested("text"))
    tool_fields = openai_tools.read_flat(fields.requested("tools"), fields.requested("tool_choice"), fields.get("parallel_tool_calls"))

    earlier = await history(state, previous_id, conversation_id)
    if conversation_id is not None:
        _check_ids_are_new(input_items, earlier)
    if not earlier and not input_items:
        raise missing("input")
    messages = instruction_messages + items.to_messages(earlier + input_items)
    calls, choices = await chat_service.start(served, messages, tool_fields and tool_fields.request, output, opts, "input",
                                              format_field="text.format")

    turn = _Turn(
        id=new_id("resp_"), created_at=now(), model=model_id, metadata=metadata, input_items=input_items,
        store=store, conversation_id=conversation_id, state=state,
        echo=_echo(fields, instructions, previous_id, conversation_id, opts, tool_fields),
    )
    if stream:
        return stream_response(_stream(turn, choices, calls), SSE_CONTENT_TYPE, SSE_HEADERS, turn.error_event, on_close=choices.cancel)
    result = (await choices.run_to_end())[0]
    builder = _Output(calls.parser())
    builder.add(result.text)
    builder.close(result.finished.reason)
    body = turn.body(builder.items, result.finished)
    await turn.keep(body, builder.items)
    return json_response(body)


async def retrieve(state: Store | None, request: Request, response_id: str) -> Response:
    record = await stored.require(state, "retrieving responses").get(RESPONSE, response_id)
    if record is None:
        raise _not_found(response_id)
    if _query_flag(request, "stream"):
        raise invalid_value("stream", "replaying a stored response as a stream is not supported; retrieve it without 'stream'.")
    return json_response(served_body(record))


async def delete(state: Store | None, request: Request, response_id: str) -> Response:
    if not await stored.require(state, "deleting responses").delete(RESPONSE, response_id):
        raise _not_found(response_id)
    # The spec's example (the SDKs read no body): "object" is "response", not "response.deleted".
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(state: Store | None, request: Request, response_id: str) -> Response:
    store = stored.require(state, "listing a response's input items")
    query = stored.ListQuery(request)
    # The items are found by their owner's id alone: a conversation's (or a stored
    # chat completion's) must not be listed as a response's input.
    if await store.get(RESPONSE, response_id) is None:
        raise _not_found(response_id)
    try:
        page = await store.items(response_id, after=query.after, limit=query.limit, order=query.order)
    except NotFound:
        if await store.get(RESPONSE, response_id) is None:  # deleted meanwhile
            raise _not_found(response_id) from None
        raise invalid_value("after", f"no input item with id '{query.after[:100]}' in this response.") from None
    return json_response(stored.list_body(page, [item.body for item in page.data]))


def served_body(record: Record) -> dict:
    """A stored response's body as served: with its current metadata."""
    return {**record.body, "metadata": record.metadata}


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No response found with id '{response_id[:100]}': it was never stored (created with 'store': false), "
                    "or it was deleted or has expired.", param=param, code="not_found")


def _query_flag(request: Request, name: str) -> bool:
    return any(k == name and v.lower() in ("true", "1") for k, v in request.query)


def _check_unsupported(fields: Fields) -> None:
    """Fields whose every value but the trivial one asks for something not done here."""
    reasoning = fields.requested("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict) or any(v is not None for v in reasoning.values())):
        raise invalid_value("reasoning", "this model does not reason: 'reasoning' options are not supported.")
    include = fields.requested("include")
    if include is not None:
        if not isinstance(include, list):
            raise invalid_type("include", "an array", include)
        if include:
            raise invalid_value("include", f"'{str(include[0])[:60]}' is not supported by this server: there is nothing more to include.")


def _conversation_id(value) -> str | None:
    """``conversation``: its id, or ``{"id": ...}``."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
        if value is None:
            raise missing("conversation.id")
    if not isinstance(value, str):
        raise invalid_type("conversation", "a string or an object with an 'id'", value)
    return value


def _instructions(value) -> list[dict]:
    """``instructions`` as the system messages that come first (a string, or input items)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}] if value else []
    return items.to_messages(items.read_items(value, "instructions"))


async def history(state: Store | None, previous_id: str | None, conversation_id: str | None) -> list[dict]:
    """The items a response continues: its conversation's, or those of the
    chain of responses ending at ``previous_id`` (each one's input, then its output)."""
    if conversation_id is not None:
        found = await state.all_items(conversation_id)
        if found is None or await state.get(CONVERSATION, conversation_id) is None:
            raise stored.not_found("conversation", conversation_id, param="conversation")
        return [item.body for item in found]
    if previous_id is None:
        return []
    # The chain, newest first; it ends early after a turn deleted or expired.
    chain = await state.ancestry(RESPONSE, previous_id, MAX_CHAIN + 1)
    if chain is None:
        raise _not_found(previous_id, param="previous_response_id")
    if len(chain) > MAX_CHAIN:  # never a history silently cut short
        raise APIError(400, f"The chain of responses ending at '{previous_id[:100]}' is longer than the {MAX_CHAIN} responses "
                       "this server follows back: start a new chain, or continue with a 'conversation'.",
                       param="previous_response_id", code="context_length_exceeded")
    return [item for record, inputs in reversed(chain) for item in [i.body for i in inputs] + record.body["output"]]


def _check_ids_are_new(input_items: list[dict], history: list[dict]) -> None:
    """A conversation's item ids are unique: an input item may not reuse one.
    Checked before anything is generated (the store would refuse it only after)."""
    taken = {item["id"] for item in history}
    for i, item in enumerate(input_items):
        if item["id"] in taken:
            raise _id_taken(item["id"], f"input[{i}].id")


def _id_taken(item_id: str, param: str) -> APIError:
    return invalid_value(param, f"an item with id '{item_id[:100]}' is in the conversation already; "
                         "leave input items' ids out to have new ones made.")


def _echo(fields: Fields, instructions, previous_id, conversation_id, opts, tool_fields) -> dict:
    """The request's settings as the response object repeats them."""
    text = fields.requested("text") or {}
    fmt = text.get("format") or {"type": "text"}
    if fmt.get("type") == "json_schema":
        fmt = {"type": "json_schema", "name": fmt["name"], "schema": fmt["schema"], "strict": fmt.get("strict", False),
               **({"description": fmt["description"]} if isinstance(fmt.get("description"), str) else {})}
    tool_choice = fields.requested("tool_choice")
    if tool_choice is None:
        tool_choice = "auto" if tool_fields is not None else "none"
    return {
        "instructions": instructions,
        "max_output_tokens": fields.requested("max_output_tokens"),
        "parallel_tool_calls": fields.get("parallel_tool_calls"),
        "previous_response_id": previous_id,
        "conversation": {"id": conversation_id} if conversation_id is not None else None,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "text": {"format": fmt, "verbosity": "medium"},
        "tool_choice": tool_choice,
        # strict as sent (OpenAI's default: true); the arguments follow the schema either way.
        "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                   "strict": raw.get("strict") is not False}
                  for t, raw in zip(tool_fields.request.tools if tool_fields else [], fields.requested("tools") or [])],
        **{name: fields.requested(name) for name in ECHOED if fields.requested(name) is not None},
    }


@dataclass
class _Turn:
    """One response being made: its identity, what it repeats of the request,
    and where it is kept."""

    id: str
    created_at: int
    model: str
    metadata: dict
    input_items: list[dict]
    store: bool
    conversation_id: str | None
    state: Store | None
    echo: dict
    sequence: int = 0  # the next stream event's sequence_number

    def body(self, output: list[dict], finished: Finished | None, status: str | None = None, error: dict | None = None) -> dict:
        if status is None:
            status = "incomplete" if finished.reason == "length" else "completed"
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": now() if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.model,
            "output": output,
            "metadata": self.metadata,
            "background": False,
            "reasoning": None,
            "service_tier": "default",
            "truncation": "disabled",
            **self.echo,
        }
        if finished is not None:  # none yet while it is made (the spec's usage may not be null)
            body["usage"] = _usage(finished)
        return body

    async def keep(self, body: dict, output: list[dict]) -> None:
        """Stores the finished response (and adds its turn to its conversation),
        durably, before the client gets its last byte."""
        if self.state is None or not (self.store or self.conversation_id):
            return
        try:
            if self.store:
                record = Record(RESPONSE, self.id, self.created_at, {**body, "metadata": {}}, dict(self.metadata), model=self.model,
                                parent=body["previous_response_id"])
                appended = self.input_items + output if self.conversation_id else []
                await self.state.save(record, [_item(i) for i in self.input_items], self.conversation_id, [_item(i) for i in appended])
            else:
                await self.state.add_items(self.conversation_id, [_item(i) for i in self.input_items + output])
        except NotFound:
            raise stored.not_found("conversation", self.conversation_id, param="conversation") from None
        except DuplicateId as e:  # a client-chosen input item id the conversation holds already (added meanwhile)
            raise _id_taken(str(e.args[0] if e.args else ""), "input") from None

    def event(self, kind: str, **payload) -> bytes:
        """One typed stream event, numbered."""
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return (f"event: {kind}\ndata: ".encode() + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
                + b"\n\n")

    def error_event(self, e: APIError | ServiceError) -> bytes:
        """The ``error`` event for a failure that ends the stream."""
        e = as_api_error(e)
        return self.event("error", code=e.code, message=e.message, param=e.param)


def _item(body: dict) -> Item:
    return Item(body["id"], body)


def _usage(finished: Finished) -> dict:
    return {
        "input_tokens": finished.prompt_tokens,
        "input_tokens_details": {"cached_tokens": finished.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": finished.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


@dataclass
class _Output:
    """Builds a response's output items from the answer's text as it comes,
    and says what changed as stream events (``(type, payload)``): a message
    item and its one text part, or a function_call item per call."""

    parser: tools.CallParser | None
    items: list[dict] = field(default_factory=list)
    _message: dict | None = None  # the message item being written
    _calls: dict[int, dict] = field(default_factory=dict)  # the parser's call index -> its item

    def add(self, text: str) -> list[tuple[str, dict]]:
        events = [tools.ContentDelta(text)] if self.parser is None else self.parser.feed(text)
        return [e for event in events for e in self._apply(event)]

    def close(self, reason: str) -> list[tuple[str, dict]]:
        """The answer is over (``reason``: the engine's): every item finishes."""
        out = [e for event in (self.parser.finish() if self.parser is not None else []) for e in self._apply(event)]
        incomplete = reason == "length"
        if not self.items:  # nothing said at all: an empty message, as OpenAI answers then
            out += self._open_message()
        if self._message is not None:
            out += self._close_message("incomplete" if incomplete else "completed")
        complete = {c.id for c in self.parser.calls if c.complete} if self.parser is not None else set()
        for index, item in self._calls.items():
            item["status"] = "completed" if item["call_id"] in complete else "incomplete"
            at = self.items.index(item)
            out.append(("response.function_call_arguments.done",
                        {"item_id": item["id"], "name": item["name"], "output_index": at, "arguments": item["arguments"]}))
            out.append(("response.output_item.done", {"output_index": at, "item": dict(item)}))
        return out

    def _apply(self, event: tools.ToolEvent) -> list[tuple[str, dict]]:
        if isinstance(event, tools.ContentDelta):
            if not event.text:
                return []
            out = self._open_message() if self._message is None else []
            part = self._message["content"][0]
            part["text"] += event.text
            out.append(("response.output_text.delta", {"item_id": self._message["id"], "output_index": self.items.index(self._message),
                                                        "content_index": 0, "delta": event.text, "logprobs": []}))
            return out
        if isinstance(event, tools.CallStarted):
            out = self._close_message("completed") if self._message is not None else []
            item = items.call_item(tools.ToolCall(event.id, event.name, ""), status="in_progress")
            self._calls[event.index] = item
            self.items.append(item)
            out.append(("response.output_item.added", {"output_index": len(self.items) - 1, "item": dict(item)}))
            return out
        item = self._calls[event.index]
        item["arguments"] += event.text
        return [("response.function_call_arguments.delta",
                 {"item_id": item["id"], "output_index": self.items.index(item), "delta": event.text})]

    def _open_message(self) -> list[tuple[str, dict]]:
        self._message = items.message_item("assistant", "", status="in_progress")
        part = dict(self._message["content"][0])
        self._message["content"] = []
        self.items.append(self._message)
        at = len(self.items) - 1
        added = ("response.output_item.added", {"output_index": at, "item": json.loads(json.dumps(self._message))})
        self._message["content"] = [part]
        return [added, ("response.content_part.added",
                        {"item_id": self._message["id"], "output_index": at, "content_index": 0, "part": dict(part)})]

    def _close_message(self, status: str) -> list[tuple[str, dict]]:
        message, self._message = self._message, None
        message["status"] = status
        at, part = self.items.index(message), message["content"][0]
        return [
            ("response.output_text.done", {"item_id": message["id"], "output_index": at, "content_index": 0, "text": part["text"], "logprobs": []}),
            ("response.content_part.done", {"item_id": message["id"], "output_index": at, "content_index": 0, "part": dict(part)}),
            ("response.output_item.done", {"output_index": at, "item": json.loads(json.dumps(message))}),
        ]


async def _stream(turn: _Turn, choices: generation.Choices, calls) -> AsyncIterator[bytes]:
    """The response's typed events, in order: created, in_progress, each item
    added, its deltas and done, then completed (or incomplete); ``error`` and
    ``response.failed`` when it fails on the way."""
    yield turn.event("response.created", response=turn.body([], None, status="in_progress"))
    yield turn.event("response.in_progress", response=turn.body([], None, status="in_progress"))
    builder = _Output(calls.parser())
    try:
        finished = None
        async with aclosing(choices.stream()) as events:
            async for _, ev in events:
                if isinstance(ev, Finished):
                    finished = ev
                    break
                for kind, payload in builder.add(ev.text):
                    yield turn.event(kind, **payload)
        for kind, payload in builder.close(finished.reason):
            yield turn.event(kind, **payload)
        body = turn.body(builder.items, finished)
        await turn.keep(body, builder.items)
    except Exception as e:  # the client still learns the response failed, with its number in the sequence
        if isinstance(e, (APIError, ServiceError)):
            failure = as_api_error(e)
        else:
            log.exception("response %s failed", turn.id)
            failure = APIError(500, "The server had an error while generating the response.")
        yield turn.error_event(failure)
        code = {429: "rate_limit_exceeded"}.get(failure.status, "server_error" if failure.status >= 500 else "invalid_prompt")
        yield turn.event("response.failed", response=turn.body(builder.items, None, status="failed",
                                                               error={"code": code, "message": failure.message}))
        return
    yield turn.event("response.completed" if body["status"] == "completed" else "response.incomplete", response=body)
