"""Stored chat completions (``store: true``) through the official SDK: created,
listed (filters, pages, order), fetched, updated, deleted, and their request
messages listed, as OpenAI's API serves them. The server is the App on the
HTTP layer in this process, over a tiny random model and the in-memory store
(memory_store.py), so each test can choose its store; every body is checked
against OpenAI's OpenAPI spec."""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

import openapi
from memory_store import MemoryStore
from pycompat.state.sqlite import SQLiteStore
from pycompat.api.app import App
from pycompat.api.registry import Registry, ServedModel
from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import Engine
from pycompat.state.store import RESPONSE, Record
from tiny_models import TinyConfig, load_tiny_chat_model

MODEL, ALIAS = "tiny", "tiny-alias"
CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, context_length=2048)
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tiny_chat_model(tmp_path_factory.mktemp("stored") / "tiny", CFG, seed=5)


@pytest.fixture
def serve(nursery, start_http_server, tiny):
    """``serve(state)``: the App over ``state`` (None: it keeps none) on a free
    port, its engine running; returns an SDK client for it."""
    async def start(state) -> openai.AsyncOpenAI:
        engine = Engine(tiny, EngineConfig(kv_cache_mb=16))
        nursery.start_soon(engine.run)
        port = await start_http_server(App(Registry([ServedModel([MODEL, ALIAS], created=0, engine=engine)]), state=state))
        return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)

    return start


@pytest.fixture(params=["sqlite", "memory"])
async def client(serve, request, tmp_path):
    """A client of the App over each store: SQLite (the server's) and the in-memory
    one, held to the same answers (the routes know only the interface)."""
    if request.param == "memory":
        return await serve(MemoryStore())
    return await serve(SQLiteStore.open(tmp_path / "state.sqlite3"))


def body_of(raw) -> dict:
    """The JSON the server sent (not the SDK's parsed object)."""
    return raw.http_response.json()


async def create(client, **kw) -> dict:
    kw = {"model": MODEL, "messages": HI, "max_tokens": 3, "store": True, **kw}
    return body_of(await client.chat.completions.with_raw_response.create(**kw))


async def retrieve(client, completion_id: str) -> dict:
    body = body_of(await client.chat.completions.with_raw_response.retrieve(completion_id))
    openapi.validate("CreateChatCompletionResponse", body)
    return body


async def list_completions(client, **query) -> dict:
    body = body_of(await client.chat.completions.with_raw_response.list(**query))
    if body["data"]:  # the spec's first_id and last_id are strings, so an empty list (null ids) is not checked
        openapi.validate("ChatCompletionList", body)
    return body


async def list_messages(client, completion_id: str, **query) -> dict:
    body = body_of(await client.chat.completions.messages.with_raw_response.list(completion_id, **query))
    validate_message_list(body)
    return body


def validate_message_list(body: dict) -> None:
    """ChatCompletionMessageList, checked around three errors in the spec. Its
    items are ChatCompletionResponseMessage (an assistant's reply) plus ``id``
    and ``content_parts``, but they are the request's messages:
    - ``role`` may only be "assistant" there, while a stored message keeps the
      role it was sent with (OpenAI's own example shows "user");
    - ``name`` and ``tool_call_id`` (a request message's) are not in the schema,
      though OpenAI's example shows ``"name": null``, and ``refusal`` is
      required, though the example has none;
    - the two halves of the ``allOf`` each list their properties, so once
      closed (openapi.py) no object can satisfy both.
    So each message is checked in its parts: what a reply message has against
    ChatCompletionResponseMessage (role set to "assistant", refusal null),
    ``content_parts`` against the text part schema, the rest by hand."""
    envelope = {**body, "data": []}
    if body["data"]:
        openapi.validate("ChatCompletionMessageList", envelope)
    for message in body["data"]:
        assert isinstance(message["id"], str) and (message["name"] is None or isinstance(message["name"], str))
        assert set(message) >= {"id", "role", "content", "name", "content_parts"}
        assert message["role"] in ("system", "developer", "user", "assistant", "tool", "function")
        for part in message["content_parts"] or []:
            openapi.validate("ChatCompletionRequestMessageContentPartText", part)
        assert isinstance(message.get("tool_call_id", ""), str)
        reply = {k: v for k, v in message.items() if k not in ("id", "content_parts", "name", "tool_call_id")}
        openapi.validate("ChatCompletionResponseMessage", {**reply, "role": "assistant", "refusal": None})


async def expect_error(status: int, call) -> dict:
    with pytest.raises(openai.APIStatusError) as e:
        await call
    assert e.value.status_code == status
    return openapi.error_of(e.value)


# --- create, fetch, update, delete --------------------------------------------------------------


async def test_a_stored_completion_is_served_as_it_was_answered_until_deleted(client):
    answer = await create(client, metadata={"topic": "greeting"}, n=2, logprobs=True, top_logprobs=2)
    openapi.validate("CreateChatCompletionResponse", answer)
    stored = await retrieve(client, answer["id"])
    assert stored == {**answer, "metadata": {"topic": "greeting"}}
    sdk = await client.chat.completions.retrieve(answer["id"])  # the SDK's own types parse it
    assert sdk.id == answer["id"] and sdk.metadata == {"topic": "greeting"} and len(sdk.choices) == 2

    updated = body_of(await client.chat.completions.with_raw_response.update(answer["id"], metadata={"topic": "farewell", "n": "2"}))
    openapi.validate("CreateChatCompletionResponse", updated)
    assert updated == {**answer, "metadata": {"topic": "farewell", "n": "2"}}
    assert (await retrieve(client, answer["id"]))["metadata"] == {"topic": "farewell", "n": "2"}
    # Null clears it, as the spec's Metadata (object or null) allows.
    assert (await client.chat.completions.update(answer["id"], metadata=None)).metadata == {}

    deleted = body_of(await client.chat.completions.with_raw_response.delete(answer["id"]))
    openapi.validate("ChatCompletionDeleted", deleted)
    assert deleted == {"object": "chat.completion.deleted", "id": answer["id"], "deleted": True}
    for gone in (client.chat.completions.retrieve(answer["id"]), client.chat.completions.delete(answer["id"]),
                 client.chat.completions.update(answer["id"], metadata={}), client.chat.completions.messages.list(answer["id"])):
        error = await expect_error(404, gone)
        assert error["code"] == "not_found" and answer["id"] in error["message"]


async def test_without_store_nothing_is_kept_and_metadata_changes_nothing(client):
    answer = await create(client, store=False, metadata={"a": "b"})
    assert "metadata" not in answer
    await expect_error(404, client.chat.completions.retrieve(answer["id"]))
    assert (await create(client, store=None))["id"] not in [c["id"] for c in (await list_completions(client))["data"]]
    assert (await list_completions(client))["data"] == []


async def test_the_request_messages_are_kept_in_openai_shape(client):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What's the weather "}, {"type": "text", "text": "in Paris?"}], "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "user", "content": "Thanks"},
    ]
    answer = await create(client, messages=messages)
    body = await list_messages(client, answer["id"])
    ids = [f"{answer['id']}-{i}" for i in range(5)]
    assert body["first_id"] == ids[0] and body["last_id"] == ids[-1] and body["has_more"] is False
    assert body["data"] == [
        {"id": ids[0], "role": "developer", "content": "Be brief.", "name": None, "content_parts": None},
        {"id": ids[1], "role": "user", "content": "What's the weather in Paris?", "name": "ann",
         "content_parts": [{"type": "text", "text": "What's the weather "}, {"type": "text", "text": "in Paris?"}]},
        {"id": ids[2], "role": "assistant", "content": None, "name": None, "content_parts": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"id": ids[3], "role": "tool", "content": "18 C", "name": None, "content_parts": None, "tool_call_id": "call_1"},
        {"id": ids[4], "role": "user", "content": "Thanks", "name": None, "content_parts": None},
    ]
    sdk = await client.chat.completions.messages.list(answer["id"])  # the SDK's ChatCompletionStoreMessage parses each
    assert [m.id for m in sdk.data] == ids and sdk.data[1].content_parts[1].text == "in Paris?"

    # Pages: after a cursor, newest first, and the SDK following has_more through them all.
    first = await list_messages(client, answer["id"], limit=2)
    assert [m["id"] for m in first["data"]] == ids[:2] and first["has_more"] is True
    rest = await list_messages(client, answer["id"], after=first["last_id"], limit=10)
    assert [m["id"] for m in rest["data"]] == ids[2:] and rest["has_more"] is False
    backwards = await list_messages(client, answer["id"], order="desc", limit=3)
    assert [m["id"] for m in backwards["data"]] == ids[::-1][:3] and backwards["has_more"] is True
    assert [m.id async for m in client.chat.completions.messages.list(answer["id"], limit=2)] == ids
    error = await expect_error(404, client.chat.completions.messages.list(answer["id"], after="msg_nope"))
    assert error["param"] == "after"


async def test_calls_on_a_message_that_cannot_make_them_are_stored_as_read(client):
    """Calls on a user or tool message are not read (only an assistant makes
    calls): stored, the message has none, as the model was prompted. Storing it
    was a KeyError, a 500 after the answer was made."""
    messages = [
        {"role": "user", "content": "Hi", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "tool", "tool_call_id": "call_1", "content": "x", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "user", "content": "Bye", "function_call": {"name": "f", "arguments": "{}"}},
    ]
    answer = await create(client, messages=messages)
    body = await list_messages(client, answer["id"])
    assert [m["role"] for m in body["data"]] == ["user", "assistant", "tool", "user"]
    assert not any("tool_calls" in m or "function_call" in m for m in body["data"])
    assert body["data"][2]["tool_call_id"] == "call_1"


# --- streams ---------------------------------------------------------------------------------


async def test_a_streamed_completion_is_stored_as_the_unstreamed_answer_would_be(client):
    stream = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12, n=2, logprobs=True, top_logprobs=1,
                                                  stream=True, stream_options={"include_usage": True}, store=True,
                                                  metadata={"via": "stream"}, extra_body={"ignore_eos": True})
    chunks = [c.to_dict() async for c in stream]
    completion_id = chunks[0]["id"]
    stored = await retrieve(client, completion_id)
    assert stored["metadata"] == {"via": "stream"} and stored["usage"] == chunks[-1]["usage"]
    assert (stored["object"], stored["created"], stored["model"]) == ("chat.completion", chunks[0]["created"], MODEL)
    for index, choice in enumerate(stored["choices"]):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert choice["index"] == index and choice["finish_reason"] == mine[-1]["finish_reason"]
        assert choice["message"]["content"] == "".join(c["delta"].get("content") or "" for c in mine)
        assert choice["logprobs"]["content"] == [t for c in mine if c.get("logprobs") for t in c["logprobs"]["content"]]
    assert sum(len(c["logprobs"]["content"]) for c in stored["choices"]) == stored["usage"]["completion_tokens"] == 24


async def test_a_forced_calls_stored_ids_are_the_ones_the_stream_sent(client):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}
    stream = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=40, tools=[tool], stream=True, store=True,
                                                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    chunks = [c.to_dict() async for c in stream]
    sent = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or [] if "id" in call]
    stored = (await retrieve(client, chunks[0]["id"]))["choices"][0]
    assert sent and [c["id"] for c in stored["message"]["tool_calls"]] == [c["id"] for c in sent]
    assert stored["finish_reason"] == chunks[-1]["choices"][0]["finish_reason"]


class SlowStore(MemoryStore):
    """Takes a while to save, and notes when it has: an answer that does not wait
    for the write shows up in ``log`` before it."""

    def __init__(self):
        super().__init__()
        self.log: list[str] = []

    async def save(self, *args, **kw):
        await trio.sleep(0.3)
        await super().save(*args, **kw)
        self.log.append("saved")


async def test_the_write_is_durable_before_the_answer_ends(serve):
    store = SlowStore()
    client = await serve(store)
    await create(client)
    store.log.append("answered")
    stream = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, store=True, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            store.log.append("usage")
    store.log.append("done")
    assert store.log == ["saved", "answered", "saved", "usage", "done"]


async def test_a_stream_cut_short_is_not_stored(client):
    stream = await client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1500, stream=True, store=True,
                                                  extra_body={"ignore_eos": True})
    first = await stream.__anext__()
    await stream.close()
    await trio.sleep(0.5)  # time for the server to give the generation up
    assert (await list_completions(client))["data"] == []
    await expect_error(404, client.chat.completions.retrieve(first.id))


# --- lists ---------------------------------------------------------------------------------


async def test_lists_filter_page_and_order(client):
    made = []
    for i, (model, meta) in enumerate([(MODEL, {"user": "ann"}), (ALIAS, {"user": "bob"}), (MODEL, {"user": "ann", "tag": "x"}),
                                        (MODEL, {}), (ALIAS, {"user": "ann"})]):
        made.append(await create(client, model=model, metadata=meta))
    ids = [m["id"] for m in made]

    everything = await list_completions(client)
    assert [c["id"] for c in everything["data"]] == ids and everything["has_more"] is False  # oldest first by default
    assert everything["data"][2] == {**made[2], "metadata": {"user": "ann", "tag": "x"}}
    assert [c["id"] for c in (await list_completions(client, order="desc"))["data"]] == ids[::-1]

    page = await list_completions(client, limit=2)
    assert [c["id"] for c in page["data"]] == ids[:2] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[0], ids[1])
    page = await list_completions(client, limit=2, after=page["last_id"])
    assert [c["id"] for c in page["data"]] == ids[2:4] and page["has_more"] is True
    page = await list_completions(client, limit=2, after=page["last_id"])
    assert [c["id"] for c in page["data"]] == ids[4:] and page["has_more"] is False
    page = await list_completions(client, limit=2, after=ids[2], order="desc")
    assert [c["id"] for c in page["data"]] == ids[:2][::-1] and page["has_more"] is False
    assert [c.id async for c in client.chat.completions.list(limit=2)] == ids  # the SDK follows has_more

    async def ids_of(**query) -> list[str]:
        return [c["id"] for c in (await list_completions(client, **query))["data"]]

    assert await ids_of(model=ALIAS) == [ids[1], ids[4]]
    assert await ids_of(metadata={"user": "ann"}) == [ids[0], ids[2], ids[4]]
    assert await ids_of(metadata={"user": "ann", "tag": "x"}) == [ids[2]]
    assert await ids_of(metadata={"user": "ann"}, model=MODEL, order="desc") == [ids[2], ids[0]]
    assert await ids_of(metadata={"user": "carol"}) == []

    error = await expect_error(404, client.chat.completions.list(after="chatcmpl-nope"))
    assert error["param"] == "after" and error["code"] == "not_found"
    for query, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "sideways"}, "order")):
        error = await expect_error(400, client.chat.completions.list(**query))
        assert error["param"] == param


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata, param", [
    ({f"k{i}": "v" for i in range(17)}, "metadata"),
    ({"k" * 65: "v"}, "metadata"),
    ({"k": "v" * 513}, "metadata.k"),
    ({"k": 1}, "metadata.k"),
    ("tags", "metadata"),
])
async def test_metadata_beyond_openais_limits_is_refused(client, metadata, param):
    error = await expect_error(400, client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, store=True, metadata=metadata))
    assert error["param"] == param
    kept = await create(client)
    error = await expect_error(400, client.chat.completions.update(kept["id"], metadata=metadata))
    assert error["param"] == param
    assert (await retrieve(client, kept["id"]))["metadata"] == {}
    # At the limits exactly, it is kept.
    full = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert (await client.chat.completions.update(kept["id"], metadata=full)).metadata == full


async def test_an_update_is_a_json_object_with_metadata_alone(client):
    kept = await create(client)
    url = f"{client.base_url}chat/completions/{kept['id']}"
    async with httpx.AsyncClient() as http:
        for content, code in ((b"{not json", None), (b"[]", None), (b'{"metadata": {}, "model": "x"}', "unknown_parameter"),
                              (b"{}", "missing_required_parameter")):
            r = await http.post(url, content=content, headers={"content-type": "application/json"})
            assert r.status_code == 400, content
            openapi.validate("ErrorResponse", r.json())
            assert r.json()["error"]["code"] == code


async def test_unknown_ids_and_other_kinds_are_404s(serve):
    state = MemoryStore()
    client = await serve(state)
    await state.save(Record(RESPONSE, "resp_1", 0, {"id": "resp_1", "object": "response"}))
    for completion_id in ("chatcmpl-nope", "resp_1"):
        for call in (client.chat.completions.retrieve(completion_id), client.chat.completions.update(completion_id, metadata={}),
                     client.chat.completions.delete(completion_id), client.chat.completions.messages.list(completion_id)):
            error = await expect_error(404, call)
            assert error == {"message": f"No chat completion found with id '{completion_id}'.", "type": "invalid_request_error",
                             "param": None, "code": "not_found"}
    assert await state.get(RESPONSE, "resp_1") is not None


async def test_without_state_storing_and_every_stored_route_is_refused(serve):
    client = await serve(None)
    assert (await create(client, store=False, metadata={"a": "b"}))["choices"]  # metadata alone changes nothing
    calls = [client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, store=True),
             client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1, store=True, stream=True),
             client.chat.completions.list(), client.chat.completions.retrieve("chatcmpl-x"),
             client.chat.completions.update("chatcmpl-x", metadata={}), client.chat.completions.delete("chatcmpl-x"),
             client.chat.completions.messages.list("chatcmpl-x")]
    for call in calls:
        error = await expect_error(400, call)
        assert error["code"] == "state_disabled" and "--state" in error["message"]
