"""The embedding batcher (engine/embedder.py) on a fake kernel: inputs of
concurrent requests share kernel calls within the budget, each request gets
its own rows in order, and a cancelled, refused or failed request stays its own."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from pycompat.engine.embedder import Embedder, EmbedderConfig, EmbedderQueueFull, EmbeddingFailed

DIM = 3


class FakeKernel:
    """Embeds an input as (first id, length, sum of ids); records each call's batch."""

    dim = DIM
    max_seq_len = 64

    def __init__(self, fail_on: int | None = None):
        self.calls: list[list[list[int]]] = []
        self.fail_on = fail_on  # a token id whose presence fails the call

    def embed(self, batch: list[list[int]]) -> bytes:
        self.calls.append(batch)
        if self.fail_on is not None and any(self.fail_on in ids for ids in batch):
            raise RuntimeError("kernel failure")
        return np.array([[ids[0], len(ids), sum(ids)] for ids in batch], dtype="<f4").tobytes()


def expected(inputs: list[list[int]]) -> np.ndarray:
    return np.array([[ids[0], len(ids), sum(ids)] for ids in inputs], dtype=np.float32)


async def embed_all(embedder: Embedder, requests: list[list[list[int]]], background) -> list[np.ndarray]:
    """Sends the requests at once, all queued before the batcher starts (in ``background``); their rows."""
    results: list = [None] * len(requests)

    async def one(i: int) -> None:
        results[i] = await embedder.embed(requests[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(requests)):
            nursery.start_soon(one, i)
        await trio.testing.wait_all_tasks_blocked()
        background.start_soon(embedder.run)
    return results


async def test_concurrent_requests_share_one_kernel_call_and_get_their_own_rows(nursery):
    kernel = FakeKernel()
    embedder = Embedder(kernel)
    requests = [[[1, 2], [3]], [[4, 5, 6]], [[7], [8, 9], [10]]]
    results = await embed_all(embedder, requests, nursery)
    for got, inputs in zip(results, requests):
        np.testing.assert_array_equal(got, expected(inputs))
    assert len(kernel.calls) == 1 and len(kernel.calls[0]) == 6


@pytest.mark.parametrize("batch_tokens, batch_inputs", [(5, 100), (100, 2), (1, 1)])
async def test_batches_keep_to_the_budget_and_the_order(nursery, batch_tokens, batch_inputs):
    kernel = FakeKernel()
    embedder = Embedder(kernel, EmbedderConfig(batch_tokens=batch_tokens, batch_inputs=batch_inputs))
    requests = [[[i] * (1 + i % 3) for i in range(j, j + 4)] for j in range(0, 12, 4)]
    results = await embed_all(embedder, requests, nursery)
    for got, inputs in zip(results, requests):
        np.testing.assert_array_equal(got, expected(inputs))
    flat = [ids for call in kernel.calls for ids in call]
    assert sorted(flat) == sorted(ids for r in requests for ids in r)  # each input once
    for r in requests:  # a request's inputs in its order (requests sent together may start in any order)
        assert [ids for ids in flat if ids in r] == r
    for call in kernel.calls:
        assert len(call) <= batch_inputs
        assert len(call) == 1 or sum(map(len, call)) <= batch_tokens  # an input over the budget goes alone


async def test_a_full_queue_refuses_at_once_and_a_cancelled_request_leaves_it():
    embedder = Embedder(FakeKernel(), EmbedderConfig(max_queue=4))  # no batcher runs: inputs stay queued
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(embedder.embed, [[1], [2], [3]])
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(EmbedderQueueFull):
                await embedder.embed([[4], [5]])
            scope.cancel()
    embedder._take()  # the batcher's next look drops the cancelled request's inputs
    assert embedder.stats()["queued_inputs"] == 0


async def test_a_failed_batch_fails_its_requests_only(nursery):
    kernel = FakeKernel(fail_on=99)
    embedder = Embedder(kernel, EmbedderConfig(batch_inputs=1))
    nursery.start_soon(embedder.run)
    with pytest.raises(EmbeddingFailed):
        await embedder.embed([[99]])
    np.testing.assert_array_equal(await embedder.embed([[1, 2]]), expected([[1, 2]]))
