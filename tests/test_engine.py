"""The engine in process (pytest-trio), on a small random model: what the
server tests cannot arrange, such as a failing kernel step or a bug in the
engine's own bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import Engine
from pycompat.engine.request import Finished, GenerationFailed, SamplingOptions, TextPiece, generate, start
from pycompat.loading.load import load_model
from tiny_models import TinyConfig, byte_vocab, random_weights, write_gguf_model

VOCAB = len(byte_vocab()[0])
GREEDY = SamplingOptions(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "tiny.gguf"
    cfg = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96)
    write_gguf_model(path, cfg, random_weights(cfg, VOCAB, seed=9), "Q8_0")
    return load_model(str(path))


class FailingKernel:
    """The model's kernel, except that step raises on chosen calls."""

    def __init__(self, kernel, fail_on: set[int]):
        self._kernel, self._fail_on, self.calls = kernel, fail_on, 0

    def step(self, cache, inputs):
        self.calls += 1
        if self.calls in self._fail_on:
            raise RuntimeError("injected failure")
        return self._kernel.step(cache, inputs)

    def __getattr__(self, name):
        return getattr(self._kernel, name)


async def collect(engine: Engine, prompt: list[int], opts: SamplingOptions = GREEDY) -> tuple[str, Finished]:
    pieces = []
    async for ev in generate(engine, prompt, opts):
        if isinstance(ev, TextPiece):
            pieces.append(ev.text)
        else:
            return "".join(pieces), ev
    raise AssertionError("no Finished")


async def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(model):
    engine = Engine(replace(model, kernel=FailingKernel(model.kernel, fail_on={2})), EngineConfig(kv_cache_mb=64))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        with pytest.raises(GenerationFailed, match="injected"):
            await collect(engine, [5, 6, 7])
        text, done = await collect(engine, [5, 6, 7])
        assert done.completion_tokens == 12 and done.reason == "length"
        assert engine.scheduler.blocks.used == 0
        nursery.cancel_scope.cancel()


async def test_a_bug_in_the_engine_fails_everyone_and_it_starts_afresh(model, monkeypatch):
    engine = Engine(model, EngineConfig(kv_cache_mb=64))
    real_take, calls = engine._take, []

    def buggy_take(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("bookkeeping bug")
        real_take(*args)

    monkeypatch.setattr(engine, "_take", buggy_take)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        results = []

        async def one(prompt):
            try:
                results.append(await collect(engine, prompt))
            except GenerationFailed as e:
                results.append(e)

        async with trio.open_nursery() as requests:
            requests.start_soon(one, [1, 2, 3])
            requests.start_soon(one, [4, 5, 6, 7])
        assert all(isinstance(r, GenerationFailed) for r in results)
        text, done = await collect(engine, [1, 2, 3])
        assert done.completion_tokens == 12
        assert engine.scheduler.blocks.used == 0 and not engine.scheduler.running and not engine.scheduler.waiting
        nursery.cancel_scope.cancel()


async def test_batched_requests_get_what_they_get_alone(model):
    engine = Engine(model, EngineConfig(kv_cache_mb=64, step_tokens=7))  # prompts in chunks, mixed with decodes
    prompts = [[3 + i, 40 + i, 9, 12 + 2 * i, 100 - i] * (1 + i % 3) for i in range(6)]
    sampled = [SamplingOptions(max_tokens=10, temperature=0.9, top_p=0.9, seed=i) for i in range(6)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        alone = [await collect(engine, p, o) for p, o in zip(prompts, sampled)]
        together = [None] * len(prompts)

        async def one(i):
            together[i] = await collect(engine, prompts[i], sampled[i])

        async with trio.open_nursery() as requests:
            for i in range(len(prompts)):
                requests.start_soon(one, i)
        assert [t for t, _ in together] == [t for t, _ in alone]
        nursery.cancel_scope.cancel()


class RecordingKernel:
    """The model's kernel, recording at each step call what ``seen()`` says."""

    def __init__(self, kernel, seen):
        self._kernel, self._seen, self.calls = kernel, seen, []

    def step(self, cache, inputs):
        self.calls.append(self._seen())
        return self._kernel.step(cache, inputs)

    def __getattr__(self, name):
        return getattr(self._kernel, name)


async def test_a_stop_string_ends_the_sequence_in_the_step_that_made_it(model):
    a = model.tokenizer.encode("a")[0]
    forced = SamplingOptions(max_tokens=12, temperature=0.0, logit_bias={a: 100.0}, stop=["aaa"])
    kernel = RecordingKernel(model.kernel, lambda: None)
    engine = Engine(replace(model, kernel=kernel), EngineConfig(kv_cache_mb=64))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        text, done = await collect(engine, [5, 6, 7], forced)
        assert (text, done.reason, done.completion_tokens) == ("", "stop", 3)
        # The prompt's step made the first "a", two decode steps the others: no step after.
        assert len(kernel.calls) == 3
        assert engine.scheduler.blocks.used == 0
        nursery.cancel_scope.cancel()


async def test_each_steps_text_reaches_its_reader_before_the_next_step(model):
    a = model.tokenizer.encode("a")[0]
    forced = SamplingOptions(max_tokens=10, temperature=0.0, logit_bias={a: 100.0})
    received: list[str] = []
    kernel = RecordingKernel(model.kernel, lambda: len(received))
    engine = Engine(replace(model, kernel=kernel), EngineConfig(kv_cache_mb=64))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        async for ev in generate(engine, [5, 6, 7], forced):
            if isinstance(ev, TextPiece):
                await trio.sleep(0.002)  # sending it takes a while (well within the hand-off's timeout)
                received.append(ev.text)
        assert "".join(received) == "a" * 10
        assert kernel.calls == list(range(10))  # step i ran after the reader had i pieces
        nursery.cancel_scope.cancel()


async def test_ignore_eos_generates_stop_tokens_to_the_budget(model):
    """A stop token the model keeps choosing ends the sequence at once, unless
    ignore_eos: then each is generated and counted, adds no text (it is a
    special token), and generation runs to max_tokens."""
    (stop_id, *_) = sorted(model.tokenizer.stop_ids)
    forced = SamplingOptions(max_tokens=7, temperature=0.0, logit_bias={stop_id: 100.0})
    engine = Engine(model, EngineConfig(kv_cache_mb=64))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        text, done = await collect(engine, [5, 6, 7], forced)
        assert (text, done.reason, done.completion_tokens) == ("", "stop", 0)
        text, done = await collect(engine, [5, 6, 7], replace(forced, ignore_eos=True))
        assert (text, done.reason, done.completion_tokens) == ("", "length", 7)
        # A stop string still ends it.
        a = model.tokenizer.encode("a")[0]
        text, done = await collect(engine, [5, 6, 7], replace(forced, ignore_eos=True, logit_bias={a: 100.0}, stop=["aa"]))
        assert (text, done.reason, done.completion_tokens) == ("", "stop", 2)
        assert engine.scheduler.blocks.used == 0
        nursery.cancel_scope.cancel()


async def test_penalties_reach_the_sampler_with_the_prompt(model):
    """A token the bias favours is the greedy choice every time; a frequency
    penalty makes the answer leave it once generated; a repetition penalty
    pushes it down from the first token on when the prompt holds it (it looks
    at the prompt), not when the prompt does not. Neutral values change nothing."""
    a = model.tokenizer.encode("a")[0]
    nudged = SamplingOptions(max_tokens=8, temperature=0.0, logit_bias={a: 5.0})
    engine = Engine(model, EngineConfig(kv_cache_mb=64))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        assert (await collect(engine, [5, 6, 7], nudged))[0] == "a" * 8
        neutral = replace(nudged, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0)
        assert (await collect(engine, [5, 6, 7], neutral))[0] == "a" * 8
        text, _ = await collect(engine, [5, 6, 7], replace(nudged, frequency_penalty=2.0))
        assert text.startswith("a") and text.count("a") < 8, text
        repetition = replace(nudged, repetition_penalty=10.0)
        assert (await collect(engine, [5, 6, 7], repetition))[0].startswith("a")
        assert not (await collect(engine, [5, a, 7], repetition))[0].startswith("a")
        nursery.cancel_scope.cancel()


async def test_the_choices_of_a_prompt_compute_it_once(model):
    computed: list[int] = []

    class CountingKernel(RecordingKernel):
        def step(self, cache, inputs):
            computed.append(sum(len(i.tokens) for i in inputs))
            return self._kernel.step(cache, inputs)

    engine = Engine(replace(model, kernel=CountingKernel(model.kernel, lambda: None)), EngineConfig(kv_cache_mb=64))
    prompt = [(i * 37 + 5) % 200 + 3 for i in range(100)]  # 6 full blocks of 16, and 4 tokens
    opts = SamplingOptions(max_tokens=5, temperature=0.9, seed=1, n=4, logit_bias={t: -100.0 for t in model.tokenizer.stop_ids})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        generations = start(engine, [prompt], opts)
        results = [await collect_generation(g) for g in generations]
        assert [f.completion_tokens for _, f in results] == [5] * 4
        # The prompt once (100), each other choice its last, partial block again (3 × 4), then the decodes.
        assert sum(computed) == 100 + 3 * 4 + 4 * 4
        assert engine.scheduler.blocks.used == 0
        nursery.cancel_scope.cancel()


async def collect_generation(generation) -> tuple[str, Finished]:
    pieces = []
    async for ev in generation.events():
        if isinstance(ev, TextPiece):
            pieces.append(ev.text)
        else:
            return "".join(pieces), ev
    raise AssertionError("no Finished")


async def test_the_servers_max_tokens_limit_bounds_a_request_that_sets_none(model):
    """--max-tokens-limit: a sequence without max_tokens stops at the limit, and
    a prompt that leaves less room than the limit is still admitted (it needs
    room for one token, as without the limit)."""
    (stop_id, *_) = sorted(model.tokenizer.stop_ids)
    unbounded = SamplingOptions(max_tokens=None, temperature=0.0, logit_bias={stop_id: 100.0}, ignore_eos=True)
    engine = Engine(model, EngineConfig(kv_cache_mb=64, max_tokens_limit=5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        _, done = await collect(engine, [5, 6, 7], unbounded)
        assert (done.reason, done.completion_tokens) == ("length", 5)
        long_prompt = [5] * (model.context_length - 2)
        _, done = await collect(engine, long_prompt, unbounded)
        assert (done.reason, done.completion_tokens) == ("length", 2)
        _, done = await collect(engine, [5, 6, 7], replace(unbounded, max_tokens=3))
        assert (done.reason, done.completion_tokens) == ("length", 3)
        nursery.cancel_scope.cancel()
