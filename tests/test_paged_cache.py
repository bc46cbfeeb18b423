"""The kernel's paged KV cache and batched step: a sequence's logits must not
depend on where its blocks lie, on the block size, on what else is in the
batch, or on whether its prefix was computed by another sequence. All
comparisons are exact (bytes), against the same tokens run alone through a
sequence with a cache of its own."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pycompat import _kernel
from pycompat.engine.runner import StepInput, SoloSequence
from pycompat.loading.load import load_model
from tiny_models import TinyConfig, byte_vocab, random_weights, write_gguf_model

VOCAB = len(byte_vocab()[0])
CFG = TinyConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3, ffn_dim=160, tied=True, context_length=1024)


@pytest.fixture(scope="module", params=["Q8_0", "F32"])
def model(request, tmp_path_factory):
    """A block-quantized model (f16 cache) and an all-f32 one (f32 cache)."""
    path = tmp_path_factory.mktemp("paged") / f"tiny-{request.param}.gguf"
    write_gguf_model(path, CFG, random_weights(CFG, VOCAB, seed=3), request.param)
    return load_model(str(path), context_length=1024)


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(n)]


def alone(model, prompt: list[int], decode: list[int]) -> list[bytes]:
    """Logits of the prompt's last token, then of each decode token, one sequence on its own."""
    seq = SoloSequence(model.kernel)
    return [seq.forward(prompt)] + [seq.forward([t]) for t in decode]


def forward(model, cache, batch: list[tuple], logits: str = "last") -> list[bytes | None]:
    """One step over (block table, cached positions, new tokens, logits wanted) entries."""
    inputs = [StepInput(blocks, start, new, None, logits if wanted else "none") for blocks, start, new, wanted in batch]
    return [out.logits for out in model.kernel.step(cache, inputs)]


class Tables:
    """Block tables over a shared cache, with blocks handed out in a shuffled order
    so that no sequence's blocks are adjacent or in order."""

    def __init__(self, cache, seed: int):
        self.order = list(range(cache.n_blocks))
        random.Random(seed).shuffle(self.order)
        self.bs = cache.block_size

    def table(self, length: int) -> list[int]:
        n = -(-length // self.bs)
        taken, self.order = self.order[:n], self.order[n:]
        return taken


@pytest.mark.parametrize("block_size", [4, 16])
def test_a_batch_gives_each_sequence_its_logits_alone(model, block_size):
    # Prompts on both attention paths (short: per query; >= 16 tokens: shared
    # loads over a widened cache) and one longer than a pass of 512 rows.
    prompts = [tokens(5, 1), tokens(40, 2), tokens(600, 3)]
    decode = [tokens(6, 10 + i) for i in range(3)]
    expected = [alone(model, p, d) for p, d in zip(prompts, decode)]

    cache = model.kernel.new_cache(n_blocks=400, block_size=block_size)
    tables = Tables(cache, seed=block_size)
    blocks = [tables.table(len(p) + len(d)) for p, d in zip(prompts, decode)]
    got = [[] for _ in prompts]
    out = forward(model, cache, [(b, 0, p, True) for b, p in zip(blocks, prompts)])
    for g, o in zip(got, out):
        g.append(o)
    for step in range(len(decode[0])):
        batch = [(b, len(p) + step, [d[step]], True) for b, p, d in zip(blocks, prompts, decode)]
        for g, o in zip(got, forward(model, cache, batch)):
            g.append(o)
    assert got == expected


def test_a_prompt_in_chunks_gives_the_logits_of_the_prompt_at_once(model):
    prompt = tokens(70, 4)
    (expected,) = alone(model, prompt, [])
    cache = model.kernel.new_cache(n_blocks=20, block_size=8)
    table = Tables(cache, seed=1).table(len(prompt))
    done = 0
    for n in (13, 1, 30, 26):  # chunk boundaries inside blocks, and a one-token chunk
        out = forward(model, cache, [(table, done, prompt[done : done + n], done + n == len(prompt))])
        done += n
    assert done == len(prompt) and out == [expected]


def test_a_shared_prefix_computed_once_serves_another_sequence(model):
    prefix, suffix_a, suffix_b = tokens(32, 5), tokens(9, 6), tokens(21, 7)
    cache = model.kernel.new_cache(n_blocks=30, block_size=8)
    tables = Tables(cache, seed=2)
    shared = tables.table(len(prefix))  # 4 full blocks
    a = shared + tables.table(len(suffix_a))
    forward(model, cache, [(a, 0, prefix + suffix_a, True)])
    # b reuses the 4 blocks a computed, and computes only its own suffix.
    b = shared + tables.table(len(suffix_b))
    (got,) = forward(model, cache, [(b, len(prefix), suffix_b, True)])
    assert got == alone(model, prefix + suffix_b, [])[0]


def test_all_logits_and_no_logits(model):
    prompt = tokens(20, 8)
    cache = model.kernel.new_cache(n_blocks=8, block_size=4)
    table = Tables(cache, seed=3).table(len(prompt))
    (none,) = forward(model, cache, [(table, 0, prompt[:10], False)])
    (rows,) = forward(model, cache, [(table, 10, prompt[10:], True)], logits="all")
    assert none is None
    everything = SoloSequence(model.kernel).forward(prompt, all_logits=True)
    per_row = np.frombuffer(everything, np.float32).reshape(len(prompt), -1)
    assert np.frombuffer(rows, np.float32).reshape(10, -1).tobytes() == per_row[10:].tobytes()


def test_step_samples_only_where_asked(model):
    cache = model.kernel.new_cache(n_blocks=8, block_size=4)
    greedy = _kernel.Sampler(temperature=0.0)
    out = model.kernel.step(cache, [StepInput([0, 1, 2], 0, tokens(9, 9), greedy), StepInput([3, 4], 0, tokens(5, 1), None)])
    (logits,) = alone(model, tokens(9, 9), [])
    assert [o.token for o in out] == [int(np.argmax(np.frombuffer(logits, np.float32))), None]
    assert [o.logits for o in out] == [None, None]


def test_a_sampling_input_can_also_return_its_logits(model):
    cache = model.kernel.new_cache(n_blocks=8, block_size=4)
    greedy = _kernel.Sampler(temperature=0.0)
    (out,) = model.kernel.step(cache, [StepInput([0, 1, 2], 0, tokens(9, 9), greedy, "last")])
    assert out.logits == alone(model, tokens(9, 9), [])[0]
    assert out.token == int(np.argmax(np.frombuffer(out.logits, np.float32)))


def test_bad_batches_are_refused(model):
    cache = model.kernel.new_cache(n_blocks=4, block_size=4)
    with pytest.raises(_kernel.KernelError, match="needs 2 cache blocks"):
        forward(model, cache, [([0], 0, tokens(5, 1), True)])
    with pytest.raises(_kernel.KernelError, match="does not exist"):
        forward(model, cache, [([0, 9], 0, tokens(5, 1), True)])
    with pytest.raises(_kernel.KernelError, match="outside the vocabulary"):
        forward(model, cache, [([0], 0, [VOCAB], True)])
    with pytest.raises(_kernel.KernelError, match="no new tokens"):
        forward(model, cache, [([0], 0, [], True)])
    with pytest.raises(_kernel.KernelError, match="logits must be none, last or all"):
        forward(model, cache, [([0], 0, [1], True)], logits="every")
    with pytest.raises(_kernel.KernelError, match="at least one block"):
        model.kernel.new_cache(n_blocks=0)
