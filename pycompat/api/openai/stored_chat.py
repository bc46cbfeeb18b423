"""Stored chat completions: GET /v1/chat/completions (the list),
GET, POST (new metadata) and DELETE /v1/chat/completions/{completion_id}, and
GET /v1/chat/completions/{completion_id}/messages (the request's messages).

chat.py stores a completion created with ``store: true``; these routes serve
it as that request was answered, with its metadata as it is now."""

from __future__ import annotations

from pycompat.api import json_body
from pycompat.api.openai import stored
from pycompat.api.openai.errors import missing
from pycompat.api.openai.protocol import CHAT_UPDATE, Fields
from pycompat.api.render import json_response
from pycompat.http.messages import Request, Response
from pycompat.state.store import ASC, CHAT_COMPLETION, NotFound, Record, Store

LABEL = "chat completion"


def _store(state: Store | None, request: Request) -> Store:
    """The store, or the 400 naming the route when the server keeps none."""
    return stored.require(state, f"{request.method} {request.path[:200]}")


def _served(record: Record) -> dict:
    return {**record.body, "metadata": record.metadata}


async def _get(state: Store, completion_id: str) -> Record:
    record = await state.get(CHAT_COMPLETION, completion_id)
    if record is None:
        raise stored.not_found(LABEL, completion_id)
    return record


async def list_completions(state: Store | None, request: Request) -> Response:
    store = _store(state, request)
    query = stored.ListQuery(request, default_order=ASC, extra=("model",), metadata_filters=True)
    try:
        page = await store.list(CHAT_COMPLETION, model=query.extra.get("model"), metadata=query.metadata,
                                after=query.after, limit=query.limit, order=query.order)
    except NotFound:
        raise stored.not_found(LABEL, query.after, param="after") from None
    return json_response(stored.list_body(page, [_served(r) for r in page.data]))


async def retrieve(state: Store | None, request: Request, completion_id: str) -> Response:
    return json_response(_served(await _get(_store(state, request), completion_id)))


async def update(state: Store | None, request: Request, completion_id: str) -> Response:
    """Replaces the metadata (the only thing OpenAI lets a client change)."""
    store = _store(state, request)
    body = await json_body.parse_object(request.body)
    fields = Fields(body, CHAT_UPDATE)
    if "metadata" not in body:  # required, though null is allowed (it clears the metadata)
        raise missing("metadata")
    record = await store.update_metadata(CHAT_COMPLETION, completion_id, fields.get("metadata") or {})
    if record is None:
        raise stored.not_found(LABEL, completion_id)
    return json_response(_served(record))


async def delete(state: Store | None, request: Request, completion_id: str) -> Response:
    if not await _store(state, request).delete(CHAT_COMPLETION, completion_id):
        raise stored.not_found(LABEL, completion_id)
    return json_response({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})


async def messages(state: Store | None, request: Request, completion_id: str) -> Response:
    store = _store(state, request)
    query = stored.ListQuery(request, default_order=ASC)
    await _get(store, completion_id)  # items() would list any record's: this one must be a chat completion
    try:
        page = await store.items(completion_id, after=query.after, limit=query.limit, order=query.order)
    except NotFound:  # the cursor, or the completion itself if it was deleted since
        if query.after is None or await store.get(CHAT_COMPLETION, completion_id) is None:
            raise stored.not_found(LABEL, completion_id) from None
        raise stored.not_found("message", query.after, param="after") from None
    return json_response(stored.list_body(page, [item.body for item in page.data]))
