"""The kernel's side of a step: typed inputs in, typed outputs out.

The binding has one compute call, ``KernelModel.step(cache, inputs)``: a
batched forward pass over sequences of a shared paged cache, then sampling.
The engine, the tests and the benchmarks all go through it: the engine with a
cache of many blocks shared by every request, ``SoloSequence`` with a cache of
its own for one sequence.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import trio

from pycompat import _kernel

# Logits a step returns for an input (the kernel reads these names).
NO_LOGITS, LAST_LOGITS, ALL_LOGITS = "none", "last", "all"


@dataclass(slots=True)
class StepInput:
    """One sequence's part of a step. The kernel reads these attributes."""

    blocks: list[int]  # its block table: which cache blocks hold its positions, in order
    start: int  # positions already in the cache; the new tokens go to start, start + 1, ...
    tokens: list[int]  # new tokens to compute
    sampler: _kernel.Sampler | None = None  # picks the next token; None for a prompt chunk before its end
    logits: str = NO_LOGITS  # which logits to return (tests and scoring; the engine asks for none)
    top_logprobs: int | None = None  # k: the chosen token's log-probability and the k likeliest tokens'
    # A prompt chunk's own next tokens (row j's is the token at start + j + 1): each
    # new row scored against its target, with the k likeliest tokens (k = top_logprobs or 0).
    prompt_targets: list[int] | None = None


# The kernel's result per input: ``token`` (int or None) and ``logits`` (bytes or None).
StepOutput = _kernel.StepOutput


@dataclass
class Runner:
    """Runs steps over one shared cache in a worker thread (the kernel releases the GIL)."""

    kernel: _kernel.KernelModel
    cache: _kernel.KvCache

    async def step(self, inputs: list[StepInput]) -> list[StepOutput]:
        return await trio.to_thread.run_sync(self.kernel.step, self.cache, inputs)


# One idle cache per model for SoloSequence: its pages are resident already,
# so the next sequence neither faults them in nor has the OS zero them.
_idle_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SOLO_BLOCK = 16


@dataclass(eq=False)
class SoloSequence:
    """One sequence with a cache of its own for a whole context, outside the
    engine (tests, benchmarks, tools). Each call computes its new tokens after
    those of the calls before."""

    kernel: _kernel.KernelModel
    length: int = 0
    cache: _kernel.KvCache = field(init=False)

    def __post_init__(self) -> None:
        cache = _idle_caches.pop(self.kernel, None)
        self.cache = cache or self.kernel.new_cache(math.ceil(self.kernel.max_seq_len / SOLO_BLOCK), SOLO_BLOCK)
        self._table = list(range(self.cache.n_blocks))

    def __del__(self) -> None:
        cache = getattr(self, "cache", None)
        if cache is not None and self.kernel not in _idle_caches:
            _idle_caches[self.kernel] = cache

    def __len__(self) -> int:
        return self.length

    def _run(self, tokens: list[int], sampler, logits: str) -> StepOutput:
        (out,) = self.kernel.step(self.cache, [StepInput(self._table, self.length, list(tokens), sampler, logits)])
        self.length += len(tokens)
        return out

    def forward(self, tokens: list[int], all_logits: bool = False) -> bytes:
        """The f32 logits (as bytes) of the last new token, or of every new token (tokens × vocab)."""
        return self._run(tokens, None, ALL_LOGITS if all_logits else LAST_LOGITS).logits

    def step(self, tokens: list[int], sampler: _kernel.Sampler) -> int:
        """The token ``sampler`` picks after the new tokens."""
        return self._run(tokens, sampler, NO_LOGITS).token

    def truncate(self, length: int) -> None:
        """Forgets cached positions from ``length`` on."""
        self.length = min(self.length, length)
