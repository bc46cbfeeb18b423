"""How a sequence's events reach its request's task, and how the engine knows
they were taken before it starts the next step.

Why the engine waits at all: a step's kernel call keeps every core busy. Work
a request's task does meanwhile (serializing a chunk, writing it to its
socket) preempts a kernel thread, and the other kernel threads then wait for
it at the next barrier. So after delivering a step's events, the engine gives
the tasks it woke the cores first: it waits until each of them has come back
for more and found nothing (it then has sent what it had), or has gone, for
at most ``HANDOFF_TIMEOUT``. A task that is slow or stuck (a client that does
not read) costs the others that wait once, not at every step: only tasks
woken by this step's events are waited for.
"""

from __future__ import annotations

from collections import deque

import trio

# The most one step waits for the tasks it woke. Sending a chunk takes tens
# of microseconds, so even 64 streams come back well within this.
HANDOFF_TIMEOUT = 0.05


class Handoff:
    """The engine's side: the tasks woken since the last wait."""

    def __init__(self) -> None:
        self._busy: set[Outbox] = set()
        self._all_back: trio.Event | None = None

    def woke(self, outbox: Outbox) -> None:
        self._busy.add(outbox)

    def back(self, outbox: Outbox) -> None:
        self._busy.discard(outbox)
        if not self._busy and self._all_back is not None:
            self._all_back.set()

    async def wait(self, timeout: float = HANDOFF_TIMEOUT) -> None:
        """Returns when every task woken since the last call has come back or gone,
        or after ``timeout``; either way the next step starts afresh."""
        if self._busy:
            self._all_back = trio.Event()
            with trio.move_on_after(timeout):
                await self._all_back.wait()
        self._busy.clear()
        self._all_back = None


class Outbox:
    """One sequence's events, in order, from the engine (``put``) to one consumer
    (``get``). Unbounded: the engine never waits on a consumer."""

    def __init__(self, handoff: Handoff):
        self._handoff = handoff
        self._events: deque = deque()
        self._waiter: trio.Event | None = None
        self._gone = False

    def put(self, event) -> None:
        """The engine's side; wakes the consumer if it waits."""
        if self._gone:
            return
        self._events.append(event)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None
            self._handoff.woke(self)

    async def get(self):
        """The next event, waiting for one if need be."""
        while not self._events:
            self._handoff.back(self)  # it has handled everything it was given
            self._waiter = trio.Event()
            await self._waiter.wait()
        return self._events.popleft()

    def take(self):
        """The next event if there is one, else None (never waits)."""
        return self._events.popleft() if self._events else None

    @staticmethod
    async def wait_any(outboxes: list[Outbox]) -> None:
        """Waits until any of ``outboxes`` has an event (one reader of several)."""
        if any(o._events for o in outboxes):
            return
        woken = trio.Event()
        for o in outboxes:
            o._handoff.back(o)
            o._waiter = woken
        try:
            await woken.wait()
        finally:
            for o in outboxes:
                if o._waiter is woken:
                    o._waiter = None

    def leave(self) -> None:
        """The consumer stops reading (finished, or its client went away)."""
        self._gone = True
        self._events.clear()
        self._waiter = None
        self._handoff.back(self)
