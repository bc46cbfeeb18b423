"""The hand-off between the engine and request tasks (engine/outbox.py): the
engine waits for the readers it woke, but not past the timeout, and not again
for a reader that is stuck."""

from __future__ import annotations

import trio
import trio.testing

from pycompat.engine.outbox import Handoff, Outbox


async def reader(outbox: Outbox, got: list, work: float = 0.0) -> None:
    while True:
        got.append(await outbox.get())
        await trio.sleep(work)


async def test_the_engine_waits_until_woken_readers_come_back():
    handoff = Handoff()
    boxes, got = [Outbox(handoff) for _ in range(3)], [[] for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for box, g in zip(boxes, got):
            nursery.start_soon(reader, box, g, 0.001)
        await trio.testing.wait_all_tasks_blocked()
        for i, box in enumerate(boxes):
            box.put(i)
        start = trio.current_time()
        await handoff.wait(timeout=10)
        assert got == [[0], [1], [2]]
        assert trio.current_time() - start < 1
        nursery.cancel_scope.cancel()


async def test_a_stuck_reader_costs_one_timeout_then_is_not_waited_for(autojump_clock):
    handoff = Handoff()
    stuck, got = Outbox(handoff), []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, stuck, got, 1000)  # takes "forever" with each event
        await trio.testing.wait_all_tasks_blocked()
        stuck.put("first")
        start = trio.current_time()
        await handoff.wait(timeout=0.05)
        assert got == ["first"] and trio.current_time() - start == 0.05
        stuck.put("second")  # it is not waiting: nothing to wait for
        start = trio.current_time()
        await handoff.wait(timeout=0.05)
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()


async def test_a_reader_that_leaves_is_not_waited_for(autojump_clock):
    handoff = Handoff()
    box, got = Outbox(handoff), []

    async def reads_once_then_leaves():
        got.append(await box.get())
        box.leave()  # as a Generation does when its client goes away
        await trio.sleep(1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads_once_then_leaves)
        await trio.testing.wait_all_tasks_blocked()
        box.put(1)
        start = trio.current_time()
        await handoff.wait(timeout=1000)
        assert trio.current_time() == start and got == [1]
        box.put(2)  # dropped: nobody reads
        await handoff.wait(timeout=1000)
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()
