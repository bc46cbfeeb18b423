"""The Rust forward pass against the numpy reference (tests/reference.py) on
small random models, loaded through the real GGUF and safetensors loaders:
logits over a prefill and several decode steps."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence, StepInput
from pycompat.loading.load import load_model
from tiny_models import (TinyConfig, byte_vocab, dequantize, quantize, random_weights, reference_config, reference_weights,
                         write_gguf_model, write_hf_model)

VOCAB = len(byte_vocab()[0])
# Sizes that are multiples of nothing useful: heads of 10, an MLP of 100.
ODD = TinyConfig(dim=60, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=100)
# Block formats need rows that are whole 32-element blocks.
BLOCKY = TinyConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3, ffn_dim=160, tied=True)
PROMPT = [5, 77, 201, 13, 250, 9, 140, 33, 61]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def kernel_logits(model, prompt: list[int], decode: list[int]) -> np.ndarray:
    """Logits for every prompt position (one prefill call), then one per decode step."""
    seq = SoloSequence(model.kernel)
    rows = list(np.frombuffer(seq.forward(prompt, all_logits=True), np.float32).reshape(len(prompt), -1))
    for tok in decode:
        rows.append(np.frombuffer(seq.forward([tok]), np.float32))
    return np.array(rows)


def check_against_reference(model, cfg: TinyConfig, stored: dict, tol: float) -> None:
    decode = [17, 3, 260, 42]
    ours = kernel_logits(model, PROMPT, decode)
    ref = reference.llama(reference_config(cfg, VOCAB), reference_weights(stored), PROMPT + decode)
    err = rel_err(ours, ref)
    assert err < tol, f"largest relative difference {err:.2e}"


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shards", [1, 3])
def test_safetensors_f32_matches_reference(tmp_path, tied, shards):
    cfg = TinyConfig(**{**ODD.__dict__, "tied": tied})
    stored = write_hf_model(tmp_path / "m", cfg, random_weights(cfg, VOCAB, seed=1), "F32", shards=shards)
    check_against_reference(load_model(tmp_path / "m"), cfg, stored, 1e-4)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_safetensors_half_precision_matches_reference(tmp_path, dtype):
    # The reference gets the same rounded weights; what differs is the f16 KV
    # cache (llama.cpp's default) that half-precision models get.
    stored = write_hf_model(tmp_path / "m", ODD, random_weights(ODD, VOCAB, seed=2), dtype)
    check_against_reference(load_model(tmp_path / "m"), ODD, stored, 3e-3)


def test_gguf_f32_matches_reference(tmp_path):
    # GGUF permutes Q/K rows and rotates adjacent pairs: same model, same logits.
    stored = write_gguf_model(tmp_path / "m.gguf", ODD, random_weights(ODD, VOCAB, seed=3), "F32")
    check_against_reference(load_model(tmp_path / "m.gguf"), ODD, stored, 1e-4)


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_block_formats_match_reference(tmp_path, kind):
    # Block formats multiply 8-bit-rounded activations (as llama.cpp does), so logits
    # move by about a percent; the reference uses the dequantized weights.
    stored = write_gguf_model(tmp_path / "m.gguf", BLOCKY, random_weights(BLOCKY, VOCAB, seed=4), kind)
    tol = 3e-3 if kind in ("F16", "BF16") else 3e-2
    check_against_reference(load_model(tmp_path / "m.gguf"), BLOCKY, stored, tol)


def test_gguf_and_safetensors_give_the_same_logits(tmp_path):
    weights = random_weights(ODD, VOCAB, seed=5)
    write_gguf_model(tmp_path / "m.gguf", ODD, weights, "F32")
    write_hf_model(tmp_path / "hf", ODD, weights, "F32")
    a = kernel_logits(load_model(tmp_path / "m.gguf"), PROMPT, [1, 2])
    b = kernel_logits(load_model(tmp_path / "hf"), PROMPT, [1, 2])
    assert rel_err(a, b) < 1e-5


def test_batch_of_sequences_equals_each_alone(tmp_path):
    write_hf_model(tmp_path / "m", ODD, random_weights(ODD, VOCAB, seed=6), "F32")
    model = load_model(tmp_path / "m")
    alone = [np.frombuffer(SoloSequence(model.kernel).forward(p), np.float32) for p in (PROMPT, [7, 8])]
    cache = model.kernel.new_cache(n_blocks=8, block_size=4)
    together = model.kernel.step(cache, [StepInput([0, 1, 2], 0, PROMPT, logits="last"), StepInput([5], 0, [7, 8], logits="last")])
    for a, t in zip(alone, together):
        np.testing.assert_array_equal(a, np.frombuffer(t.logits, np.float32))


def test_kernel_rejects_bad_inputs_without_touching_the_cache(tmp_path):
    write_hf_model(tmp_path / "m", ODD, random_weights(ODD, VOCAB, seed=7), "F32")
    model = load_model(tmp_path / "m", context_length=16)
    seq = SoloSequence(model.kernel)
    seq.forward([1, 2, 3])
    with pytest.raises(_kernel.KernelError, match="outside the vocabulary"):
        seq.forward([VOCAB + 5])
    with pytest.raises(_kernel.KernelError, match="context is 16"):
        seq.forward(list(range(14)))
    with pytest.raises(_kernel.KernelError, match="no new tokens"):
        seq.forward([])
    assert len(seq) == 3


def test_truncate_rolls_back_the_cache(tmp_path):
    write_hf_model(tmp_path / "m", ODD, random_weights(ODD, VOCAB, seed=8), "F32")
    model = load_model(tmp_path / "m")
    seq = SoloSequence(model.kernel)
    seq.forward(PROMPT)
    first = seq.forward([9])
    seq.truncate(len(PROMPT))
    again = seq.forward([9])
    assert first == again


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantize_at_load_matches_reference_on_quantized_weights(tmp_path, kind):
    # `serve --quantize`: f16 matrices are stored as blocks at load. The logits must
    # match the reference given the block-rounded weights (q4_0 keeps the
    # embedding at q8_0) better than the reference given the f16 ones.
    stored = write_hf_model(tmp_path / "m", BLOCKY, random_weights(BLOCKY, VOCAB, seed=9), "F16")
    blocked = {}
    for name, w in stored.items():
        fmt = "Q8_0" if kind == "q8_0" or name == "model.embed_tokens.weight" else "Q4_0"
        blocked[name] = dequantize(quantize(w, fmt), fmt, w.shape) if w.ndim == 2 else w
    decode = [17, 3, 260, 42]
    ours = kernel_logits(load_model(tmp_path / "m", quantize=kind), PROMPT, decode)
    cfg = reference_config(BLOCKY, VOCAB)
    err_blocked = rel_err(ours, reference.llama(cfg, reference_weights(blocked), PROMPT + decode))
    err_f16 = rel_err(ours, reference.llama(cfg, reference_weights(stored), PROMPT + decode))
    assert err_blocked < 3e-2 and err_blocked < err_f16, (err_blocked, err_f16)


def test_quantize_leaves_block_formats_alone(tmp_path):
    write_gguf_model(tmp_path / "m.gguf", BLOCKY, random_weights(BLOCKY, VOCAB, seed=10), "Q4_1")
    plain = kernel_logits(load_model(tmp_path / "m.gguf"), PROMPT, [1])
    asked = kernel_logits(load_model(tmp_path / "m.gguf", quantize="q8_0"), PROMPT, [1])
    np.testing.assert_array_equal(plain, asked)


def test_a_prompt_longer_than_a_chunk_matches_reference(tmp_path):
    # The kernel runs prompts 512 tokens at a time; positions past the first chunk
    # attend to the cache the first one filled.
    cfg = TinyConfig(**{**ODD.__dict__, "context_length": 1024})
    stored = write_hf_model(tmp_path / "m", cfg, random_weights(cfg, VOCAB, seed=11), "F32")
    model = load_model(tmp_path / "m")
    prompt = [(i * 7919) % VOCAB for i in range(600)]
    ours = kernel_logits(model, prompt, [5])
    ref = reference.llama(reference_config(cfg, VOCAB), reference_weights(stored), prompt + [5])
    assert rel_err(ours, ref) < 1e-4
    last = SoloSequence(model.kernel).forward(prompt)
    np.testing.assert_allclose(np.frombuffer(last, np.float32), ours[len(prompt) - 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["Q4_1", "F32"])
def test_a_prompt_at_once_equals_token_by_token_exactly(tmp_path, kind):
    # A prompt takes other paths than decoding (tiles of several tokens, attention
    # that shares each key among queries and heads); every sum runs in the same
    # order, so the logits are the same to the bit.
    write_gguf_model(tmp_path / "m.gguf", BLOCKY, random_weights(BLOCKY, VOCAB, seed=12), kind)
    model = load_model(tmp_path / "m.gguf")
    prompt = [(i * 7919 + 3) % VOCAB for i in range(40)]
    raw = SoloSequence(model.kernel).forward(prompt, all_logits=True)
    at_once = np.frombuffer(raw, np.float32).reshape(len(prompt), -1)
    seq = SoloSequence(model.kernel)
    one_by_one = np.array([np.frombuffer(seq.forward([t]), np.float32) for t in prompt])
    np.testing.assert_array_equal(at_once, one_by_one)


def test_a_recycled_cache_starts_empty(tmp_path):
    # A finished sequence's cache is kept for the next one (its memory is warm);
    # the next sequence must not see what it held.
    write_hf_model(tmp_path / "m", ODD, random_weights(ODD, VOCAB, seed=13), "F32")
    model = load_model(tmp_path / "m")
    old = SoloSequence(model.kernel)
    old.forward(PROMPT)
    cache = old.cache
    del old
    recycled, fresh = SoloSequence(model.kernel), SoloSequence(model.kernel)
    assert recycled.cache is cache and len(recycled) == 0
    assert recycled.forward([1, 2, 3]) == fresh.forward([1, 2, 3])
