"""Embedding requests batched together.

One task owns an embedding model and runs every request's inputs: it takes
the waiting inputs, oldest first, up to a batch's budget of tokens and
inputs, computes them in one kernel call in a worker thread (the kernel
releases the GIL), and hands each request its rows. Inputs of many requests
share a call, so a hundred clients embedding one sentence each cost about
one pass over the weights, not a hundred.

A model is anything with ``embed(batch: list[list[int]]) -> bytes`` (rows of
``dim`` little-endian f32, one per input, pooled and normalized as the model
defines) plus ``dim`` and ``max_seq_len``: the BERT encoder of the kernel, or
a decoder's pooled hidden states.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import trio

log = logging.getLogger(__name__)


class EmbeddingKernel(Protocol):
    dim: int
    max_seq_len: int

    def embed(self, batch: list[list[int]]) -> bytes: ...


class EmbedderQueueFull(Exception):
    """Too many inputs wait already."""


class EmbeddingFailed(Exception):
    """The kernel failed on a batch holding this request's inputs (logged where it happened)."""


@dataclass
class EmbedderConfig:
    batch_tokens: int = 8192  # most tokens one kernel call computes (at least one whole input)
    batch_inputs: int = 256  # most inputs one kernel call computes
    max_queue: int = 65536  # inputs waiting; beyond, a request is refused (429)


@dataclass(eq=False)
class _Job:
    """One request's inputs and, as batches finish, its rows."""

    inputs: list[list[int]]
    rows: np.ndarray
    next: int = 0  # the first input not yet taken into a batch
    left: int = 0  # inputs taken or waiting whose rows have not come back
    done: trio.Event = field(default_factory=trio.Event)
    failed: bool = False
    cancelled: bool = False


class Embedder:
    def __init__(self, kernel: EmbeddingKernel, config: EmbedderConfig | None = None):
        self.kernel = kernel
        self.config = config or EmbedderConfig()
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # inputs not yet taken into a batch
        self._wake = trio.Event()

    @property
    def dim(self) -> int:
        return self.kernel.dim

    def stats(self) -> dict:
        return {"queued_inputs": self._queued}

    async def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """One row of ``dim`` float32 per input, in order. Raises EmbedderQueueFull
        at once when the queue is full, EmbeddingFailed when the kernel failed.
        Each input must hold 1 to ``max_seq_len`` valid token ids (the caller checks)."""
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._queued + len(inputs) > self.config.max_queue:
            raise EmbedderQueueFull
        job = _Job(inputs, np.empty((len(inputs), self.dim), dtype=np.float32), left=len(inputs))
        self._jobs.append(job)
        self._queued += len(inputs)
        self._wake.set()
        try:
            await job.done.wait()
        except BaseException:
            job.cancelled = True  # the loop drops its inputs that no batch has taken yet
            raise
        if job.failed:
            raise EmbeddingFailed
        return job.rows

    async def run(self) -> None:
        """Runs batches while inputs wait; sleeps otherwise. Start it in the server's nursery."""
        while True:
            batch = self._take()
            if not batch:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            tokens = [job.inputs[i] for job, i in batch]
            try:
                raw = await trio.to_thread.run_sync(self.kernel.embed, tokens)
                rows = np.frombuffer(raw, dtype="<f4").reshape(len(batch), self.dim)
            except Exception:
                log.exception("embedding batch of %d inputs failed", len(batch))
                rows = None
            for k, (job, i) in enumerate(batch):
                if rows is None:
                    job.failed = True
                else:
                    job.rows[i] = rows[k]
                job.left -= 1
                if job.left == 0 or job.failed:
                    job.done.set()

    def _take(self) -> list[tuple[_Job, int]]:
        """The next batch: waiting inputs, oldest first, within the budget."""
        batch: list[tuple[_Job, int]] = []
        tokens = 0
        while self._jobs and len(batch) < self.config.batch_inputs:
            job = self._jobs[0]
            if job.cancelled or job.failed:
                self._queued -= len(job.inputs) - job.next
                self._jobs.popleft()
                continue
            size = len(job.inputs[job.next])
            if batch and tokens + size > self.config.batch_tokens:
                break
            batch.append((job, job.next))
            tokens += size
            job.next += 1
            self._queued -= 1
            if job.next == len(job.inputs):
                self._jobs.popleft()
        return batch
