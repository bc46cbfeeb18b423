"""ollama-js (npm `ollama`) against pycompat's Ollama API: list, show, chat
(whole and streamed), generate, embed, a JSON-schema ``format``, tools and an
error. node/ollama_client.mjs runs every case in one node process and prints
what the library handed back; the checks are here."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest

from clients.conftest import CHAT_MODEL, EMBEDDING_DIMENSIONS, NODE_DIR, node_package


@pytest.fixture(scope="module")
def out(client_server) -> dict:
    node = node_package("ollama")
    done = subprocess.run([str(node), str(NODE_DIR / "ollama_client.mjs"), client_server.base_url],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ollama-js failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_list_and_show(out):
    chat = next(m for m in out["list"] if m["name"] == f"{CHAT_MODEL}:latest")
    assert chat["model"] == chat["name"] and chat["size"] > 50_000_000 and chat["family"] == "llama"
    assert out["show"]["architecture"] == "llama" and "tools" in out["show"]["capabilities"]
    assert "{{ .Prompt }}" in out["show"]["template"]


def test_chat_whole_and_streamed(out):
    assert out["chat"]["content"].strip() and out["chat"]["done"] is True and out["chat"]["eval_count"] > 0
    assert len(out["stream"]) > 2 and "".join(out["stream"]) == out["chat"]["content"]
    assert out["stream_final"]["eval_count"] == out["chat"]["eval_count"]


def test_generate(out):
    g = out["generate"]
    assert g["response"].strip() and abs(g["context_length"] - g["prompt_eval_count"] - g["eval_count"]) <= 1


def test_embed(out):
    assert out["embed"] == {"count": 2, "dimensions": EMBEDDING_DIMENSIONS}


def test_format_and_tools(out):
    jsonschema.validate(json.loads(out["format"]), {"type": "object", "properties": {"color": {"type": "string"}},
                                                    "required": ["color"]})
    (call,) = out["tools"]
    assert call["function"]["name"] == "get_weather" and isinstance(call["function"]["arguments"]["city"], str)


def test_errors_reach_the_library(out):
    assert out["error"]["status_code"] == 404 and "not found" in out["error"]["message"]
