"""The engine: one task on the event loop owns the model and runs every request.

Requests wait in a bounded queue. Each step, the scheduler builds one batch:
one new token for every running sequence that is generating, then chunks of
prompts (its own, then of requests it admits from the queue) up to a
per-step token budget, so that a long prompt is computed over several steps
while everyone else's stream keeps moving. The kernel runs the batch as one
forward pass in a worker thread (it releases the GIL), each sequence's
sampler picks its next token, and the tokens go to the requests' channels.
New requests join at the next step; finished and cancelled ones leave at
once and give their cache blocks back.

A request is admitted only when the cache can hold everything it may need
(prompt plus its most new tokens), counting blocks promised to running
sequences, so a running sequence never runs out of blocks. A request with
several prompts is queued as one unit: all of its sequences, or none.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import trio
import trio.testing

from pycompat import _kernel
from pycompat.engine.blocks import ROOT, BlockManager
from pycompat.engine.config import EngineConfig
from pycompat.loading.load import LoadedModel

log = logging.getLogger(__name__)

MIB = 1 << 20


class ContextOverflow(Exception):
    """The prompt plus the requested completion do not fit the context."""

    def __init__(self, prompt_tokens: int, max_tokens: int | None, context_length: int):
        self.prompt_tokens, self.max_tokens, self.context_length = prompt_tokens, max_tokens, context_length
        super().__init__(f"{prompt_tokens} prompt tokens + {max_tokens} > {context_length}")


class QueueFull(Exception):
    """Too many requests wait already."""


class CacheTooSmall(ValueError):
    """The cache budget cannot hold one full context."""


@dataclass
class Ended:
    """The engine's last message on a request's channel."""

    reason: str  # "stop", "length", or "error"
    error: str | None = None


@dataclass(eq=False)
class Sequence:
    """A request as the scheduler sees it."""

    tokens: list[int]  # the prompt, then each generated token once it is to be fed back
    prompt_len: int
    budget: int  # most tokens to generate
    sampler: _kernel.Sampler
    out: trio.MemorySendChannel
    blocks: list[int] = field(default_factory=list)  # block table
    computed: int = 0  # positions in the cache
    cached_tokens: int = 0  # prompt tokens found in the prefix cache
    sealed: int = 0  # leading full blocks given an identity
    parent: int = ROOT  # identity of the last sealed block
    request: int = 0  # the request it belongs to (several prompts make several sequences)
    generated: int = 0
    reserved: int = 0  # blocks it may still allocate
    cancelled: bool = False


class Engine:
    def __init__(self, model: LoadedModel, config: EngineConfig | None = None):
        self.model = model
        self.config = config = config or EngineConfig()
        kernel = model.kernel
        bs = config.block_size
        per_block = kernel.new_cache(1, bs).bytes_per_block
        n_blocks = int(config.kv_cache_mb * MIB) // per_block
        if n_blocks * bs < model.context_length:
            raise CacheTooSmall(
                f"a KV cache of {config.kv_cache_mb:g} MiB holds {n_blocks * bs} tokens, less than one "
                f"context of {model.context_length}: raise --kv-cache-mb to at least "
                f"{math.ceil(math.ceil(model.context_length / bs) * per_block / MIB)} or lower --context-length"
            )
        self.cache = kernel.new_cache(n_blocks, bs)
        self.blocks = BlockManager(n_blocks, bs, config.prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self._waiting_requests: dict[int, int] = {}  # request -> its sequences in the queue
        self._last_request = 0
        self.running: list[Sequence] = []
        self._reserved = 0  # blocks promised to running sequences, not yet allocated
        self._work = trio.Event()  # set when there may be something to do

    # --- what requests call ---

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> None:
        """Raises ContextOverflow unless the prompt leaves room for at least one token
        (and for all of ``max_tokens`` when given)."""
        need = prompt_tokens + (max_tokens if max_tokens is not None else 1)
        if need > self.model.context_length:
            raise ContextOverflow(prompt_tokens, max_tokens, self.model.context_length)

    def check_queue(self) -> None:
        """Raises QueueFull when a new request would have no place in the queue."""
        if len(self._waiting_requests) >= self.config.max_queue:
            raise QueueFull()

    def submit(self, prompts: list[list[int]], max_tokens: int | None,
               samplers: list[_kernel.Sampler]) -> list[tuple[Sequence, trio.MemoryReceiveChannel]]:
        """Queues one request's prompts as one unit (all, or none: QueueFull,
        ContextOverflow); each sequence's tokens, then an Ended, arrive on its channel."""
        self.check_queue()
        for prompt in prompts:
            self.check_fits(len(prompt), max_tokens)
        self._last_request += 1
        submitted = []
        for prompt, sampler in zip(prompts, samplers, strict=True):
            budget = self.model.context_length - len(prompt)
            if max_tokens is not None:
                budget = min(budget, max_tokens)
            send, receive = trio.open_memory_channel(math.inf)
            seq = Sequence(list(prompt), len(prompt), budget, sampler, send, request=self._last_request)
            self.waiting.append(seq)
            submitted.append((seq, receive))
        self._waiting_requests[self._last_request] = len(prompts)
        self._work.set()
        return submitted

    def cancel(self, seq: Sequence) -> None:
        """The request is gone: the sequence leaves at the next step."""
        seq.cancelled = True
        self._work.set()

    def stats(self) -> dict:
        b, per_block = self.blocks, self.cache.bytes_per_block
        return {
            "running": len(self.running),
            "waiting": len(self._waiting_requests),
            "kv_cache": {
                "budget_mb": round(b.n_blocks * per_block / MIB, 1),
                "used_mb": round(b.used * per_block / MIB, 1),
                "block_size": b.block_size,
                "blocks_total": b.n_blocks,
                "blocks_used": b.used,
                "blocks_cached": b.cached,
                "blocks_free": b.free,
                "prefix_caching": b.prefix_caching,
            },
        }

    # --- the loop ---

    async def run(self) -> None:
        """Runs steps while there is work; sleeps otherwise. Start it in the server's nursery."""
        while True:
            try:
                await self._step()
            except Exception:  # a bug in the engine itself: fail every request, start afresh
                log.exception("engine failure: failing every request and clearing the KV cache")
                self._fail_all("The engine failed while running this request.")

    async def _step(self) -> None:
        self._drop_cancelled()
        batch = self._schedule()
        if not batch:
            self._work = trio.Event()
            await self._work.wait()
            return
        entries = [
            (seq.blocks, seq.computed, seq.tokens[seq.computed : seq.computed + n], seq.sampler if last else None)
            for seq, n, last in batch
        ]
        try:
            chosen = await trio.to_thread.run_sync(self.model.kernel.step_paged, self.cache, entries)
        except Exception as e:  # the kernel refused the batch (a bug): fail its requests, keep serving
            log.exception("step failed")
            for seq, _, _ in batch:
                self._finish(seq, "error", str(e))
            return
        for (seq, n, _), token in zip(batch, chosen):
            self._advance(seq, n, token)
        # Let every request task turn its new token into text and send it
        # before the next step starts: the kernel's threads then have the
        # cores to themselves. (Running that Python work during the step
        # preempted them, and each preemption left the other kernel thread
        # waiting for it.)
        await trio.testing.wait_all_tasks_blocked()

    def _fail_all(self, message: str) -> None:
        for seq in self.running + list(self.waiting):
            try:
                seq.out.send_nowait(Ended("error", message))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            seq.out.close()
        self.running.clear()
        self.waiting.clear()
        self._waiting_requests.clear()
        cfg = self.config
        self.blocks = BlockManager(self.blocks.n_blocks, cfg.block_size, cfg.prefix_caching)
        self._reserved = 0

    def _schedule(self) -> list[tuple[Sequence, int, bool]]:
        """This step's batch: (sequence, tokens to compute, whether they end its input)."""
        budget, batch = self.config.step_tokens, []

        def add(seq: Sequence) -> None:
            nonlocal budget
            n = min(len(seq.tokens) - seq.computed, budget)
            self._grow(seq, seq.computed + n)
            batch.append((seq, n, seq.computed + n == len(seq.tokens)))
            budget -= n

        generating = [s for s in self.running if len(s.tokens) - s.computed == 1]
        prefilling = [s for s in self.running if len(s.tokens) - s.computed > 1]
        for seq in generating + prefilling:
            if budget == 0:
                break
            add(seq)
        while self.waiting and budget > 0 and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            self._unqueue(seq)
            self.running.append(seq)
            add(seq)
        return batch

    def _admit(self, seq: Sequence) -> bool:
        """Gives the sequence its cached prefix and a promise of every block it may
        need, if the cache has them; False leaves it waiting (and those behind it:
        first come, first served)."""
        bs = self.blocks.block_size
        # At least the prompt's last token is computed: its logits give the first new token.
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

    def _advance(self, seq: Sequence, n: int, token: int | None) -> None:
        """Takes a step's result for one sequence."""
        seq.computed += n
        bs = self.blocks.block_size
        while (seq.sealed + 1) * bs <= seq.computed:  # blocks filled this step become shareable
            i = seq.sealed
            seq.parent = self.blocks.seal(seq.blocks[i], seq.parent, seq.tokens[i * bs : (i + 1) * bs])
            seq.sealed += 1
        if token is None or seq.cancelled:
            return
        if token in self.model.tokenizer.stop_ids:
            self._finish(seq, "stop")
            return
        seq.generated += 1
        try:
            seq.out.send_nowait(token)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            seq.cancelled = True
            return
        if seq.generated >= seq.budget:
            self._finish(seq, "length")
        else:
            seq.tokens.append(token)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        try:
            seq.out.send_nowait(Ended(reason, error))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._remove(seq)

    def _remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.release(seq.blocks)
            self._reserved -= seq.reserved
            seq.blocks, seq.reserved = [], 0
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self._unqueue(seq)
        seq.out.close()

    def _unqueue(self, seq: Sequence) -> None:
        left = self._waiting_requests[seq.request] - 1
        if left:
            self._waiting_requests[seq.request] = left
        else:
            del self._waiting_requests[seq.request]

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]:
            self._remove(seq)
