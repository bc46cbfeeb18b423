"""The embedding service: what every dialect's embeddings route shares, in no
dialect's words or shapes: inputs to token ids, each within the model's
context, embedded through the model's Embedder (which batches them with
other requests' inputs), optionally cut to fewer dimensions.

Refusals are ServiceErrors (errors.py) that each dialect words itself.
"""

from __future__ import annotations

import numpy as np
import trio

from pycompat.api import exchange
from pycompat.api.errors import Busy, InputTooLong
from pycompat.api.registry import ServedModel
from pycompat.engine.embedder import EmbedderQueueFull

# Texts up to this many characters in all are tokenized on the event loop: for a
# sentence or two that takes tens of microseconds, less than a hop to a worker thread.
INLINE_TOKENIZE_CHARS = 2000


async def token_ids(served: ServedModel, inputs: list[str | list[int]], field: str, single: bool,
                    limit: int | None = None, truncate: bool = False) -> list[list[int]]:
    """Each input's token ids as the model embeds them (special tokens
    included), at most ``limit`` (default: the model's context) each: one
    longer is cut to fit, its special tokens kept, when ``truncate``, else
    refused (InputTooLong names the first). Texts are tokenized all in one go,
    off the event loop unless they are short. ``single``: the field held one
    input (an error then names the field, not an index)."""
    embedding = served.embedding
    tokenizer = embedding.tokenizer
    limit = embedding.context_length if limit is None else min(limit, embedding.context_length)

    def encode_all() -> list[list[int]]:
        return [tokenizer.encode(x) if isinstance(x, str) else tokenizer.wrap(list(x)) for x in inputs]

    text_chars = sum(len(x) for x in inputs if isinstance(x, str))
    ids = await trio.to_thread.run_sync(encode_all) if text_chars > INLINE_TOKENIZE_CHARS else encode_all()
    for index, one in enumerate(ids):
        if len(one) <= limit:
            continue
        if not truncate:
            raise InputTooLong(field, None if single else index, len(one), limit)
        ids[index] = _cut(tokenizer, one, limit)
    return ids


def _cut(tokenizer, ids: list[int], limit: int) -> list[int]:
    """``ids`` (an input's, special tokens around it) cut to ``limit`` tokens, the special ones kept."""
    marker = -1
    wrapped = tokenizer.wrap([marker])
    before, after = wrapped.index(marker), len(wrapped) - wrapped.index(marker) - 1
    inner = ids[before:len(ids) - after]
    return tokenizer.wrap(inner[:limit - before - after])


async def embed(served: ServedModel, ids: list[list[int]], dimensions: int | None = None) -> np.ndarray:
    """One float32 row per input. With ``dimensions``, each row is cut to its
    first ``dimensions`` values and scaled back to unit length (the caller
    checks it is at most the model's). Raises Busy when the queue is full."""
    try:
        rows = await served.embedding.embedder.embed(ids)
    except EmbedderQueueFull:
        raise Busy() from None
    exchange.note_embedded(sum(len(one) for one in ids))
    if dimensions is not None and dimensions < rows.shape[1]:
        rows = rows[:, :dimensions]
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.where(norms > 0, norms, 1)
    return rows.astype(np.float32, copy=False)
