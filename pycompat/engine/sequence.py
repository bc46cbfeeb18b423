"""A sequence's state as the engine sees it, and the group of sequences one request makes.

A sequence moves through its statuses in one direction::

    WAITING -> PREFILLING -> DECODING -> FINISHED
       |            |                      ^
       +------------+----------------------+   (cancelled, failed, or an empty budget)

- WAITING: queued; holds no cache blocks and no promise of any.
- PREFILLING: admitted (its blocks promised); its prompt is computed over one
  or more steps, at most the step's token budget at a time.
- DECODING: every step computes its last chosen token and samples the next.
- FINISHED: its blocks are given back (full ones stay in the prefix cache).

Nothing here runs anything: the scheduler changes the statuses and the
engine delivers the text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pycompat.engine.blocks import ROOT


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One prompt and what has been generated after it."""

    tokens: list[int]  # the prompt, then each generated token once it is to be fed back
    prompt_len: int
    budget: int  # most tokens to generate
    sampler: Any  # the kernel's Sampler: the request's sampling fields and seeded generator
    group: SequenceGroup | None = None
    # Another choice of the same prompt (``n``): this one waits until that one's
    # prompt is in the cache, then shares its full blocks instead of computing them.
    fork_of: Sequence | None = None
    # Each prompt token is scored (its log-probability given those before it): the
    # whole prompt is computed, none of it taken from the prefix cache. Its forks
    # are not: they get its scores.
    scores_prompt: bool = False
    status: Status = Status.WAITING
    # The cache, as the scheduler keeps it.
    blocks: list[int] = field(default_factory=list)  # block table
    computed: int = 0  # positions in the cache
    cached_tokens: int = 0  # prompt tokens found in the prefix cache
    sealed: int = 0  # leading full blocks given an identity
    parent: int = ROOT  # identity of the last sealed block
    reserved: int = 0  # blocks it may still allocate
    # The output, as the engine keeps it.
    generated: int = 0
    cancelled: bool = False  # its request is gone: it leaves at the next step
    output: Any = None  # the engine's per-sequence output state (text, stop strings, outbox)
    # When it was queued and admitted (time.monotonic()), for the queue-wait metric.
    queued_at: float = 0.0
    admitted_at: float | None = None

    @property
    def pending(self) -> int:
        """Tokens known but not yet computed (the rest of the prompt, or the last chosen token)."""
        return len(self.tokens) - self.computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(eq=False)
class SequenceGroup:
    """The sequences of one request (one per prompt and choice).
    They are queued together, all or none, and the queue's limit counts groups."""

    request_id: int
    sequences: list[Sequence] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return sum(1 for s in self.sequences if s.status is Status.WAITING)
