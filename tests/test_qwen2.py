"""Qwen2 through the model seam: the Rust forward pass against the numpy
reference (tests/reference.py `qwen2`) on small random models whose Q, K and V
biases are as large as the products they are added to, loaded from
safetensors and from GGUF, tied and untied; and generating through the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trio

import reference
from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import Engine
from pycompat.engine.request import Finished, SamplingOptions, TextPiece, generate
from pycompat.engine.runner import SoloSequence
from pycompat.loading.convert import convert_gguf_to_hf
from pycompat.loading.errors import ModelFileError
from pycompat.loading.load import load_model
from tiny_models import TinyConfig, byte_vocab, random_weights, reference_config, reference_weights, write_gguf_model, write_hf_model

VOCAB = len(byte_vocab()[0])
# head_dim 16: prompts of 16 tokens or more take the prompt attention path.
QWEN2 = TinyConfig(arch="qwen2", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96)
PROMPT = [(i * 7919 + 5) % VOCAB for i in range(20)]
DECODE = [17, 3, 260, 42]


def logits(model, prompt: list[int], decode: list[int] = ()) -> np.ndarray:
    """Logits for every prompt position (one prefill call), then one row per decode step."""
    seq = SoloSequence(model.kernel)
    rows = list(np.frombuffer(seq.forward(prompt, all_logits=True), np.float32).reshape(len(prompt), -1))
    for tok in decode:
        rows.append(np.frombuffer(seq.forward([tok]), np.float32))
    return np.array(rows)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def config(tied: bool) -> TinyConfig:
    return TinyConfig(**{**QWEN2.__dict__, "tied": tied})


def write(fmt: str, path, cfg: TinyConfig, weights: dict, kind: str = "F32") -> dict:
    """Writes the model as a GGUF file or a Hugging Face directory; returns the stored weights."""
    if fmt == "gguf":
        return write_gguf_model(path, cfg, weights, kind)
    return write_hf_model(path, cfg, weights, kind)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_qwen2_matches_the_reference(tmp_path, fmt, tied):
    cfg = config(tied)
    stored = write(fmt, tmp_path / "m", cfg, random_weights(cfg, VOCAB, seed=21))
    ours = logits(load_model(tmp_path / "m"), PROMPT, DECODE)
    ref = reference.qwen2(reference_config(cfg, VOCAB), reference_weights(stored), PROMPT + DECODE)
    err = rel_err(ours, ref)
    assert err < 1e-4, f"largest relative difference {err:.2e}"


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_the_biases_matter(tmp_path, fmt):
    # The test above would catch a kernel that ignored the biases: without them
    # the reference is far from what the kernel computes.
    stored = write(fmt, tmp_path / "m", QWEN2, random_weights(QWEN2, VOCAB, seed=22))
    ours = logits(load_model(tmp_path / "m"), PROMPT, DECODE)
    no_bias = {name: np.zeros_like(w) if name.endswith(".bias") else w for name, w in stored.items()}
    err = rel_err(ours, reference.qwen2(reference_config(QWEN2, VOCAB), reference_weights(no_bias), PROMPT + DECODE))
    assert err > 0.1, err


def test_a_quantized_qwen2_gguf_matches_the_reference(tmp_path):
    # Q8_0 matrices (8-bit activations, f16 cache, as llama.cpp); biases stay F32.
    stored = write_gguf_model(tmp_path / "m.gguf", QWEN2, random_weights(QWEN2, VOCAB, seed=23), "Q8_0")
    ours = logits(load_model(tmp_path / "m.gguf"), PROMPT, DECODE)
    ref = reference.qwen2(reference_config(QWEN2, VOCAB), reference_weights(stored), PROMPT + DECODE)
    assert rel_err(ours, ref) < 3e-2


@pytest.mark.parametrize("tied", [False, True])
def test_a_qwen2_gguf_and_its_hugging_face_twin_give_the_same_logits(tmp_path, tied):
    # GGUF keeps Qwen2's Q/K rows in Hugging Face order and rotates (i, i + d/2) pairs.
    cfg = config(tied)
    weights = random_weights(cfg, VOCAB, seed=24)
    write_gguf_model(tmp_path / "m.gguf", cfg, weights, "F32")
    write_hf_model(tmp_path / "hf", cfg, weights, "F32")
    a = logits(load_model(tmp_path / "m.gguf"), PROMPT, DECODE)
    b = logits(load_model(tmp_path / "hf"), PROMPT, DECODE)
    assert rel_err(a, b) < 1e-5


def test_convert_writes_a_qwen2_directory(tmp_path):
    write_gguf_model(tmp_path / "m.gguf", QWEN2, random_weights(QWEN2, VOCAB, seed=25), "F32")
    out = convert_gguf_to_hf(tmp_path / "m.gguf", tmp_path / "hf", "f32")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    a = logits(load_model(tmp_path / "m.gguf"), PROMPT, DECODE)
    assert rel_err(logits(load_model(out), PROMPT, DECODE), a) < 1e-5


def test_a_qwen2_model_without_its_biases_is_refused(tmp_path):
    weights = {k: w for k, w in random_weights(QWEN2, VOCAB, seed=26).items() if not k.endswith(".bias")}
    write_hf_model(tmp_path / "hf", QWEN2, weights)
    with pytest.raises(ModelFileError, match="missing tensor blk.0.attn_q.bias"):
        load_model(tmp_path / "hf")


def test_sliding_window_attention_is_refused(tmp_path):
    write_hf_model(tmp_path / "hf", QWEN2, random_weights(QWEN2, VOCAB, seed=27))
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_sliding_window": True}))
    with pytest.raises(ModelFileError, match="use_sliding_window"):
        load_model(tmp_path / "hf")


async def test_a_qwen2_model_generates_through_the_engine(tmp_path):
    cfg = config(tied=True)
    write_hf_model(tmp_path / "hf", cfg, random_weights(cfg, VOCAB, seed=28))
    model = load_model(tmp_path / "hf")
    # The greedy continuation, token by token from the kernel's logits, as text.
    tokens, greedy = list(PROMPT), []
    for _ in range(8):
        greedy.append(int(logits(model, tokens)[-1].argmax()))
        tokens.append(greedy[-1])
    assert not model.tokenizer.stop_ids & set(greedy)  # so all 8 are generated
    decoder = model.tokenizer.decoder()
    expected = "".join(decoder.push(t) for t in greedy)

    engine = Engine(model, EngineConfig(kv_cache_mb=16))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        pieces = []
        async for event in generate(engine, PROMPT, SamplingOptions(max_tokens=8, temperature=0.0)):
            if isinstance(event, TextPiece):
                pieces.append(event.text)
        assert isinstance(event, Finished) and (event.reason, event.completion_tokens) == ("length", 8)
        assert "".join(pieces) == expected
        nursery.cancel_scope.cancel()
