"""`pycompat convert`: the bundled GGUF as a Hugging Face directory gives the
same model through the safetensors path."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import reference
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence
from pycompat.loading.convert import convert_gguf_to_hf
from pycompat.loading.gguf_model import load_gguf
from pycompat.loading.load import default_model_path, load_model

PROMPT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
TEXT = (Path(__file__).parent / "data" / "english.txt").read_text()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "smollm2-f32"
    convert_gguf_to_hf(default_model_path(), out, "f32")
    return out


def logits(model, ids):
    raw = SoloSequence(model.kernel).forward(ids, all_logits=True)
    return np.frombuffer(raw, np.float32).reshape(len(ids), -1)


def test_converted_directory_matches_the_numpy_reference(converted, default_model):
    # f32 conversion is exact, so the safetensors path must equal the reference on the
    # GGUF's dequantized weights (which checks the Q/K un-permutation too).
    spec = load_gguf(default_model_path())
    weights = {t.name: np.frombuffer(_kernel.dequantize(t.dtype, t.data.cast("B"), int(np.prod(t.shape))), np.float32).reshape(t.shape)
               for t in spec.weights.tensors}
    config = asdict(spec.weights.config)
    spec.release()
    ids = default_model.tokenizer.encode(PROMPT)[:12]
    ref = reference.llama(config, weights, ids)
    ours = logits(load_model(converted), ids)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_converted_directory_agrees_with_the_gguf(converted, default_model):
    hf = load_model(converted)
    assert hf.tokenizer.encode(PROMPT) == default_model.tokenizer.encode(PROMPT)
    assert hf.chat_template.render([{"role": "user", "content": "hi"}]) == default_model.chat_template.render([{"role": "user", "content": "hi"}])
    assert hf.tokenizer.stop_ids == default_model.tokenizer.stop_ids
    ids = default_model.tokenizer.encode(TEXT)[:256]
    a, b = logits(hf, ids), logits(default_model, ids)
    # The GGUF path rounds activations to 8 bits (as llama.cpp does); the f32
    # directory does not. Measured: logits move by up to 6.4% of the largest
    # (3.8% on the portable kernels), and the gap between the GGUF's top two
    # choices by up to 0.54 (400 tokens), so the choices must be the same
    # wherever that gap is more than one logit (half the positions).
    assert np.abs(a - b).max() / np.abs(a).max() < 0.1
    top2 = np.sort(b, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1.0
    assert clear.mean() > 0.35 and (a.argmax(1) == b.argmax(1))[clear].all()


def test_f16_and_bf16_conversions_load(tmp_path, converted, default_model):
    # Against the f32 conversion, not the GGUF: the GGUF's first choice here
    # leads its second by only 0.3, which its 8-bit activations can overturn.
    # Half-precision weights (and the f16 KV cache they bring) moved logits over
    # 400 tokens by 1.2e-3 (f16) and 8.5e-3 (bf16) of the largest.
    ids = default_model.tokenizer.encode(PROMPT)
    full = logits(load_model(converted), ids)
    for dtype, tol in (("f16", 5e-3), ("bf16", 3e-2)):
        out = convert_gguf_to_hf(default_model_path(), tmp_path / dtype, dtype)
        err = np.abs(logits(load_model(out), ids) - full).max() / np.abs(full).max()
        assert err < tol, (dtype, err)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_quantize_q8_0_serves_a_converted_directory(converted, tmp_path, default_model):
    # `serve --quantize q8_0` end to end: the f32 directory is stored as Q8_0 blocks
    # at load (a quarter of its size) and answers like the Q4_1 file it came from.
    import httpx
    from conftest import peak_rss_bytes, running_server

    with running_server(tmp_path / "serve.log", "--model", str(converted), "--quantize", "q8_0") as (proc, url):
        r = httpx.post(f"{url}/chat/completions", json={"model": converted.name, "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                                                       "temperature": 0, "max_tokens": 16}, timeout=120)
        rss = peak_rss_bytes(proc.pid)
    assert r.status_code == 200, r.text
    assert "4" in r.json()["choices"][0]["message"]["content"]
    f32_bytes = sum(f.stat().st_size for f in converted.glob("*.safetensors"))
    # The f32 weights are not held as such: they alone would be f32_bytes. The rest
    # (Q8_0 weights, a quarter; Python and its libraries) measured 0.50 of it.
    assert rss < f32_bytes * 0.75, (rss, f32_bytes)
