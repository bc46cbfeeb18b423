"""Per-client limits: how often (``--rate-limit``, requests per minute) and how
many at once (``--max-concurrent-per-key``) one API key may ask.

A client is its API key when keys are set, else its address (without the
port: one machine opening many connections is one client). Each gets:

- a token bucket of ``requests_per_minute`` requests, refilled continuously at
  that rate: a burst of a minute's worth at once, then one request every
  60/N seconds. A refused request takes nothing from the bucket, and is told
  in ``Retry-After`` how many seconds until the next token;
- a count of its requests in flight: a request holds its place until its
  answer is ready (a stream until its last event is sent or its client
  leaves: the App releases it in the response's ``on_close``). A refused one is told to retry after 1 second, since nothing says
  when a running request ends.

Both refusals are OpenAI's 429 ``rate_limit_exceeded`` with ``Retry-After``.
The clock is injectable so that tests step time themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pycompat.api.errors import APIError

# Clients remembered before the ones at rest (full bucket, nothing in flight) are forgotten;
# without keys every address is a client, so their number has no other bound.
PRUNE_AT_LEAST = 1024


@dataclass
class _Client:
    tokens: float
    updated: float  # when ``tokens`` was last brought up to date
    in_flight: int = 0


class Admission:
    """One admitted request's place; ``release`` (idempotent) gives it back."""

    def __init__(self, client: _Client | None = None):
        self._client = client

    def release(self) -> None:
        if self._client is not None:
            self._client.in_flight -= 1
            self._client = None


class ClientLimits:
    """Admits or refuses each client's requests.

    Args:
        requests_per_minute: the rate each client may keep up (None: no rate limit).
        max_concurrent: requests one client may have in flight (None: no bound).
        clock: seconds from any fixed point (time.monotonic; tests pass their own).
    """

    def __init__(self, requests_per_minute: int | None = None, max_concurrent: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if requests_per_minute is not None and requests_per_minute < 1 or max_concurrent is not None and max_concurrent < 1:
            raise ValueError("limits must be at least 1 (or None for no limit)")
        self.requests_per_minute = requests_per_minute
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._prune_at = PRUNE_AT_LEAST

    @property
    def active(self) -> bool:
        return self.requests_per_minute is not None or self.max_concurrent is not None

    def admit(self, who: str, per: str = "API key") -> Admission:
        """A place for one request of client ``who``, or the 429 that refuses it
        (``per`` names what a client is, for the message)."""
        if not self.active:
            return Admission()
        now = self._clock()
        client = self._client(who, now)
        if self.max_concurrent is not None and client.in_flight >= self.max_concurrent:
            raise _too_many(f"Too many requests in flight: at most {self.max_concurrent} at once are allowed per "
                            f"{per}. Please retry once one of them has finished.", retry_after=1)
        if self.requests_per_minute is not None:
            self._refill(client, now)
            if client.tokens < 1:
                wait = (1 - client.tokens) * 60 / self.requests_per_minute
                raise _too_many(f"Rate limit reached: at most {self.requests_per_minute} requests per minute are "
                                f"allowed per {per}. Please try again in {wait:.3g}s.", retry_after=math.ceil(wait))
            client.tokens -= 1
        client.in_flight += 1
        return Admission(client)

    def _client(self, who: str, now: float) -> _Client:
        client = self._clients.get(who)
        if client is None:
            if len(self._clients) >= self._prune_at:
                self._prune(now)
            client = self._clients[who] = _Client(tokens=float(self.requests_per_minute or 0), updated=now)
        return client

    def _refill(self, client: _Client, now: float) -> None:
        rate = self.requests_per_minute / 60
        client.tokens = min(float(self.requests_per_minute), client.tokens + (now - client.updated) * rate)
        client.updated = now

    def _prune(self, now: float) -> None:
        """Forgets clients at rest: a new entry for them would be the same."""
        for who, client in list(self._clients.items()):
            if client.in_flight == 0:
                if self.requests_per_minute is not None:
                    self._refill(client, now)
                if self.requests_per_minute is None or client.tokens >= self.requests_per_minute:
                    del self._clients[who]
        self._prune_at = max(PRUNE_AT_LEAST, 2 * len(self._clients))


def _too_many(message: str, retry_after: int) -> APIError:
    return APIError(429, message, code="rate_limit_exceeded", headers=[("retry-after", str(max(1, retry_after)))])
