"""The Responses API end to end, through the official SDK against a real
server: responses made, streamed (every typed event checked against the spec,
in order), stored, retrieved, continued, deleted; their input items listed;
structured output and function calls; and the refusals."""

from __future__ import annotations

import functools
import json

import httpx
import jsonschema
import openai
import pytest

import openapi
from conftest import running_server
from memory_store import MemoryStore
from pycompat.api.errors import APIError
from pycompat.api.openai import responses
from pycompat.state.store import RESPONSE, Item, Record

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Get the current weather in one city", "parameters": WEATHER}


@pytest.fixture(scope="module")
def client(server_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0)


@functools.lru_cache(maxsize=1)
def event_schemas() -> dict[str, str]:
    """Each stream event type ("response.created") and its schema's name (ResponseCreatedEvent), from the spec."""
    spec = openapi._spec()["components"]["schemas"]
    names = {}
    for ref in spec["ResponseStreamEvent"].get("anyOf", spec["ResponseStreamEvent"].get("oneOf", [])):
        name = ref["$ref"].rsplit("/", 1)[1]
        kind = spec[name]["properties"]["type"]["enum"][0]
        names[kind] = name
    return names


def raw_events(server_url: str, body: dict) -> list[dict]:
    """A streamed response's events as sent (``event:`` line and data), each checked against its schema."""
    events = []
    with httpx.Client(timeout=60) as http, http.stream("POST", server_url + "/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["type"] == name, "the event line names the data's type"
                if openapi.SPEC_PRESENT:
                    openapi.validate(event_schemas()[data["type"]], data)
                events.append(data)
    return events


def test_a_response_has_openais_shape_and_is_stored(client):
    r = client.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=12,
                                metadata={"topic": "geography"}, temperature=0)
    body = r.model_dump(mode="json", exclude_unset=True, by_alias=True)
    openapi.validate("Response", body)
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # 12 tokens cut it
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and r.output_text == message.content[0].text != ""
    assert r.usage.output_tokens == 12 and r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.metadata == {"topic": "geography"} and r.temperature == 0

    again = client.responses.retrieve(r.id)
    openapi.validate("Response", again.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert again.model_dump() == r.model_dump()
    [item] = client.responses.input_items.list(r.id).data
    assert item.type == "message" and item.role == "user" and item.content[0].text == "What is the capital of France?"


def test_a_stream_sends_the_typed_events_in_order_and_stores_before_its_end(client, server_url):
    events = raw_events(server_url, {"model": MODEL, "input": "Say hello.", "max_output_tokens": 40, "temperature": 0})
    kinds = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    last = "response.completed" if kinds[-1] == "response.completed" else "response.incomplete"
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                     *["response.output_text.delta"] * deltas, "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", last]
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events if "item_id" in e)
    # The last event came after the write: the response is there the moment the stream ends.
    stored = client.responses.retrieve(final["id"]).model_dump(mode="json", exclude_unset=True, by_alias=True)
    assert stored == final


def test_the_sdk_reads_a_stream(client):
    # A short JSON answer, so that it completes (the SDK wants a response.completed event).
    answer = {"type": "json_schema", "name": "count", "schema": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}},
                                                              "required": ["n"]}}
    with client.responses.stream(model=MODEL, input="Count to three.", text={"format": answer}, max_output_tokens=30) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text


def test_a_continuation_is_prompted_with_the_earlier_turns_and_reuses_their_cache(client):
    first = client.responses.create(model=MODEL, instructions="You are a helpful assistant who answers in full sentences.",
                                    input="Name three colours of the rainbow and say something about each.",
                                    max_output_tokens=40, temperature=0)
    second = client.responses.create(model=MODEL, input="Now name two more.", previous_response_id=first.id,
                                     max_output_tokens=10, temperature=0)
    assert second.previous_response_id == first.id
    # Its prompt holds the first turn's answer: at least the first turn's prompt without its
    # instructions (not carried over), plus that answer.
    assert second.usage.input_tokens > first.usage.output_tokens + 15
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= 16 and cached % 16 == 0 and cached < second.usage.input_tokens
    third = client.responses.create(model=MODEL, input="Which did you like best?", previous_response_id=second.id,
                                    max_output_tokens=8, temperature=0)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    # The third turn's cache covers the second turn's whole prompt (in whole blocks).
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens // 16 * 16


def test_another_client_continues_by_id_alone(client, server_url):
    """Started by the SDK, continued with a bare HTTP call that knows nothing but the id."""
    first = client.responses.create(model=MODEL, input="My name is Ada. Remember it.", max_output_tokens=8)
    reply = httpx.post(server_url + "/responses", json={"model": MODEL, "previous_response_id": first.id,
                                                        "input": [{"role": "user", "content": "What is my name?"}],
                                                        "max_output_tokens": 8}, timeout=60)
    assert reply.status_code == 200, reply.text
    openapi.validate("Response", reply.json())
    assert reply.json()["usage"]["input_tokens"] > first.usage.input_tokens + first.usage.output_tokens


def test_a_continuation_may_name_another_model(client):
    """The history is text: a stored turn continues under any model id (here the server's alias)."""
    first = client.responses.create(model=MODEL, input="Hello there.", max_output_tokens=4)
    second = client.responses.create(model="gpt-3.5-turbo", input="Again.", previous_response_id=first.id, max_output_tokens=4)
    assert second.model == "gpt-3.5-turbo" and second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_an_unstored_response_is_not_kept_and_cannot_be_continued(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert "store" in openapi.error_of(e.value)["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=MODEL, input="Again", previous_response_id=r.id, max_output_tokens=4)
    error = openapi.error_of(e.value)
    assert error["param"] == "previous_response_id" and "store" in error["message"]
    # Unstored, it may still continue a stored one (as OpenAI allows).
    stored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    after = client.responses.create(model=MODEL, input="Again", previous_response_id=stored.id, max_output_tokens=4, store=False)
    assert after.usage.input_tokens > stored.usage.input_tokens


def test_delete(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    deleted = client.responses.with_raw_response.delete(r.id).http_response.json()
    assert deleted == {"id": r.id, "object": "response", "deleted": True}  # the spec's example
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_input_items_are_listed_newest_first_by_pages(client):
    given = [{"role": "user", "content": f"Message number {i}."} for i in range(5)]
    r = client.responses.create(model=MODEL, input=given, max_output_tokens=4)
    listed = client.responses.input_items.list(r.id)
    openapi.validate("ResponseItemList", listed.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert [i.content[0].text for i in listed.data] == [m["content"] for m in reversed(given)]  # desc: OpenAI's default
    page = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["Message number 0.", "Message number 1."] and page.has_more
    rest = client.responses.input_items.list(r.id, order="asc", limit=10, after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == [m["content"] for m in given[2:]] and not rest.has_more
    every = [i.id for i in client.responses.input_items.list(r.id, order="asc", limit=2)]  # the SDK's auto-paging
    assert every == [i.id for i in reversed(listed.data)]


def test_input_items_of_every_kind_are_kept(client):
    given = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "{\"temperature\": 21}"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "It is 21 degrees."}]},
        {"role": "user", "content": "Thanks!"},
    ]
    r = client.responses.create(model=MODEL, input=given, tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=4)
    listed = client.responses.input_items.list(r.id, order="asc")
    body = listed.model_dump(mode="json", exclude_unset=True, by_alias=True)
    openapi.validate("ResponseItemList", body)
    assert [i["type"] for i in body["data"]] == ["message", "message", "function_call", "function_call_output", "message", "message"]
    assert body["data"][2]["call_id"] == "call_1" and body["data"][3]["output"] == "{\"temperature\": 21}"
    assert body["data"][4]["content"][0]["type"] == "output_text"


def test_an_assistant_refusal_is_kept_as_a_refusal_and_settings_are_repeated(client):
    tool = {**WEATHER_TOOL, "strict": False}
    r = client.responses.create(model=MODEL, max_output_tokens=2, user="user-7", prompt_cache_key="k", tools=[tool], tool_choice="none",
                                input=[{"role": "user", "content": "Tell me a secret."},
                                       {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
                                       {"role": "user", "content": "Fine."}])
    body = r.model_dump(mode="json", exclude_unset=True, by_alias=True)
    openapi.validate("Response", body)
    assert body["user"] == "user-7" and body["prompt_cache_key"] == "k" and body["tools"][0]["strict"] is False
    listed = client.responses.input_items.list(r.id, order="asc").model_dump(mode="json", exclude_unset=True, by_alias=True)
    openapi.validate("ResponseItemList", listed)
    assert listed["data"][1]["content"] == [{"type": "refusal", "refusal": "I can't."}]


def test_text_format_json_schema_is_followed(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Give the largest city of Japan and its population as JSON.",
                                text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
                                max_output_tokens=60)
    openapi.validate("Response", r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema" and r.text.format.name == "city"


def test_a_forced_function_call_and_its_result(client, server_url):
    r = client.responses.create(model=MODEL, input="What's the weather in Paris?", tools=[WEATHER_TOOL],
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80, temperature=0)
    openapi.validate("Response", r.model_dump(mode="json", exclude_unset=True, by_alias=True))
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert r.tools[0].name == "get_weather" and r.status == "completed"
    # The result goes back by id; the model answers in text.
    result = [{"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees, sunny"}]
    after = client.responses.create(model=MODEL, previous_response_id=r.id, tools=[WEATHER_TOOL], tool_choice="none",
                                    input=result, max_output_tokens=12)
    alone = client.responses.create(model=MODEL, tools=[WEATHER_TOOL], tool_choice="none", input=result, max_output_tokens=1)
    assert after.output[0].type == "message"
    # Prompted with the question and the call before the result (the tools are described only when they may be called).
    assert after.usage.input_tokens > alone.usage.input_tokens + 10

    events = raw_events(server_url, {"model": MODEL, "input": "Weather in Rome?", "tools": [WEATHER_TOOL],
                                     "tool_choice": "required", "max_output_tokens": 80, "temperature": 0})
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert events[2]["item"]["type"] == "function_call" and events[2]["item"]["arguments"] == ""
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert streamed == events[-3]["arguments"] == events[-1]["response"]["output"][0]["arguments"]
    jsonschema.validate(json.loads(streamed), WEATHER)


@pytest.mark.parametrize("body, status, param", [
    ({"input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"input": "x", "conversation": "conv_nope"}, 404, "conversation"),
    ({"input": "x", "conversation": "conv_a", "previous_response_id": "resp_b"}, 400, "previous_response_id"),
    ({}, 400, "input"),
    ({"input": [{"role": "user"}]}, 400, "input[0].content"),
    ({"input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, 400, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400, "input[0].call_id"),
    ({"input": 3}, 400, "input"),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"input": "x", "metadata": {"k" * 65: "v"}}, 400, "metadata"),
    ({"input": "x", "metadata": {"k": "v" * 513}}, 400, "metadata.k"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"input": "x", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}}, 400, "tool_choice"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, 400, "include"),
    ({"input": "x", "reasoning": {"effort": "high"}}, 400, "reasoning"),
    ({"input": "x", "background": True}, 400, "background"),
    ({"input": "x", "truncation": "auto"}, 400, "truncation"),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "x", "frobnicate": 1}, 400, "frobnicate"),
    ({"input": "x", "tool_choice": 5}, 400, "tool_choice"),
    ({"input": [{"id": "msg/1", "role": "user", "content": "x"}]}, 400, "input[0].id"),
    ({"input": "x", "service_tier": "bogus"}, 400, "service_tier"),
    ({"input": "x", "service_tier": 5}, 400, "service_tier"),
])
def test_bad_requests_are_refused_naming_the_field(server_url, body, status, param):
    reply = httpx.post(server_url + "/responses", json={"model": MODEL, **body}, timeout=30)
    assert reply.status_code == status, reply.text
    openapi.validate("ErrorResponse", reply.json())
    assert reply.json()["error"]["param"] == param


def test_unknown_ids_are_404s(client):
    for call in (lambda: client.responses.retrieve("resp_nope"), lambda: client.responses.delete("resp_nope"),
                 lambda: client.responses.input_items.list("resp_nope")):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert openapi.error_of(e.value)["code"] == "not_found"


def test_without_state_nothing_is_stored_and_asking_to_store_is_refused(tmp_path):
    with running_server(tmp_path / "serve.log", "--state", "none", "--context-length", "512") as (_, url):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4)  # store left out: answered, not kept
        assert r.status in ("completed", "incomplete")
        for call in (lambda: client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=True),
                     lambda: client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, previous_response_id=r.id),
                     lambda: client.responses.retrieve(r.id)):
            with pytest.raises(openai.BadRequestError) as e:
                call()
            error = openapi.error_of(e.value)
            assert error["code"] == "state_disabled" and "--state" in error["message"]
    assert "state: none" in (tmp_path / "serve.log").read_text()


async def test_a_chain_longer_than_is_followed_is_refused_not_cut(monkeypatch):
    """A chain past MAX_CHAIN responses was followed that far and then silently
    started there, as if the earlier turns had never been."""
    monkeypatch.setattr(responses, "MAX_CHAIN", 3)
    store, previous = MemoryStore(), None
    for n in range(4):
        said = {"type": "message", "id": f"msg_{n}", "status": "completed", "role": "user", "content": [{"type": "input_text", "text": f"{n}"}]}
        await store.save(Record(RESPONSE, f"resp_{n}", 0, {"output": [], "previous_response_id": previous}, parent=previous),
                         [Item(said["id"], said)])
        previous = f"resp_{n}"
    assert [i["id"] for i in await responses.history(store, "resp_2", None)] == ["msg_0", "msg_1", "msg_2"]
    with pytest.raises(APIError) as e:
        await responses.history(store, "resp_3", None)
    assert e.value.status == 400 and e.value.param == "previous_response_id" and e.value.code == "context_length_exceeded"
