"""One server, several models (`--model` repeated): each listed and routed by
the request's `model`, each route refusing a model of the wrong kind with a 400
that says so; two models under one id do not start."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np

from conftest import running_server
from tiny_bert import write_tiny_bert
from tiny_models import TinyConfig, byte_vocab, random_weights, write_hf_model

CFG = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96)


def test_a_text_model_and_an_embedding_model_side_by_side(tmp_path):
    write_hf_model(tmp_path / "tiny-chat", CFG, random_weights(CFG, len(byte_vocab()[0]), seed=3), "F32")
    write_tiny_bert(tmp_path / "tiny-bert")
    with running_server(tmp_path / "serve.log", "--model", str(tmp_path / "tiny-chat"), "--model", str(tmp_path / "tiny-bert"),
                        "--alias", "first") as (_, url):
        with httpx.Client(base_url=url, timeout=60) as client:
            assert [m["id"] for m in client.get("/models").json()["data"]] == ["tiny-chat", "first", "tiny-bert"]
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            assert client.post("/chat/completions", json={"model": "first", **chat}).status_code == 200
            refused = client.post("/chat/completions", json={"model": "tiny-bert", **chat})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
            assert "embedding model" in refused.json()["error"]["message"]
            for model, dim in (("tiny-bert", 64), ("tiny-chat", CFG.dim)):
                reply = client.post("/embeddings", json={"model": model, "input": ["the cat sat", "hello world"]})
                rows = np.array([d["embedding"] for d in reply.json()["data"]])
                assert rows.shape == (2, dim) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


def test_two_models_under_one_id_do_not_start(tmp_path):
    (tmp_path / "a").mkdir()
    write_tiny_bert(tmp_path / "a" / "same")
    write_tiny_bert(tmp_path / "same")
    done = subprocess.run([sys.executable, "-m", "pycompat", "serve", "--port", "0", "--model", str(tmp_path / "same"),
                           "--model", str(tmp_path / "a" / "same")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "two models are served as 'same'" in done.stderr
