"""Conversations: /v1/conversations and their items.

A conversation is a stored, ordered list of items (messages, function calls
and their outputs) that any client can add to and read by its id; a response
created with ``conversation`` answers after its items and adds its own input
and output to them (responses.py).
"""

from __future__ import annotations

from pycompat.api import json_body
from pycompat.api.errors import APIError
from pycompat.api.openai import items, stored
from pycompat.api.openai.bodies import new_id, now
from pycompat.api.openai.errors import invalid_type, invalid_value, missing
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response
from pycompat.state.store import CONVERSATION, DuplicateId, Item, NotFound, Page, Record, Store

MAX_ITEMS_PER_CALL = 20  # OpenAI's limit on items added at once


async def create(state: Store | None, request: Request) -> Response:
    store = stored.require(state, "conversations")
    body = await _body(request, ("items", "metadata"))
    metadata = stored.metadata(body.get("metadata"))
    added = _items(body.get("items"), "items") if body.get("items") is not None else []
    record = Record(CONVERSATION, new_id("conv_"), now(), {}, metadata)
    record.body = {"id": record.id, "object": "conversation", "created_at": record.created_at}
    try:
        await store.save(record, [Item(i["id"], i) for i in added])
    except DuplicateId:  # a random id taken: vanishingly rare, and worth a retry by the client
        raise APIError(409, "A conversation id collided; please retry.", code="conflict") from None
    return json_response(_served(record))


async def retrieve(state: Store | None, request: Request, conversation_id: str) -> Response:
    return json_response(_served(await _get(state, conversation_id)))


async def update(state: Store | None, request: Request, conversation_id: str) -> Response:
    store = stored.require(state, "conversations")
    body = await _body(request, ("metadata",))
    if "metadata" not in body:
        raise missing("metadata")
    record = await store.update_metadata(CONVERSATION, conversation_id, stored.metadata(body["metadata"]))
    if record is None:
        raise _not_found(conversation_id)
    return json_response(_served(record))


async def delete(state: Store | None, request: Request, conversation_id: str) -> Response:
    if not await stored.require(state, "conversations").delete(CONVERSATION, conversation_id):
        raise _not_found(conversation_id)
    return json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def list_items(state: Store | None, request: Request, conversation_id: str) -> Response:
    store = stored.require(state, "conversations")
    query = stored.ListQuery(request)
    await _get(store, conversation_id)
    try:
        page = await store.items(conversation_id, after=query.after, limit=query.limit, order=query.order)
    except NotFound:  # the cursor, or the conversation itself if it was deleted since
        if query.after is None or await store.get(CONVERSATION, conversation_id) is None:
            raise _not_found(conversation_id) from None
        raise invalid_value("after", f"no item with id '{query.after[:100]}' in this conversation.") from None
    return json_response(stored.list_body(page, [item.body for item in page.data]))


async def add_items(state: Store | None, request: Request, conversation_id: str) -> Response:
    store = stored.require(state, "conversations")
    body = await _body(request, ("items",))
    if body.get("items") is None:
        raise missing("items")
    added = _items(body["items"], "items")
    await _get(store, conversation_id)
    try:
        await store.add_items(conversation_id, [Item(i["id"], i) for i in added])
    except NotFound:
        raise _not_found(conversation_id) from None
    except DuplicateId as e:
        raise invalid_value("items", f"an item with id '{str(e.args[0] if e.args else '')[:100]}' is in this conversation already.") from None
    return json_response(stored.list_body(Page([], False), added))


async def retrieve_item(state: Store | None, request: Request, conversation_id: str, item_id: str) -> Response:
    store = stored.require(state, "conversations")
    await _get(store, conversation_id)
    item = await store.get_item(conversation_id, item_id)
    if item is None:
        raise stored.not_found("item", item_id)
    return json_response(item.body)


async def delete_item(state: Store | None, request: Request, conversation_id: str, item_id: str) -> Response:
    store = stored.require(state, "conversations")
    await _get(store, conversation_id)
    if not await store.delete_item(conversation_id, item_id):
        raise stored.not_found("item", item_id)
    return json_response(_served(await _get(store, conversation_id)))


async def _get(state: Store | None, conversation_id: str) -> Record:
    record = await stored.require(state, "conversations").get(CONVERSATION, conversation_id)
    if record is None:
        raise _not_found(conversation_id)
    return record


def _served(record: Record) -> dict:
    return {**record.body, "metadata": record.metadata}


def _not_found(conversation_id: str) -> APIError:
    return stored.not_found("conversation", conversation_id)


async def _body(request: Request, allowed: tuple[str, ...]) -> dict:
    """The JSON body (empty: ``{}``), with only ``allowed`` fields."""
    body = await json_body.parse_object(request.body) if request.body.strip() else {}
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0][:100]}", param=unknown[0][:100], code="unknown_parameter")
    return body


def _items(value, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise invalid_type(field, "an array of items", value)
    if len(value) > MAX_ITEMS_PER_CALL:
        raise invalid_value(field, f"array too long. Expected an array with maximum length {MAX_ITEMS_PER_CALL}, "
                            f"but got an array with length {len(value)} instead.")
    return items.read_items(value, field)
