"""openai-node (npm `openai`) against a real pycompat server: chat, stream,
`chat.completions.parse` with a zod schema (whole and streamed), a forced tool call, embeddings and
the Responses API (plain, streamed, and `responses.parse` with zod).

Each case is one run of node/openai_client.mjs, which prints what the SDK
handed back as JSON; the checks are here."""

from __future__ import annotations

import json
import subprocess

import pytest

from clients.conftest import EMBEDDING_DIMENSIONS, NODE_DIR, node_package

SCRIPT = NODE_DIR / "openai_client.mjs"


@pytest.fixture(scope="module")
def node():
    node_package("zod")
    return node_package("openai")


def run_case(node, client_server, case: str) -> dict:
    done = subprocess.run([str(node), str(SCRIPT), case, client_server.api_url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"openai-node case {case} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_chat(node, client_server):
    out = run_case(node, client_server, "chat")
    assert out["content"].strip() and out["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] > 0


def test_stream_comes_in_pieces_that_join_to_the_whole_answer(node, client_server):
    out = run_case(node, client_server, "stream")
    assert len(out["pieces"]) > 1
    assert "".join(out["pieces"]) == out["whole"] and out["whole"].strip()
    assert out["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] >= len(out["pieces"])  # include_usage: counts in the last chunk


def test_chat_completions_parse_with_zod(node, client_server):
    out = run_case(node, client_server, "parse")
    assert out["refusal"] is None
    parsed = out["parsed"]
    assert set(parsed) == {"name", "country"} and all(isinstance(v, str) for v in parsed.values())
    assert json.loads(out["content"]) == parsed


def test_streamed_chat_completions_parse_with_zod(node, client_server):
    out = run_case(node, client_server, "stream_parse")
    assert out["deltas"] > 1
    parsed = out["parsed"]
    assert set(parsed) == {"name", "country"} and all(isinstance(v, str) for v in parsed.values())
    assert json.loads(out["content"]) == parsed


def test_forced_tool_call(node, client_server):
    out = run_case(node, client_server, "tools")
    assert out["finish_reason"] == "tool_calls"
    [call] = out["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather" and call["id"]
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)


def test_embeddings(node, client_server):
    out = run_case(node, client_server, "embeddings")
    # openai-node asks for base64 unless told otherwise and decodes it: right lengths mean both ends agree.
    assert out["lengths"] == [EMBEDDING_DIMENSIONS] * 2
    assert all(isinstance(x, float) and -1 <= x <= 1 for x in out["first"])
    assert out["usage"]["prompt_tokens"] > 0


def test_responses(node, client_server):
    out = run_case(node, client_server, "responses")
    assert out["status"] == "completed" and out["output_text"].strip()
    assert out["id"].startswith("resp_")


def test_responses_stream(node, client_server):
    out = run_case(node, client_server, "responses_stream")
    assert out["status"] == "completed"
    assert len(out["deltas"]) > 1 and "".join(out["deltas"]) == out["output_text"]


def test_responses_parse_with_zod(node, client_server):
    out = run_case(node, client_server, "responses_parse")
    parsed = out["parsed"]
    assert set(parsed) == {"name", "country"} and all(isinstance(v, str) for v in parsed.values())
    assert json.loads(out["output_text"]) == parsed

