"""The generation service: what every dialect's generating routes share, in
no dialect's words or shapes.

- sampling options: the request's values, else the model's recommended ones,
  else the dialect's defaults; max tokens within the server's limit;
- prompts within the context: a bound on a text's bytes before it is
  tokenized, the exact count when the prompts are queued;
- chat messages to a prompt through the model's chat template;
- one request's generations (one per prompt, later one per choice) as a
  ``Choices``: queued together, run to their ends concurrently, cancelled together.

Refusals are ServiceErrors (errors.py) that each dialect words itself. This
module and registry.py are the only ones in ``pycompat.api`` that import the
engine; the routes get its event types (PromptLogprobs, TextPiece, Finished) from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from pycompat.api import exchange
from pycompat.api.errors import Busy, ContextExceeded, MaxTokensOverLimit, PromptRejected
from pycompat.api.registry import ServedModel
from pycompat.engine.engine import ContextOverflow, QueueFull
from pycompat.engine.request import (Event, Finished, Generation, PromptLogprobs, SamplingOptions, TextPiece, TokenLogprob,
                                     merged_events, start as start_engine)
from pycompat.loading.chat_template import TemplateError

__all__ = ["Choices", "Event", "Finished", "Generation", "PromptLogprobs", "Result", "SamplingOptions", "TextPiece", "TokenLogprob", "chat_prompt", "check_prompt_bytes", "fit_window",
           "sampling_options", "start", "tokenize"]

# The sampling fields a model may recommend values for (generation_config.json, GGUF general.sampling.*).
RECOMMENDABLE = ("temperature", "top_p", "top_k", "min_p")


def sampling_options(served: ServedModel, max_tokens: int | None, requested: dict[str, Any], fallback: dict[str, Any], *,
                     max_tokens_field: str = "max_tokens", max_tokens_default: int | None = None) -> SamplingOptions:
    """Sampling options for one request.

    Args:
        max_tokens: the request's own bound on its completion (None: it set none),
            read from its field ``max_tokens_field``. Above the server's
            ``--max-tokens-limit`` it is refused (MaxTokensOverLimit names the
            field): a client that asks for more should hear so, not get less
            and wonder why. A request that sets none gets ``max_tokens_default``
            (the dialect's, if it has one) within the limit; the engine bounds
            every sequence by the limit too, so None stays None here and a long
            prompt still needs room for only one token.
        requested: the request's (already checked) temperature, top_p, top_k,
            min_p, seed, stop, logit_bias, presence_penalty, frequency_penalty,
            repetition_penalty and ignore_eos; None where it left one out.
        fallback: the dialect's defaults, for what neither the request nor the model sets.
    """
    limit = served.engine.config.max_tokens_limit
    if max_tokens is None:
        max_tokens = max_tokens_default if limit is None or max_tokens_default is None else min(max_tokens_default, limit)
    elif limit is not None and max_tokens > limit:
        raise MaxTokensOverLimit(max_tokens_field, max_tokens, limit)
    recommended = served.engine.model.sampling_defaults

    def pick(name: str) -> Any:
        value = requested.get(name)
        if value is not None:
            return value
        if name in RECOMMENDABLE and name in recommended:
            return int(recommended[name]) if name == "top_k" else recommended[name]
        return fallback.get(name)

    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=pick("top_k"),
        min_p=pick("min_p"),
        seed=pick("seed"),
        stop=list(pick("stop") or ()),
        logit_bias=dict(pick("logit_bias") or {}),
        presence_penalty=pick("presence_penalty"),
        frequency_penalty=pick("frequency_penalty"),
        repetition_penalty=pick("repetition_penalty"),
        ignore_eos=pick("ignore_eos"),
    )


def check_prompt_bytes(served: ServedModel, n_bytes: int, max_tokens: int | None, field: str) -> None:
    """Refuses, before tokenizing, a text that cannot fit the context whatever
    its tokens (ContextExceeded): tokenizing megabytes would hold a core for seconds for nothing."""
    model = served.engine.model
    at_least = math.ceil(n_bytes / model.tokenizer.max_bytes_per_token)
    room = model.context_length - (max_tokens if max_tokens is not None else 1)
    if at_least > room:
        raise ContextExceeded(model.context_length, at_least, max_tokens, field, prompt_bytes=n_bytes)


def fit_window(opts: SamplingOptions, prompt_tokens: int, window: int | None, field: str) -> None:
    """Bounds the answer so that prompt and answer fit ``window`` tokens (a
    context smaller than the model's that a request asks for: Ollama's
    ``num_ctx``); a prompt that fills it is refused (ContextExceeded)."""
    if window is None:
        return
    room = window - prompt_tokens
    if room <= 0:
        raise ContextExceeded(window, prompt_tokens, None, field)
    opts.max_tokens = room if opts.max_tokens is None else min(opts.max_tokens, room)


async def tokenize(served: ServedModel, text: str, add_bos: bool | None = None) -> list[int]:
    """``text``'s token ids, off the event loop (``add_bos``: as the model does
    when None). Callers bound the text first (``check_prompt_bytes``); the exact
    count is checked when it is queued."""
    return await trio.to_thread.run_sync(served.engine.model.tokenizer.encode, text, add_bos)


def chat_prompt(served: ServedModel, messages: list[dict], field: str, tools: list[dict] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt text for chat ``messages`` (role and text content) with the
    assistant's turn opened (unless ``add_generation_prompt`` is false), and
    ``tools`` for a template that renders them; raises PromptRejected when the
    template refuses them."""
    try:
        return served.engine.model.chat_template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    except TemplateError as e:
        raise PromptRejected(str(e), field) from None


@dataclass
class Result:
    text: str
    finished: Finished
    logprobs: list[TokenLogprob] | None = None  # each generated token's, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # each prompt token's, when asked for


class Choices:
    """One request's generations, queued together (all or none) and given up
    together. A dialect streams each one's ``events()`` in its own framing, or
    awaits ``run_to_end`` for all of them at once. Either way, what the
    operator's metrics and logs need of them (tokens, timing) is reported to the
    request's exchange as their events pass. ``n``: choices per prompt."""

    def __init__(self, generations: Sequence[Generation | _NothingToGenerate], n: int = 1):
        self.generations = list(generations)
        self.n = n
        self._first_text_at: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.generations)

    def __getitem__(self, index: int) -> Generation | _NothingToGenerate:
        return self.generations[index]

    async def stream(self) -> AsyncIterator[tuple[int, Event]]:
        """Every generation's events as (index, event), interleaved as the engine
        makes them (each generation's in order). Cancels them all on the way out."""
        if all(isinstance(g, Generation) for g in self.generations):
            async with aclosing(merged_events(self.generations)) as events:
                async for item in events:
                    self._observe(*item)
                    yield item
            return
        try:
            for index, g in enumerate(self.generations):  # nothing to generate: each has finished already
                async with aclosing(g.events()) as events:
                    async for event in events:
                        self._observe(index, event)
                        yield index, event
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Gives up whatever is still running (a response's ``on_close``)."""
        for g in self.generations:
            g.cancel()

    async def run_to_end(self) -> list[Result]:
        """Every generation's text and how it finished, in order; they run at
        once (the engine batches them). Cancels them all on the way out."""
        try:
            if len(self.generations) == 1:
                return [await _run_to_end(self.generations[0], partial(self._observe, 0))]
            results: list[Result | None] = [None] * len(self.generations)

            async def run(index: int) -> None:
                results[index] = await _run_to_end(self.generations[index], partial(self._observe, index))

            async with trio.open_nursery() as nursery:
                for index in range(len(self.generations)):
                    nursery.start_soon(run, index)
            return results
        finally:
            self.cancel()

    def _observe(self, index: int, event: Event) -> None:
        if isinstance(event, TextPiece):
            if index not in self._first_text_at and event.text:
                self._first_text_at[index] = time.monotonic()
            exchange.note_text(index, event.text)
        elif isinstance(event, Finished):
            seq = getattr(self.generations[index], "seq", None)
            queue_wait = seq.admitted_at - seq.queued_at if seq is not None and seq.admitted_at is not None else None
            exchange.note_generation_done(event.prompt_tokens, event.completion_tokens, event.cached_tokens,
                                          counts_prompt=index % self.n == 0, first_token_at=self._first_text_at.get(index),
                                          queue_wait=queue_wait)


def start(served: ServedModel, prompts: list[list[int]], opts: SamplingOptions, field: str) -> Choices:
    """Queues the prompts as one request, or refuses them: ContextExceeded when
    a prompt (and completion) cannot fit, Busy when the queue is full. Nothing
    waits, so a dialect can still answer with an error status before its
    response begins. For ``max_tokens`` 0 nothing is queued unless the prompt is
    scored (``prompt_logprobs``): each prompt must still fit, and each finishes
    at once with "length"."""
    engine = served.engine
    try:
        if opts.max_tokens == 0 and not opts.prompt_logprobs:
            for ids in prompts:
                engine.check_fits(len(ids), 0)
            return Choices([_NothingToGenerate(Finished("length", len(ids), 0)) for ids in prompts for _ in range(opts.n)], opts.n)
        return Choices(start_engine(engine, prompts, opts), opts.n)
    except QueueFull:
        raise Busy() from None
    except ContextOverflow as e:
        raise ContextExceeded(e.context_length, e.prompt_tokens, e.max_tokens, field) from None


@dataclass
class _NothingToGenerate:
    """A generation of no tokens: it has finished before it starts."""

    finished: Finished

    def cancel(self) -> None:
        pass

    async def events(self) -> AsyncIterator[Event]:
        yield self.finished


async def _run_to_end(generation: Generation | _NothingToGenerate, observe: Callable[[Event], None]) -> Result:
    pieces, logprobs, prompt_logprobs = [], None, None
    async with aclosing(generation.events()) as events:
        async for ev in events:
            observe(ev)
            if isinstance(ev, PromptLogprobs):
                prompt_logprobs = ev.tokens
            elif isinstance(ev, TextPiece):
                pieces.append(ev.text)
                if ev.logprobs is not None:
                    logprobs = (logprobs or []) + ev.logprobs
            else:
                return Result("".join(pieces), ev, logprobs, prompt_logprobs)
    raise RuntimeError("generation ended without finishing")
