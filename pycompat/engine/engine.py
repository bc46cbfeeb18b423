"""The engine: one task on the event loop owns the model and runs every request.

Each step: the scheduler plans a batch (scheduler.py), the runner computes it
in a worker thread (runner.py; the kernel releases the GIL), and the engine
turns each sampled token into its request's events right away: detokenized,
cut at stop strings, finished at an end-of-turn token, a stop string or the
token budget. A sequence that finishes leaves before the next step and gives
its cache blocks back. Events go to each request's outbox, and the next step
starts once the tasks they woke have sent them (outbox.py says why).
"""

from __future__ import annotations

import logging
import math

import trio

from pycompat.engine.blocks import BlockManager
from pycompat.engine.config import EngineConfig
from pycompat.engine.outbox import Handoff, Outbox
from pycompat.engine.request import Failed, Finished, Generation, PromptLogprobs, TextPiece, TokenLogprob
from pycompat.engine.runner import Runner, StepInput, StepOutput
from pycompat.engine.scheduler import Chunk, Scheduler
from pycompat.engine.sequence import Sequence, SequenceGroup
from pycompat.engine.stop import StopMatcher
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


class Output:
    """A sequence's output side: its text so far and where its events go."""

    __slots__ = ("decoder", "stops", "outbox", "top_logprobs", "logprobs", "prompt_logprobs")

    def __init__(self, decoder, stops: StopMatcher, outbox: Outbox, top_logprobs: int | None):
        self.decoder, self.stops, self.outbox = decoder, stops, outbox
        self.top_logprobs = top_logprobs  # None: no log-probabilities wanted
        self.logprobs: list[TokenLogprob] = []  # tokens whose text is not out yet
        # A sequence that scores its prompt: the scores so far (the first token has none).
        self.prompt_logprobs: list[TokenLogprob | None] = [None]

    def emit(self, text: str) -> None:
        """Sends ``text`` (with the log-probabilities of the tokens it completes)."""
        if not text and not self.logprobs:
            return
        if self.top_logprobs is None:
            self.outbox.put(TextPiece(text))
        else:
            self.outbox.put(TextPiece(text, self.logprobs))
            self.logprobs = []


class Engine:
    def __init__(self, model: LoadedModel, config: EngineConfig | None = None):
        self.model = model
        self.config = config = config or EngineConfig()
        kernel, bs = model.kernel, config.block_size
        per_block = kernel.new_cache(1, bs).bytes_per_block
        n_blocks = int(config.kv_cache_mb * MIB) // per_block
        if n_blocks * bs < model.context_length:
            raise CacheTooSmall(
                f"a KV cache of {config.kv_cache_mb:g} MiB holds {n_blocks * bs} tokens, less than one "
                f"context of {model.context_length}: raise --kv-cache-mb to at least "
                f"{math.ceil(math.ceil(model.context_length / bs) * per_block / MIB)} or lower --context-length"
            )
        self.runner = Runner(kernel, kernel.new_cache(n_blocks, bs))
        self.scheduler = Scheduler(BlockManager(n_blocks, bs, config.prefix_caching), config.step_tokens, config.max_queue)
        self._handoff = Handoff()
        self._last_request = 0
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
        if not self.scheduler.has_room():
            raise QueueFull()

    def submit(self, prompts: list[list[int]], max_tokens: int | None, samplers: list, stop: list[str],
               top_logprobs: int | None = None, n: int = 1, prompt_logprobs: bool = False,
               special_text: bool = False) -> list[Generation]:
        """Queues one request's prompts, ``n`` choices each (``samplers`` prompt by
        prompt, choice by choice), as one group: all, or none (QueueFull,
        ContextOverflow). Each sequence's events arrive through its Generation.
        With ``prompt_logprobs``, each prompt is scored once (by its first choice)
        and every choice gets the scores; ``max_tokens`` 0 then computes the prompt
        and generates nothing. ``special_text``: special tokens the model
        generates are part of the text (a tool-call marker that is one)."""
        self.check_queue()
        for prompt in prompts:
            self.check_fits(len(prompt), max_tokens)
        self._last_request += 1
        group, generations = SequenceGroup(self._last_request), []
        for i, sampler in enumerate(samplers):
            prompt, choice = prompts[i // n], i % n
            budget = self.model.context_length - len(prompt)
            if max_tokens is not None:
                budget = min(budget, max_tokens)
            if self.config.max_tokens_limit is not None:
                budget = min(budget, self.config.max_tokens_limit)
            # The other choices of a prompt fork from its first: computed once.
            source = group.sequences[i - choice] if choice else None
            seq = Sequence(list(prompt), len(prompt), budget, sampler, fork_of=source,
                           scores_prompt=prompt_logprobs and source is None)
            outbox = Outbox(self._handoff)
            seq.output = Output(self.model.tokenizer.decoder(special_text), StopMatcher(stop), outbox, top_logprobs)
            group.sequences.append(seq)
            generations.append(Generation(self, seq, outbox))
        self.scheduler.add(group)
        self._work.set()
        return generations

    def cancel(self, seq: Sequence) -> None:
        """The request is gone: the sequence leaves at the next step."""
        if not seq.finished:
            seq.cancelled = True
            self._work.set()

    def stats(self) -> dict:
        s, b, per_block = self.scheduler, self.scheduler.blocks, self.runner.cache.bytes_per_block
        return {
            "running": len(s.running),
            "waiting": s.queued_requests,
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
                for seq in self.scheduler.reset():
                    seq.output.outbox.put(Failed("The engine failed while running this request."))

    async def _step(self) -> None:
        plan = self.scheduler.plan()
        if not plan:
            self._work = trio.Event()
            await self._work.wait()
            return
        inputs = [self._input(c) for c in plan]
        try:
            outputs = await self.runner.step(inputs)
        except Exception as e:  # the kernel refused the batch (a bug): fail its requests, keep serving
            log.exception("step failed")
            for c in plan:
                self._fail(c.seq, str(e))
            return
        for chunk, out in zip(plan, outputs, strict=True):
            self._take(chunk, out)
        await self._handoff.wait()

    @staticmethod
    def _input(chunk: Chunk) -> StepInput:
        seq, start = chunk.seq, chunk.seq.computed
        end = start + chunk.n_tokens
        # Nothing to generate (max_tokens 0): the prompt is all there is to compute.
        sampler = seq.sampler if chunk.samples and seq.budget > 0 else None
        # Row j is scored against the token after it, up to the prompt's last (the
        # last prompt row's next token is the first generated one).
        targets = seq.tokens[start + 1 : min(end + 1, seq.prompt_len)] if seq.scores_prompt and start < seq.prompt_len else None
        top = seq.output.top_logprobs if sampler is not None or targets is not None else None
        return StepInput(seq.blocks, start, seq.tokens[start:end], sampler, top_logprobs=top, prompt_targets=targets)

    def _take(self, chunk: Chunk, result: StepOutput) -> None:
        """A step's result for one sequence: its cache advanced, its prompt's
        scores kept (and sent with the prompt's end) and, if it sampled, its new
        token turned into events."""
        seq, token = chunk.seq, result.token
        if result.prompt_logprobs is not None:
            targets = seq.tokens[seq.computed + 1 :]
            seq.output.prompt_logprobs += [TokenLogprob(t, lp, top) for t, (lp, top) in zip(targets, result.prompt_logprobs)]
        self.scheduler.computed(chunk)
        if seq.cancelled:
            return
        if seq.scores_prompt and seq.computed == seq.prompt_len:
            self._send_prompt_logprobs(seq)
        if token is None:
            if chunk.samples and seq.budget == 0:  # the prompt was all: its choices end together
                for s in [seq, *self._forks(seq)]:
                    if not s.finished:
                        self._finish(s, "length")
            return
        if result.grammar_error is not None:  # a bug in the grammar's engine, not the client's doing
            log.error("grammar failed for request %d: %s", seq.group.request_id if seq.group else 0, result.grammar_error)
            return self._fail(seq, f"The output's grammar failed: {result.grammar_error}")
        if token in self.model.tokenizer.stop_ids and not seq.sampler.ignore_eos:
            return self._finish(seq, "stop")
        seq.generated += 1
        out = seq.output
        if out.top_logprobs is not None:
            out.logprobs.append(TokenLogprob(token, result.logprob, result.top_logprobs))
        out.emit(out.stops.push(out.decoder.push(token)))
        # A complete grammar allows nothing but an end token: no step is spent sampling it.
        if out.stops.stopped or (result.grammar_complete and not seq.sampler.ignore_eos):
            self._finish(seq, "stop")
        elif seq.generated >= seq.budget:
            self._finish(seq, "length")
        else:
            seq.tokens.append(token)

    @staticmethod
    def _forks(seq: Sequence) -> list[Sequence]:
        return [s for s in seq.group.sequences if s.fork_of is seq] if seq.group is not None else []

    def _send_prompt_logprobs(self, seq: Sequence) -> None:
        """The prompt's scores, to the sequence and to its forks (computed once for all)."""
        scores = seq.output.prompt_logprobs
        for s in [seq, *self._forks(seq)]:
            s.output.outbox.put(PromptLogprobs(list(scores)))

    def _finish(self, seq: Sequence, reason: str) -> None:
        out = seq.output
        out.emit(out.stops.flush())
        out.outbox.put(Finished(reason, seq.prompt_len, seq.generated, seq.cached_tokens))
        self.scheduler.finish(seq)

    def _fail(self, seq: Sequence, message: str) -> None:
        seq.output.outbox.put(Failed(message))
        self.scheduler.finish(seq)
