"""Conversations (/v1/conversations and their items) through the official SDK
against a real server: their round trips and pages, a response made in a
conversation joining it (and the next one prompted with it, its prefix
cached), and every refusal in OpenAI's shape. Every body the server sends is
validated against OpenAI's spec."""

from __future__ import annotations

import asyncio

import openai
import pytest

import openapi
from conftest import running_server
from memory_store import MemoryStore
from pycompat.api.errors import APIError
from pycompat.api.openai import conversations, stored_chat
from pycompat.http.messages import Request
from pycompat.state.store import CHAT_COMPLETION, CONVERSATION, Item, Record

MODEL = "smollm2-135m-instruct"
GREETING = [
    {"role": "system", "content": "You are a friendly assistant who remembers what people tell you about themselves."},
    {"role": "user", "content": "Hello! My name is Ann and I keep bees in my garden."},
]


@pytest.fixture(scope="module")
def client(server_url):
    # No retries: a retried write would add its items twice and hide the failure.
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=60)


def sent(schema: str, raw) -> dict:
    """The JSON the server sent (not the SDK's parse of it), checked against the spec's ``schema``."""
    body = raw.http_response.json()
    openapi.validate(schema, body)
    return body


def item_list(body: dict) -> dict:
    """A ConversationItemList checked against the spec. The spec types first_id and
    last_id as strings with no null, which an empty page cannot have: the server
    sends null there, and the rest of an empty page is still checked."""
    if not body["data"]:
        assert body["first_id"] is None and body["last_id"] is None
        openapi.validate("ConversationItemList", {**body, "first_id": "", "last_id": ""})
    else:
        openapi.validate("ConversationItemList", body)
    return body


def all_items(client, conversation_id: str) -> list[dict]:
    """Every item of the conversation, oldest first, a page of 100 at a time."""
    out, after = [], openai.omit
    while True:
        page = item_list(client.conversations.items.with_raw_response.list(conversation_id, order="asc", limit=100, after=after)
                         .http_response.json())
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def respond(client, conversation_id: str, text: str) -> dict:
    raw = client.responses.with_raw_response.create(model=MODEL, input=text, conversation=conversation_id, max_output_tokens=8,
                                                    temperature=0)
    return sent("Response", raw)


def text(item: dict) -> str:
    return "".join(part["text"] for part in item["content"])


def test_a_conversation_round_trips(client):
    conv = sent("ConversationResource", client.conversations.with_raw_response.create(items=GREETING, metadata={"topic": "bees"}))
    assert conv["id"].startswith("conv_") and conv["object"] == "conversation" and conv["metadata"] == {"topic": "bees"}
    assert sent("ConversationResource", client.conversations.with_raw_response.retrieve(conv["id"])) == conv

    items = all_items(client, conv["id"])
    assert [(i["type"], i["role"], text(i)) for i in items] == [("message", m["role"], m["content"]) for m in GREETING]
    for item in items:
        assert item["id"].startswith("msg_") and item["status"] == "completed"
        got = sent("ConversationItem", client.conversations.items.with_raw_response.retrieve(item["id"], conversation_id=conv["id"]))
        assert got == item

    updated = sent("ConversationResource", client.conversations.with_raw_response.update(conv["id"], metadata={"topic": "hives", "n": "2"}))
    assert updated == {**conv, "metadata": {"topic": "hives", "n": "2"}}  # replaced, not merged
    assert sent("ConversationResource", client.conversations.with_raw_response.retrieve(conv["id"])) == updated

    after_delete = sent("ConversationResource",
                        client.conversations.items.with_raw_response.delete(items[0]["id"], conversation_id=conv["id"]))
    assert after_delete == updated  # the conversation, as OpenAI answers an item's deletion
    assert [i["id"] for i in all_items(client, conv["id"])] == [items[1]["id"]]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(items[0]["id"], conversation_id=conv["id"])

    deleted = sent("DeletedConversationResource", client.conversations.with_raw_response.delete(conv["id"]))
    assert deleted == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    for gone in (lambda: client.conversations.retrieve(conv["id"]), lambda: client.conversations.items.list(conv["id"]),
                 lambda: client.conversations.items.retrieve(items[1]["id"], conversation_id=conv["id"])):
        with pytest.raises(openai.NotFoundError):
            gone()


def test_an_empty_conversation(client):
    conv = sent("ConversationResource", client.conversations.with_raw_response.create())
    assert conv["metadata"] == {}
    page = item_list(client.conversations.items.with_raw_response.list(conv["id"]).http_response.json())
    assert page["data"] == [] and page["has_more"] is False


def test_items_added_later_come_after_and_pages_walk_them_both_ways(client):
    conv = client.conversations.create(items=[{"role": "user", "content": "zero"}])
    added = sent("ConversationItemList", client.conversations.items.with_raw_response.create(
        conv.id, items=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": w}]} for w in ("one", "two")]))
    assert [text(i) for i in added["data"]] == ["one", "two"] and added["has_more"] is False
    assert added["first_id"] == added["data"][0]["id"] and added["last_id"] == added["data"][1]["id"]
    client.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "three", "annotations": []}]},
        {"type": "function_call", "call_id": "call_4", "name": "count", "arguments": "{\"n\": 4}"},
        {"type": "function_call_output", "call_id": "call_4", "output": "four"},
    ])
    ascending = all_items(client, conv.id)
    assert [i["type"] for i in ascending] == ["message"] * 4 + ["function_call", "function_call_output"]
    assert [text(i) for i in ascending[:4]] == ["zero", "one", "two", "three"]
    assert ascending[4]["id"].startswith("fc_") and ascending[5]["output"] == "four"
    for item in ascending:
        sent("ConversationItem", client.conversations.items.with_raw_response.retrieve(item["id"], conversation_id=conv.id))
    ids = [i["id"] for i in ascending]

    # The default order is newest first, as OpenAI's.
    newest = item_list(client.conversations.items.with_raw_response.list(conv.id).http_response.json())
    assert [i["id"] for i in newest["data"]] == ids[::-1] and newest["has_more"] is False

    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        pages, after = [], openai.omit
        while True:
            page = item_list(client.conversations.items.with_raw_response.list(conv.id, order=order, limit=4, after=after)
                             .http_response.json())
            pages.append([i["id"] for i in page["data"]])
            assert page["first_id"] == pages[-1][0] and page["last_id"] == pages[-1][-1]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert pages == [expected[:4], expected[4:]]
        # The SDK's own paging (it follows last_id) sees the same.
        assert [i.id for i in client.conversations.items.list(conv.id, order=order, limit=2)] == expected

    # After the last item: an empty page.
    last = item_list(client.conversations.items.with_raw_response.list(conv.id, order="asc", after=ids[-1]).http_response.json())
    assert last["data"] == [] and last["has_more"] is False


def test_a_response_in_a_conversation_joins_it_and_the_next_is_prompted_with_it(client):
    conv = client.conversations.create(items=GREETING)
    first = respond(client, conv.id, "What do I keep in my garden?")
    assert first["conversation"] == {"id": conv.id}
    first_input = client.responses.input_items.list(first["id"]).data
    assert [(i.role, i.content[0].text) for i in first_input] == [("user", "What do I keep in my garden?")]

    items = all_items(client, conv.id)
    assert len(items) == len(GREETING) + 2
    assert items[len(GREETING)]["id"] == first_input[0].id  # its input, then its output, after what was there
    assert items[-1] == first["output"][0]
    assert items[-1]["role"] == "assistant" and text(items[-1]) == first["output"][0]["content"][0]["text"]

    second = respond(client, conv.id, "And what is my name?")
    # Prompted with the whole conversation: the first turn's prompt and its answer, then the new question ...
    assert second["usage"]["input_tokens"] >= first["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    # ... whose prefix, the first turn's, was still cached.
    assert second["usage"]["input_tokens_details"]["cached_tokens"] >= first["usage"]["input_tokens"] // 16 * 16 > 0
    items = all_items(client, conv.id)
    assert len(items) == len(GREETING) + 4
    assert [(i["role"], i["status"]) for i in items[-2:]] == [("user", "completed"), ("assistant", second["output"][0]["status"])]
    assert text(items[-2]) == "And what is my name?" and items[-1] == second["output"][0]
    # Both responses are stored too, as created.
    for made in (first, second):
        assert sent("Response", client.responses.with_raw_response.retrieve(made["id"])) == made


def test_a_streamed_response_joins_its_conversation_before_it_ends(client):
    conv = client.conversations.create(items=GREETING)
    events = list(client.responses.create(model=MODEL, input="What do I keep?", conversation=conv.id, max_output_tokens=8, stream=True))
    final = events[-1].response.model_dump(mode="json", exclude_unset=True)
    openapi.validate("Response", final)
    assert final["conversation"] == {"id": conv.id}
    items = all_items(client, conv.id)  # stored before the last event was sent
    assert len(items) == len(GREETING) + 2
    assert (items[-2]["role"], text(items[-2])) == ("user", "What do I keep?") and items[-1] == final["output"][0]


def test_a_response_not_stored_still_joins_its_conversation(client):
    conv = client.conversations.create()
    made = client.responses.create(model=MODEL, input="Hi.", conversation={"id": conv.id}, store=False, max_output_tokens=8)
    items = all_items(client, conv.id)
    assert [(i["role"], i["id"]) for i in items] == [("user", items[0]["id"]), ("assistant", made.output[0].id)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_a_response_reusing_an_item_id_of_its_conversation_is_a_400_and_adds_nothing(client):
    """Item ids are unique in a conversation: refused before anything is generated, streamed or not."""
    conv = client.conversations.create(items=[{"role": "user", "content": "hi", "id": "msg_taken"}])
    reused = [{"role": "user", "content": "again", "id": "msg_taken"}]
    for stream in (False, True):
        error = bad_request(lambda: client.responses.create(model=MODEL, input=reused, conversation=conv.id, max_output_tokens=8,
                                                            stream=stream))
        assert (error["param"], error["code"]) == ("input[0].id", "invalid_value") and "msg_taken" in error["message"], error
    assert [i["id"] for i in all_items(client, conv.id)] == ["msg_taken"]


def test_two_responses_racing_with_one_item_id_store_it_once(client, server_url):
    """Both read the conversation before either is stored (so the id is found
    taken only when the second is stored): that one is refused with a 400, not
    a 500, and the id is there once."""
    conv = client.conversations.create()

    async def race():
        aclient = openai.AsyncOpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*[aclient.responses.create(
                model=MODEL, input=[{"role": "user", "content": "Tell me about bees.", "id": "msg_same"}], conversation=conv.id,
                max_output_tokens=16) for _ in range(2)], return_exceptions=True)
        finally:
            await aclient.close()

    outcomes = asyncio.run(race())
    made = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(made) == len(refused) == 1, outcomes
    for e in refused:
        assert isinstance(e, openai.BadRequestError), e
        assert "msg_same" in openapi.error_of(e)["message"]
    items = all_items(client, conv.id)
    assert [i["id"] for i in items].count("msg_same") == 1 and len(items) == 2


def test_an_unknown_conversation_is_a_404(client):
    calls = {
        "retrieve": lambda: client.conversations.retrieve("conv_unknown"),
        "update": lambda: client.conversations.update("conv_unknown", metadata={"a": "b"}),
        "delete": lambda: client.conversations.delete("conv_unknown"),
        "list items": lambda: client.conversations.items.list("conv_unknown"),
        "add items": lambda: client.conversations.items.create("conv_unknown", items=[{"role": "user", "content": "hi"}]),
        "retrieve an item": lambda: client.conversations.items.retrieve("msg_1", conversation_id="conv_unknown"),
        "delete an item": lambda: client.conversations.items.delete("msg_1", conversation_id="conv_unknown"),
    }
    for what, call in calls.items():
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        error = openapi.error_of(caught.value)
        assert error["code"] == "not_found" and "conv_unknown" in error["message"], what
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="hi", conversation="conv_unknown", max_output_tokens=8)
    error = openapi.error_of(caught.value)
    assert (error["code"], error["param"]) == ("not_found", "conversation") and "conv_unknown" in error["message"]
    # A known conversation, an unknown item.
    conv = client.conversations.create()
    for call in (lambda: client.conversations.items.retrieve("msg_unknown", conversation_id=conv.id),
                 lambda: client.conversations.items.delete("msg_unknown", conversation_id=conv.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert "msg_unknown" in openapi.error_of(caught.value)["message"]


def test_a_conversation_is_no_response_and_a_response_no_conversation(client):
    """Each kind's routes find only their own kind, never the other's items under its id."""
    conv = client.conversations.create(items=[{"role": "user", "content": "in the conversation"}])
    made = client.responses.create(model=MODEL, input="in the response", max_output_tokens=8)
    (made_input,) = client.responses.input_items.list(made.id).data
    calls = [
        lambda: client.responses.retrieve(conv.id),
        lambda: client.responses.input_items.list(conv.id),
        lambda: client.responses.delete(conv.id),
        lambda: client.responses.create(model=MODEL, input="hi", previous_response_id=conv.id, max_output_tokens=8),
        lambda: client.conversations.retrieve(made.id),
        lambda: client.conversations.items.list(made.id),
        lambda: client.conversations.items.retrieve(made_input.id, conversation_id=made.id),
        lambda: client.conversations.items.delete(made_input.id, conversation_id=made.id),
        lambda: client.conversations.items.create(made.id, items=[{"role": "user", "content": "hi"}]),
        lambda: client.conversations.delete(made.id),
        lambda: client.responses.create(model=MODEL, input="hi", conversation=made.id, max_output_tokens=8),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert [text(i) for i in all_items(client, conv.id)] == ["in the conversation"]
    assert [i.id for i in client.responses.input_items.list(made.id).data] == [made_input.id]


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return openapi.error_of(caught.value)


def test_more_than_twenty_items_at_once_is_a_400(client):
    many = [{"role": "user", "content": str(n)} for n in range(21)]
    conv = client.conversations.create(items=many[:20])  # twenty is allowed
    for call in (lambda: client.conversations.create(items=many), lambda: client.conversations.items.create(conv.id, items=many)):
        error = bad_request(call)
        assert error["param"] == "items" and "20" in error["message"] and "21" in error["message"]
    assert len(all_items(client, conv.id)) == 20


@pytest.mark.parametrize("metadata, param", [
    ({f"k{n}": "v" for n in range(17)}, "metadata"),
    ({"k" * 65: "v"}, "metadata"),
    ({"k": "v" * 513}, "metadata.k"),
])
def test_oversized_metadata_is_a_400_naming_it(client, metadata, param):
    conv = client.conversations.create(metadata={"kept": "yes"})
    for call in (lambda: client.conversations.create(metadata=metadata), lambda: client.conversations.update(conv.id, metadata=metadata)):
        error = bad_request(call)
        assert error["param"] == param and error["code"] == "invalid_value", error
    assert client.conversations.retrieve(conv.id).metadata == {"kept": "yes"}
    # The limits themselves are allowed.
    client.conversations.create(metadata={f"{n:0>64}": "v" * 512 for n in range(16)})


@pytest.mark.parametrize("bad, param", [
    ({"type": "message", "content": "no role"}, "items[1].role"),
    ({"content": "neither role nor type"}, "items[1].type"),
    ({"role": "wizard", "content": "hi"}, "items[1].role"),
    ({"role": "user"}, "items[1].content"),
    ({"role": "user", "content": [{"type": "input_text", "text": "look:"},
                                  {"type": "input_image", "image_url": "https://example.com/a.png"}]}, "items[1].content[1].type"),
    ({"role": "user", "content": [{"type": "input_text", "text": 7}]}, "items[1].content[0].text"),
    ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "items[1].type"),
    ({"type": "function_call", "call_id": "call_1", "name": "f"}, "items[1].arguments"),
    ("a bare string", "items[1]"),
])
def test_a_malformed_item_is_a_400_naming_its_path_and_nothing_is_added(client, bad, param):
    conv = client.conversations.create(items=[{"role": "user", "content": "kept"}])
    items = [{"role": "user", "content": "fine"}, bad]
    for call in (lambda: client.conversations.create(items=items), lambda: client.conversations.items.create(conv.id, items=items)):
        error = bad_request(call)
        assert error["param"] == param and param in error["message"], error
    assert [text(i) for i in all_items(client, conv.id)] == ["kept"]


def test_an_unknown_field_is_a_400(client):
    error = bad_request(lambda: client.conversations.create(extra_body={"title": "x"}))
    assert (error["param"], error["code"]) == ("title", "unknown_parameter")


def test_without_state_conversations_are_refused(tmp_path):
    with running_server(tmp_path / "serve.log", "--model", MODEL, "--state", "none") as (_, url):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        calls = [
            lambda: client.conversations.create(),
            lambda: client.conversations.retrieve("conv_1"),
            lambda: client.conversations.update("conv_1", metadata={}),
            lambda: client.conversations.delete("conv_1"),
            lambda: client.conversations.items.list("conv_1"),
            lambda: client.conversations.items.create("conv_1", items=[{"role": "user", "content": "hi"}]),
            lambda: client.conversations.items.retrieve("msg_1", conversation_id="conv_1"),
            lambda: client.conversations.items.delete("msg_1", conversation_id="conv_1"),
            lambda: client.responses.create(model=MODEL, input="hi", conversation="conv_1", max_output_tokens=8),
        ]
        for call in calls:
            error = bad_request(call)
            assert error["code"] == "state_disabled" and "--state" in error["message"], error
        # A response that asks for nothing stored is still answered.
        assert client.responses.create(model=MODEL, input="hi", max_output_tokens=8).output


class DeletedWhileListed(MemoryStore):
    """Deletes an item list's owner just before listing it: a DELETE landing
    between the route's check that the owner exists and its read of the page."""

    async def items(self, owner, **kw):
        for kind in (CONVERSATION, CHAT_COMPLETION):
            await self.delete(kind, owner)
        return await super().items(owner, **kw)


@pytest.mark.parametrize("query", ["", "?after=msg_1"])
async def test_an_owner_deleted_while_its_items_are_listed_is_a_404_for_it(query):
    """Not a 400 about a cursor the request may not even have sent."""
    for kind, list_items in ((CONVERSATION, conversations.list_items), (CHAT_COMPLETION, stored_chat.messages)):
        store = DeletedWhileListed()
        await store.save(Record(kind, "owner_1", 0, {}), [Item("msg_1", {"id": "msg_1"})])
        with pytest.raises(APIError) as e:
            await list_items(store, Request("GET", "/v1/x/owner_1/items" + query, []), "owner_1")
        assert e.value.status == 404 and "owner_1" in e.value.message and e.value.param is None
