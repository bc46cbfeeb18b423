"""`suffix` on /v1/completions: a model whose vocabulary has fill-in-the-middle
tokens completes between the prompt and the suffix (prefix-suffix-middle
prompt, as llama.cpp's infill builds it); any other model answers a 400."""

from __future__ import annotations

import httpx
import pytest

from conftest import running_server
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence
from pycompat.loading.load import load_model
from tiny_models import TinyConfig, byte_vocab, random_weights, write_hf_model

FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96)


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fim") / "fim-model"
    write_hf_model(path, CFG, random_weights(CFG, len(byte_vocab(FIM)[0]), seed=11), "F32", extra_specials=FIM)
    return path


def greedy(kernel, prompt: list[int], n: int) -> list[int]:
    seq, out, sampler = SoloSequence(kernel), [], _kernel.Sampler(temperature=0.0)
    token = seq.step(prompt, sampler)
    for _ in range(n - 1):
        out.append(token)
        token = seq.step([token], sampler)
    return out + [token]


def test_a_suffix_fills_in_the_middle(fim_model, tmp_path):
    model = load_model(fim_model)
    tok = model.tokenizer
    assert tok.fim_ids == tuple(tok._tk.token_to_id(t) for t in FIM)
    prefix, suffix = "def add(a, b):\n    return", "\n\nprint(add(1, 2))\n"
    expected_prompt = [*tok.fim_ids[:1], *tok.encode(prefix, add_bos=False), tok.fim_ids[1],
                       *tok.encode(suffix, add_bos=False), tok.fim_ids[2]]
    expected = tok.decode(greedy(model.kernel, expected_prompt, 6))
    with running_server(tmp_path / "serve.log", "--model", str(fim_model)) as (_, url):
        body = httpx.post(url + "/completions", timeout=60, json={
            "model": "fim-model", "prompt": prefix, "suffix": suffix, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
        }).json()
    assert body["usage"]["prompt_tokens"] == len(expected_prompt)
    assert body["choices"][0]["text"] == expected


def test_a_model_without_fim_tokens_refuses_a_suffix(server_url):
    response = httpx.post(server_url + "/completions", timeout=60,
                          json={"model": "smollm2-135m-instruct", "prompt": "x = ", "suffix": "\n"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "suffix"
    ok = httpx.post(server_url + "/completions", timeout=60,
                    json={"model": "smollm2-135m-instruct", "prompt": "x = ", "suffix": "", "max_tokens": 1})
    assert ok.status_code == 200  # an empty suffix asks for nothing in the middle: a plain completion
