"""Memory while serving: the weights are held once, and a full 2,048-token
context costs its KV cache and little else (the speed issue's bound: peak RSS
below the GGUF file's size plus 200 MB)."""

from __future__ import annotations

import sys

import httpx
import pytest

from conftest import peak_rss_bytes, running_server
from pycompat.loading.load import default_model_path, load_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_serving_a_full_2048_token_context_stays_under_file_size_plus_200_mb(tmp_path):
    tokenizer = load_model().tokenizer
    words = ("river stone bread lamp window garden " * 500).split()
    prompt = tokenizer.decode(tokenizer.encode(" ".join(words))[:2030])
    # The chat model alone (the bundled embedding model would add its own 90 MB).
    with running_server(tmp_path / "serve.log", "--model", "smollm2-135m-instruct", "--context-length", "2048") as (proc, url):
        r = httpx.post(f"{url}/completions", json={"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": 16,
                                                   "temperature": 0}, timeout=300)
        assert r.status_code == 200, r.text
        used = r.json()["usage"]["total_tokens"]
        peak = peak_rss_bytes(proc.pid)
    file_size = default_model_path().stat().st_size
    print(f"peak RSS {peak / 2**20:.0f} MiB after {used} tokens; GGUF file {file_size / 2**20:.0f} MiB")
    assert used >= 2030
    assert peak < file_size + 200 * 2**20
