"""A request's view of the engine: what it asks for, what it gets back, and
the handle through which it reads and cancels.

``start`` queues one request's prompts; each becomes a ``Generation`` whose
``events`` are the text pieces the engine produced (already detokenized and
cut at the request's stop strings, so every piece is final), then one
``Finished``; a request that scores its prompt gets a ``PromptLogprobs``
first. Leaving early (a client that went away) cancels the sequence, which
frees its cache blocks at the next step.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pycompat import _kernel
from pycompat.engine.outbox import Outbox
from pycompat.engine.sequence import Sequence

if TYPE_CHECKING:
    from pycompat.engine.engine import Engine


@dataclass
class SamplingOptions:
    max_tokens: int | None = None  # None: until the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None  # None: a fresh random seed
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    top_logprobs: int | None = None  # None: no log-probabilities; k: each token's, and the k likeliest tokens'
    prompt_logprobs: bool = False  # also each prompt token's (k from top_logprobs), as one PromptLogprobs event
    n: int = 1  # choices per prompt, each its own sample
    # Penalties on tokens already seen (rust/sampler.rs says which tokens each looks at); neutral: 0, 0, 1.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False  # generate past the tokenizer's stop tokens (benchmarks), to max_tokens or a stop string
    # A compiled grammar (LoadedModel.grammars) every choice's output follows; it ends where the grammar is complete.
    grammar: _kernel.Grammar | None = None
    special_text: bool = False  # special tokens generated are text too (a tool-call marker that is one)


# --- what a generation yields ---


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (before sampling
    adjustments), and the likeliest tokens at its position."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), likeliest first


@dataclass
class TextPiece:
    text: str
    # With SamplingOptions.top_logprobs: the tokens whose text this piece completes
    # (a token whose text is held back, by a stop string's prefix or a split
    # character, comes with the piece that releases it).
    logprobs: list[TokenLogprob] | None = None


@dataclass
class PromptLogprobs:
    """With SamplingOptions.prompt_logprobs: each prompt token's log-probability
    given the tokens before it, and the likeliest tokens at its position; None
    for the first token, which has nothing before it. It comes before any TextPiece."""

    tokens: list[TokenLogprob | None]


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


@dataclass
class Failed:
    """The engine's last event for a sequence it could not compute (``events`` raises it)."""

    message: str


# What a generation yields.
Event = PromptLogprobs | TextPiece | Finished


class GenerationFailed(Exception):
    """The engine could not compute this request (a kernel error)."""


async def merged_events(generations: list[Generation]) -> AsyncIterator[tuple[int, Event]]:
    """Every generation's events as they come, as (index, event): the choices of
    one request streamed together. Raises GenerationFailed as ``events`` does;
    gives every generation up on the way out."""
    live = list(range(len(generations)))
    try:
        while live:
            for i in list(live):
                while (event := generations[i].outbox.take()) is not None:
                    if isinstance(event, Failed):
                        raise GenerationFailed(event.message)
                    yield i, event
                    if isinstance(event, Finished):
                        live.remove(i)
                        break
            if live:
                await Outbox.wait_any([generations[i].outbox for i in live])
    finally:
        for g in generations:
            g.cancel()


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a request seeded with ``seed``: the seed itself
    for the first (so n=1 is unchanged), a well-mixed other one for each of the rest."""
    if choice == 0:
        return seed % (1 << 64)
    x = (seed + choice * 0x9E3779B97F4A7C15) % (1 << 64)  # splitmix64's step and finalizer
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return x ^ (x >> 31)


def make_sampler(opts: SamplingOptions, prompt: list[int], choice: int = 0) -> _kernel.Sampler:
    """The kernel's sampler for choice ``choice`` of ``prompt`` (which the repetition penalty looks at)."""
    seed = choice_seed(opts.seed, choice) if opts.seed is not None else secrets.randbits(64)
    return _kernel.Sampler(
        opts.temperature, opts.top_p, opts.top_k, opts.min_p, seed % (1 << 64), list(opts.logit_bias.items()),
        presence_penalty=opts.presence_penalty, frequency_penalty=opts.frequency_penalty,
        repetition_penalty=opts.repetition_penalty,
        prompt=prompt if opts.repetition_penalty != 1.0 else [],  # not copied when nothing reads it
        ignore_eos=opts.ignore_eos,
        grammar=opts.grammar,
    )


@dataclass(eq=False)
class Generation:
    """One submitted sequence, seen from its request. ``events`` yields its text;
    ``cancel`` gives it up (also when ``events`` was never read)."""

    engine: Engine
    seq: Sequence
    outbox: Outbox

    def cancel(self) -> None:
        self.outbox.leave()
        self.engine.cancel(self.seq)  # no-op for a sequence that has ended

    async def events(self) -> AsyncIterator[Event]:
        """Yields text pieces as the engine makes them (after the prompt's
        PromptLogprobs when asked for), then one Finished;
        raises GenerationFailed if the engine could not compute it."""
        try:
            while True:
                event = await self.outbox.get()
                if isinstance(event, Failed):
                    raise GenerationFailed(event.message)
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.cancel()


def start(engine: Engine, prompts: list[list[int]], opts: SamplingOptions) -> list[Generation]:
    """Queues one request's prompts together, ``opts.n`` choices each: all of
    them, or none (raises QueueFull or ContextOverflow). Nothing waits, so a
    caller can still answer with an error status before its response begins.
    Returns the generations prompt by prompt, choice by choice."""
    samplers = [make_sampler(opts, prompt, choice) for prompt in prompts for choice in range(opts.n)]
    return engine.submit(prompts, opts.max_tokens, samplers, opts.stop, opts.top_logprobs, opts.n, opts.prompt_logprobs,
                         opts.special_text)


async def generate(engine: Engine, prompt: list[int], opts: SamplingOptions) -> AsyncIterator[Event]:
    """One prompt's generation from start to end (raises as ``start`` does)."""
    (generation,) = start(engine, [prompt], opts)
    async with aclosing(generation.events()) as events:
        async for ev in events:
            yield ev
