"""Warming the prefix cache after a start: the prefix cache lives in memory,
so after a restart the first continuation of a stored conversation would
compute its whole history again. At start-up the most recently created
conversations and response chains have their histories computed once (in the
engine like any request, one at a time, a token generated and dropped), so
that a client continuing one finds its earlier turns in the cache
(``cached_tokens``), as before the restart.

The warmed text is what a later turn begins with when it brings no
instructions and offers no tools (pycompat.api.chat.history_prompt); a turn that does
shares less of it. Nothing here can fail the server: a history that cannot be
warmed (its model gone, too long) is skipped.
"""

from __future__ import annotations

import logging
import time

from pycompat.api import chat as chat_service
from pycompat.api import generation
from pycompat.api.errors import APIError, ServiceError
from pycompat.api.openai import items, responses
from pycompat.api.openai.errors import as_api_error
from pycompat.api.openai.protocol import sampling_defaults
from pycompat.api.registry import Registry
from pycompat.state.store import CONVERSATION, DESC, RESPONSE, Store

log = logging.getLogger(__name__)


async def warm_recent(registry: Registry, state: Store, count: int) -> None:
    """Computes the histories of the ``count`` most recent conversations and
    response chains. Never raises: it runs beside the server, which must not end with it."""
    if not any(m.engine is not None for m in registry.models):
        return
    started = time.perf_counter()
    warmed = tokens = 0
    try:
        histories = await _recent_histories(state, count)
    except Exception:
        log.exception("state: reading the recent histories to warm the prefix cache failed; not warming it")
        return
    for model_id, history in histories:
        try:
            tokens += await _warm(registry, model_id, history)
            warmed += 1
        except (APIError, ServiceError) as e:  # a model no longer served, a history over the context, a full queue
            log.debug("state: not warming a history: %s", as_api_error(e).message)
        except Exception:
            log.exception("state: warming a history failed; going on without it")
    if warmed:
        log.info("state: warmed the prefix cache with %d recent histories (%d tokens) in %.1f s",
                 warmed, tokens, time.perf_counter() - started)


async def _recent_histories(state: Store, count: int) -> list[tuple[str | None, list[dict]]]:
    """(model id or None, items) of the newest conversations and chain heads, newest first."""
    found = []

    async def add(updated_at, model_id, previous_id, conversation_id) -> None:
        try:
            found.append((updated_at, model_id, await responses.history(state, previous_id, conversation_id)))
        except APIError:  # deleted or expired since it was listed
            pass

    for record in (await state.list(CONVERSATION, order=DESC, limit=count)).data:
        await add(record.updated_at, None, None, record.id)
    recent = (await state.list(RESPONSE, order=DESC, limit=count)).data
    continued = {r.parent for r in recent}
    for record in recent:
        # A chain's head only (its ancestors are in its history), and not a conversation's turn (warmed with it).
        if record.id not in continued and record.body.get("conversation") is None:
            await add(record.updated_at, record.model, record.id, None)
    found.sort(key=lambda entry: entry[0] or 0, reverse=True)
    return [(model, history) for _, model, history in found[:count] if history]


async def _warm(registry: Registry, model_id: str | None, history: list[dict]) -> int:
    """Computes one history; returns its tokens."""
    served = registry.generator(model_id) if model_id in registry.all_ids() else _first_text_model(registry)
    text = chat_service.history_prompt(served, items.to_messages(history))
    generation.check_prompt_bytes(served, len(text.encode("utf-8")), 1, "history")
    prompt = await generation.tokenize(served, text)
    opts = generation.sampling_options(served, 1, {}, sampling_defaults())
    await generation.start(served, [prompt], opts, "history").run_to_end()
    return len(prompt)


def _first_text_model(registry: Registry):
    return next(m for m in registry.models if m.engine is not None)
