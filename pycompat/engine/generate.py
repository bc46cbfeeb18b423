"""Generation: prompt ids in, text pieces out, one kernel step at a time.

Each request owns a kernel Sequence (its KV cache) and a Sampler (its
parameters and seeded generator). Steps run in a worker thread (the kernel
releases the GIL), one at a time: requests that run together take turns step
by step. The batching engine replaces this with one batched step for all.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from pycompat import _kernel
from pycompat.engine.stop import StopMatcher
from pycompat.loading.load import LoadedModel


@dataclass
class SamplingOptions:
    max_tokens: int | None = None  # None: until the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None  # None: a fresh random seed
    stop: list[str] = field(default_factory=list)


@dataclass
class TextPiece:
    text: str


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


class ContextOverflow(Exception):
    """The prompt plus the requested completion do not fit the context."""

    def __init__(self, prompt_tokens: int, max_tokens: int | None, context_length: int):
        self.prompt_tokens, self.max_tokens, self.context_length = prompt_tokens, max_tokens, context_length
        super().__init__(f"{prompt_tokens} prompt tokens + {max_tokens} > {context_length}")


class Engine:
    def __init__(self, model: LoadedModel):
        self.model = model
        self._step_lock = trio.Lock()
        self.active = 0  # generations in progress (shown by /health)

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> None:
        """Raises ContextOverflow unless the prompt leaves room for at least one token
        (and for all of ``max_tokens`` when given)."""
        need = prompt_tokens + (max_tokens if max_tokens is not None else 1)
        if need > self.model.context_length:
            raise ContextOverflow(prompt_tokens, max_tokens, self.model.context_length)

    async def generate(self, prompt: list[int], opts: SamplingOptions) -> AsyncIterator[TextPiece | Finished]:
        """Yields text pieces as they become final, then one Finished.

        Closing the iterator early (a client that went away) abandons the request
        and frees its cache.
        """
        self.check_fits(len(prompt), opts.max_tokens)
        kernel, tokenizer = self.model.kernel, self.model.tokenizer
        budget = self.model.context_length - len(prompt)
        if opts.max_tokens is not None:
            budget = min(budget, opts.max_tokens)
        sequence = kernel.new_sequence()
        seed = opts.seed if opts.seed is not None else secrets.randbits(64)
        sampler = _kernel.Sampler(opts.temperature, opts.top_p, opts.top_k, opts.min_p, seed % (1 << 64))
        decoder, stops = tokenizer.decoder(), StopMatcher(opts.stop)

        self.active += 1
        try:
            new_tokens, generated, reason = prompt, 0, "length"
            while generated < budget:
                async with self._step_lock:
                    (token,) = await trio.to_thread.run_sync(kernel.step, [(sequence, new_tokens, sampler)])
                if token in tokenizer.stop_ids:
                    reason = "stop"
                    break
                generated += 1
                text = stops.push(decoder.push(token))
                if text:
                    yield TextPiece(text)
                if stops.stopped:
                    reason = "stop"
                    break
                new_tokens = [token]
            rest = stops.flush()
            if rest:
                yield TextPiece(rest)
            yield Finished(reason, len(prompt), generated)
        finally:
            self.active -= 1
