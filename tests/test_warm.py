"""Warming the prefix cache at start runs beside the server: whatever goes
wrong in it (a history deleted while it is read, a store that fails) is
logged, never raised into the server's nursery, which it would end.
That it warms is shown end to end in test_state_durability.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from memory_store import MemoryStore
from pycompat.api.errors import APIError
from pycompat.api.openai import responses, warm
from pycompat.state.store import CONVERSATION, RESPONSE, Record

REGISTRY = SimpleNamespace(models=[SimpleNamespace(engine=object(), ids=["m"])], all_ids=lambda: ["m"])


async def stored() -> MemoryStore:
    store = MemoryStore()
    await store.save(Record(CONVERSATION, "conv_1", 0, {"id": "conv_1"}))
    await store.save(Record(RESPONSE, "resp_1", 0, {"id": "resp_1", "output": []}))
    return store


async def test_a_history_gone_since_it_was_listed_is_skipped(monkeypatch):
    async def conversation_gone(state, previous_id, conversation_id):
        if conversation_id is not None:
            raise APIError(404, "deleted meanwhile")
        return await _items()

    warmed = []

    async def record(registry, model_id, history):
        warmed.append(history)
        return 1

    monkeypatch.setattr(responses, "history", conversation_gone)
    monkeypatch.setattr(warm, "_warm", record)
    await warm.warm_recent(REGISTRY, await stored(), 8)
    assert warmed == [await _items()]  # the chain is still warmed


async def test_a_failing_store_is_logged_not_raised(monkeypatch, caplog):
    async def broken(state, previous_id, conversation_id):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(responses, "history", broken)
    with caplog.at_level(logging.ERROR):
        await warm.warm_recent(REGISTRY, await stored(), 8)
    assert "not warming it" in caplog.text and "disk on fire" in caplog.text


async def test_a_history_that_cannot_be_warmed_is_skipped(monkeypatch, caplog):
    async def fails(registry, model_id, history):
        raise RuntimeError("no such thing")

    monkeypatch.setattr(warm, "_warm", fails)
    store = await stored()
    await store.add_items("conv_1", [])
    monkeypatch.setattr(responses, "history", lambda *a: _items())
    with caplog.at_level(logging.ERROR):
        await warm.warm_recent(REGISTRY, store, 8)
    assert caplog.text.count("warming a history failed") == 2  # the conversation and the chain, each on its own


async def _items():
    return [{"type": "message", "id": "msg_1", "status": "completed", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
