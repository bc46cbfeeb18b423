"""Unreadable, truncated or unsupported model files: one clear line naming the
file and the problem, from the loader and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pycompat import _kernel
from pycompat.loading.errors import ModelFileError
from pycompat.loading.gguf import read_gguf, write_gguf
from pycompat.loading.load import default_model_path, load_model
from pycompat.loading.safetensors import write_safetensors
from pycompat.models.config import ModelConfig
from tiny_models import TinyConfig, byte_vocab, random_weights, write_gguf_model, write_hf_model

VOCAB = len(byte_vocab()[0])
CFG = TinyConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64)


@pytest.fixture
def good_gguf(tmp_path):
    path = tmp_path / "good.gguf"
    write_gguf_model(path, CFG, random_weights(CFG, VOCAB), "Q8_0")
    return path


def expect_error(path, *fragments):
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for f in fragments:
        assert f in message, message
    return message


def test_a_good_tiny_gguf_loads(good_gguf):
    assert load_model(good_gguf).kernel.vocab_size == VOCAB


@pytest.mark.parametrize("keep", [3, 100, 2000, -100])
def test_truncated_gguf(tmp_path, good_gguf, keep):
    data = good_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep] if keep > 0 else data[:keep])
    expect_error(cut)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    expect_error(path, "bad magic")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.gguf", "no such file")


def test_unsupported_tensor_type_is_named(tmp_path):
    path = tmp_path / "q6k.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [("token_embd.weight", 14, (2, 256), b"\0" * 420)])
    expect_error(path, "token_embd.weight", "Q6_K", "not supported")


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "arch.gguf"
    write_gguf(path, {"general.architecture": "mamba"}, [("x", "F32", (4,), np.zeros(4, np.float32).tobytes())])
    expect_error(path, "mamba")


def test_huge_declared_counts_are_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + (1 << 40).to_bytes(8, "little"))
    expect_error(path, "implausible")


def test_gguf_reader_reads_the_real_model():
    gguf = read_gguf(default_model_path())
    try:
        assert gguf.metadata["general.architecture"] == "llama"
        assert gguf.tensors["token_embd.weight"].shape == (49152, 576)
        assert {t.ggml_type.name for t in gguf.tensors.values()} == {"Q4_1", "Q8_0", "F32"}
    finally:
        gguf.close()


def test_broken_hf_directories(tmp_path):
    d = tmp_path / "hf"
    write_hf_model(d, CFG, random_weights(CFG, VOCAB))
    (d / "config.json").write_text("{oops")
    expect_error(d, "config.json")
    write_hf_model(d, CFG, random_weights(CFG, VOCAB))
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500])
    expect_error(d)
    write_hf_model(d, CFG, random_weights(CFG, VOCAB))
    write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": np.zeros((VOCAB, 64), np.float32)})
    expect_error(d, "missing tensor")
    write_hf_model(d, CFG, random_weights(CFG, VOCAB))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    expect_error(d, "gpt2")


def test_safetensors_with_an_unsupported_dtype(tmp_path):
    d = tmp_path / "hf"
    write_hf_model(d, CFG, random_weights(CFG, VOCAB))
    header = json.dumps({"model.norm.weight": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    expect_error(d, "I64")


def test_cli_reports_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    for args in (["serve", "--model", str(bad)], ["serve", "--model", str(tmp_path / "missing")], ["convert", str(bad), str(tmp_path / "out")]):
        result = subprocess.run([sys.executable, "-m", "pycompat", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("pycompat: error:")]
        assert len(lines) == 1 and str(tmp_path) in lines[0], result.stderr


def test_cli_help_explains_every_option():
    top = subprocess.run([sys.executable, "-m", "pycompat", "--help"], capture_output=True, text=True).stdout
    assert "serve" in top and "convert" in top
    serve = subprocess.run([sys.executable, "-m", "pycompat", "serve", "--help"], capture_output=True, text=True).stdout
    for option in ("--model", "--host", "--port", "--alias", "--context-length", "--temperature"):
        assert option in serve


def test_the_kernel_refuses_an_unknown_architecture():
    config = ModelConfig("gemma", 8, 1, 2, 2, 4, 8, 10, 1e-5, True, [1.0, 0.5], 16)
    with pytest.raises(_kernel.KernelError, match='unknown architecture "gemma"'):
        _kernel.KernelModel(config, [])


def test_llama_files_with_biases_are_refused_not_served_without_them(tmp_path):
    # Biases the Llama layout has no place for would be dropped silently, and the
    # answers would be wrong: such files are refused, naming what is not supported.
    with_biases = random_weights(TinyConfig(**{**CFG.__dict__, "arch": "qwen2"}), VOCAB)
    write_gguf_model(tmp_path / "biased.gguf", CFG, with_biases, "F32")  # written as llama
    expect_error(tmp_path / "biased.gguf", "blk.0.attn_q.bias", "not supported", "'llama'")
    write_hf_model(tmp_path / "hf", CFG, random_weights(CFG, VOCAB), "F32")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "attention_bias": True}))
    expect_error(tmp_path / "hf", "attention_bias is not supported")

