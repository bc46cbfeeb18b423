"""Scheduling policy: which sequences run in the next step, and how much of each.

Pure bookkeeping over sequences and cache blocks: nothing here runs the
kernel, waits, or knows about requests' text, so every rule is testable with
plain calls (tests/test_scheduler.py).

The rules:
- A step computes at most ``step_tokens`` tokens: first one token for every
  decoding sequence, then chunks of prompts (those already admitted, then new
  ones from the queue), so a long prompt is computed over several steps while
  every stream keeps moving.
- A sequence is admitted only when the cache can hold everything it may need
  (its prompt plus its most new tokens), counting blocks promised to running
  sequences, so a running sequence never runs out of blocks. The prefix cache
  gives it the full blocks it shares with earlier prompts, unless it scores its
  prompt (every prompt token's logits are needed). First come, first served:
  the queue's head blocks those behind it.
- A request's sequences are queued together, and the queue's limit counts
  requests (groups).
- The choices of one prompt (``n``) fork: the first computes the prompt, the
  others wait until it has, then take its full blocks (shared, as the prefix
  cache shares them) and compute only the rest, at least the last token, whose
  logits each samples its own first token from.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from pycompat.engine.blocks import ROOT, BlockManager
from pycompat.engine.sequence import Sequence, SequenceGroup, Status


@dataclass(slots=True)
class Chunk:
    """One sequence's part of a step."""

    seq: Sequence
    n_tokens: int  # its next tokens to compute: seq.tokens[seq.computed : seq.computed + n_tokens]
    samples: bool  # they end what is known of it: the step picks its next token


class Scheduler:
    def __init__(self, blocks: BlockManager, step_tokens: int, max_queue: int):
        self.blocks, self.step_tokens, self.max_queue = blocks, step_tokens, max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._queued: dict[SequenceGroup, int] = {}  # group -> its sequences still waiting
        self._reserved = 0  # blocks promised to running sequences, not yet allocated

    # --- the queue ---

    @property
    def queued_requests(self) -> int:
        return len(self._queued)

    def has_room(self) -> bool:
        return len(self._queued) < self.max_queue

    def add(self, group: SequenceGroup) -> None:
        """Queues a request's sequences (the caller checked ``has_room``)."""
        now = time.monotonic()
        for seq in group.sequences:
            seq.group, seq.status, seq.queued_at = group, Status.WAITING, now
            self.waiting.append(seq)
        self._queued[group] = len(group.sequences)

    # --- a step ---

    def plan(self) -> list[Chunk]:
        """This step's work, after dropping cancelled sequences; empty when there is none."""
        for seq in [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]:
            self.finish(seq)
        budget, chunks = self.step_tokens, []

        def add(seq: Sequence) -> None:
            nonlocal budget
            n = min(seq.pending, budget)
            self._grow(seq, seq.computed + n)
            chunks.append(Chunk(seq, n, n == seq.pending))
            budget -= n

        decoding = [s for s in self.running if s.pending == 1]
        prefilling = [s for s in self.running if s.pending > 1]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            add(seq)
        while self.waiting and budget > 0 and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            self._unqueue(seq)
            seq.status, seq.admitted_at = Status.PREFILLING, time.monotonic()
            self.running.append(seq)
            add(seq)
        return chunks

    def computed(self, chunk: Chunk) -> None:
        """Records that a chunk's tokens are in the cache: blocks they filled become
        findable by their contents (prefix caching)."""
        seq, bs = chunk.seq, self.blocks.block_size
        seq.computed += chunk.n_tokens
        while (seq.sealed + 1) * bs <= seq.computed:
            i = seq.sealed
            seq.parent = self.blocks.seal(seq.blocks[i], seq.parent, seq.tokens[i * bs : (i + 1) * bs])
            seq.sealed += 1
        if chunk.samples:
            seq.status = Status.DECODING

    def finish(self, seq: Sequence) -> None:
        """Takes a sequence out, whatever its status: its blocks go back (full
        ones stay findable), its promise is withdrawn. Idempotent."""
        if seq.status is Status.FINISHED:
            return
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.release(seq.blocks)
            self._reserved -= seq.reserved
            seq.blocks, seq.reserved = [], 0
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self._unqueue(seq)
        seq.status = Status.FINISHED

    def reset(self) -> list[Sequence]:
        """Forgets every sequence and every block (after a failure that may have
        left the bookkeeping wrong); returns the sequences that were in it."""
        dropped = self.running + list(self.waiting)
        for seq in dropped:
            seq.status = Status.FINISHED
        self.running, self.waiting, self._queued, self._reserved = [], deque(), {}, 0
        b = self.blocks
        self.blocks = BlockManager(b.n_blocks, b.block_size, b.prefix_caching)
        return dropped

    # --- admission and blocks ---

    def _admit(self, seq: Sequence) -> bool:
        """Gives the sequence its cached prefix and a promise of every block it may
        need, if the cache has them; False leaves it waiting."""
        bs = self.blocks.block_size
        source = seq.fork_of
        if source is not None and source.status in (Status.WAITING, Status.PREFILLING):
            return False  # its prompt is not in the cache yet
        if source is not None and source.status is Status.DECODING:
            # The prompt's full blocks, as the other choice holds them (at least the
            # last prompt token is computed again: its logits give the first new token).
            found = source.blocks[: (seq.prompt_len - 1) // bs]
        elif seq.scores_prompt:
            found = []  # every prompt token's logits are needed: all of it is computed
        else:
            found = self.blocks.match(seq.tokens, seq.prompt_len - 1)
        need = math.ceil((seq.prompt_len + seq.budget) / bs) - len(found)
        if self.blocks.available - self.blocks.newly_referenced(found) - self._reserved < need:
            return False
        self.blocks.take(found)
        seq.blocks = found
        seq.computed = seq.cached_tokens = len(found) * bs
        seq.sealed = len(found)
        seq.parent = self.blocks.identity(found[-1]) if found else ROOT
        seq.reserved = need
        self._reserved += need
        return True

    def _grow(self, seq: Sequence, length: int) -> None:
        """Allocates blocks (promised at admission) until the table covers ``length`` positions."""
        while len(seq.blocks) * self.blocks.block_size < length:
            seq.blocks.append(self.blocks.allocate())
            seq.reserved -= 1
            self._reserved -= 1

    def _unqueue(self, seq: Sequence) -> None:
        group = seq.group
        left = self._queued[group] - 1
        if left:
            self._queued[group] = left
        else:
            del self._queued[group]
