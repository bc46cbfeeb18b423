"""A request's side of generation: prompt ids in, text pieces out.

The engine (scheduler.py) computes tokens for every request together; here
one request's tokens become text: detokenized as they arrive, cut at its stop
strings, and counted. Leaving early (a client that went away, a stop string)
cancels the request in the engine, which frees its cache blocks at the next step.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from pycompat import _kernel
from pycompat.engine.scheduler import Ended, Engine, QueueFull, Sequence  # noqa: F401 (QueueFull: raised from here)
from pycompat.engine.stop import StopMatcher


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


@dataclass
class TextPiece:
    text: str


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache


class GenerationFailed(Exception):
    """The engine could not compute this request (a kernel error)."""


def make_sampler(opts: SamplingOptions) -> _kernel.Sampler:
    seed = opts.seed if opts.seed is not None else secrets.randbits(64)
    return _kernel.Sampler(opts.temperature, opts.top_p, opts.top_k, opts.min_p, seed % (1 << 64), list(opts.logit_bias.items()))


@dataclass(eq=False)
class Generation:
    """One submitted sequence, seen from its request. ``events`` turns its tokens
    into text; ``cancel`` gives it up (also when ``events`` was never read)."""

    engine: Engine
    seq: Sequence
    tokens: trio.MemoryReceiveChannel
    opts: SamplingOptions

    def cancel(self) -> None:
        self.engine.cancel(self.seq)  # no-op for a sequence that has ended

    async def events(self) -> AsyncIterator[TextPiece | Finished]:
        """Yields text pieces as they become final, then one Finished."""
        decoder, stops = self.engine.model.tokenizer.decoder(), StopMatcher(self.opts.stop)
        generated, reason = 0, "stop"
        try:
            async with self.tokens:
                async for item in self.tokens:
                    if isinstance(item, Ended):
                        if item.reason == "error":
                            raise GenerationFailed(item.error)
                        reason = item.reason
                        break
                    generated += 1
                    text = stops.push(decoder.push(item))
                    if text:
                        yield TextPiece(text)
                    if stops.stopped:
                        reason = "stop"
                        break
            rest = stops.flush()
            if rest:
                yield TextPiece(rest)
            yield Finished(reason, self.seq.prompt_len, generated, self.seq.cached_tokens)
        finally:
            self.cancel()


def start(engine: Engine, prompts: list[list[int]], opts: SamplingOptions) -> list[Generation]:
    """Queues one request's prompts together: all of them, or none (raises
    QueueFull or ContextOverflow). Nothing waits, so a caller can still answer
    with an error status before its response begins."""
    submitted = engine.submit(prompts, opts.max_tokens, [make_sampler(opts) for _ in prompts])
    return [Generation(engine, seq, tokens, opts) for seq, tokens in submitted]


async def generate(engine: Engine, prompt: list[int], opts: SamplingOptions) -> AsyncIterator[TextPiece | Finished]:
    """One prompt's generation from start to end (raises as ``start`` does)."""
    (generation,) = start(engine, [prompt], opts)
    async with aclosing(generation.events()) as events:
        async for ev in events:
            yield ev
