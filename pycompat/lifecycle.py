"""Where the server is in its life, shared by the CLI, the HTTP server and the App.

A server starts ``loading`` (listening, so that an orchestrator can poll
``/health``, while its models load), becomes ``ready``, and on SIGTERM or
SIGINT starts ``draining``: it accepts no new connections, refuses new
requests with a 503, and waits for the running ones to finish. At the drain's
deadline the running ones are cut: each waits inside a ``cuttable`` scope,
which is cancelled, and the layer that opened it turns that into an error
the client can read (an error event ends a stream; it is never a cut socket).

This module knows nothing of HTTP or of the API: the server counts requests
with ``request``; the App asks ``phase`` and opens ``cuttable`` scopes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

LOADING, READY, DRAINING = "loading", "ready", "draining"
# After the deadline has cut the running requests, how long their error events
# get to reach the clients before the connections are closed regardless.
CUT_GRACE_SECONDS = 5.0


class Lifecycle:
    def __init__(self, phase: str = LOADING):
        self.phase = phase
        self.draining = trio.Event()  # set when the drain starts: the server stops accepting
        self.running = 0  # requests being answered (head read, response not yet written in full)
        self._idle: trio.Event | None = None  # set when ``running`` falls to 0
        self._cut = False
        self._cuttable: set[trio.CancelScope] = set()

    def ready(self) -> None:
        """The models are loaded (a drain that started meanwhile stays a drain)."""
        if self.phase == LOADING:
            self.phase = READY

    @contextmanager
    def request(self) -> Iterator[None]:
        """Counts one request for as long as it is being answered."""
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self.running == 0 and self._idle is not None:
                self._idle.set()

    @contextmanager
    def cuttable(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that the drain's deadline cancels (at once, if it has
        passed already). Its owner checks ``cancelled_caught`` and answers with
        an error; it must not hold the scope across a ``yield``."""
        with trio.CancelScope() as scope:
            if self._cut:
                scope.cancel()
            self._cuttable.add(scope)
            try:
                yield scope
            finally:
                self._cuttable.discard(scope)

    async def wait_idle(self) -> None:
        while self.running:
            self._idle = trio.Event()
            await self._idle.wait()

    def cut(self) -> None:
        """Cancels every cuttable scope, now and from now on."""
        self._cut = True
        for scope in list(self._cuttable):
            scope.cancel()

    async def drain(self, timeout: float, grace: float = CUT_GRACE_SECONDS) -> int:
        """Stops taking work and waits up to ``timeout`` seconds for the running
        requests; then cuts the rest and gives their last words ``grace`` seconds
        to go out. Returns how many were cut (0: every one finished on its own)."""
        self.phase = DRAINING
        self.draining.set()
        with trio.move_on_after(timeout):
            await self.wait_idle()
        cut = self.running
        if cut:
            self.cut()
            with trio.move_on_after(grace):
                await self.wait_idle()
        return cut
