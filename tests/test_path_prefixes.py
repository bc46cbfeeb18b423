"""Every OpenAI route under /v1, /openai/v1 (Bifrost's drop-in base URL) and
/v3 (OpenVINO Model Server's): the same answers, byte for byte but for the
fields that differ between any two calls (id, created)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import openapi

MODEL = "smollm2-135m-instruct"
PREFIXES = ["/v1", "/openai/v1", "/v3"]
GREEDY_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0}
GREEDY_TEXT = {"model": MODEL, "prompt": "The sky is", "max_tokens": 6, "temperature": 0}


def root(server_url: str) -> str:
    return server_url.removesuffix("/v1")


def masked(response: httpx.Response, prefix: str) -> tuple[int, str, bytes]:
    """Status, content type and body, with the per-call id and created time
    blanked, and the prefix where an error message quotes the path."""
    body = response.content.replace(f"{prefix}/".encode(), b"{prefix}/")
    if response.headers["content-type"].startswith("application/json"):
        value = json.loads(body)
        if isinstance(value, dict):
            value.pop("id", None), value.pop("created", None)
        body = json.dumps(value, sort_keys=True).encode()
    return response.status_code, response.headers["content-type"], body


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/models", None),
    ("GET", f"/models/{MODEL}", None),
    ("GET", "/models/nope", None),
    ("POST", "/chat/completions", GREEDY_CHAT),
    ("POST", "/completions", GREEDY_TEXT),
    ("POST", "/chat/completions", {**GREEDY_CHAT, "temperature": 3}),
    ("DELETE", "/completions", None),
    ("GET", "/nothing/here", None),
])
def test_each_prefix_gives_the_same_answer(server_url, method, path, body):
    with httpx.Client(timeout=60) as client:
        client.request(method, root(server_url) + "/v1" + path, json=body)  # so every answer finds the prompt cached
        answers = [masked(client.request(method, root(server_url) + prefix + path, json=body), prefix) for prefix in PREFIXES]
    assert answers[1:] == answers[:1] * 2, answers


@pytest.mark.parametrize("prefix", ["/openai/v1", "/v3"])
def test_the_sdk_works_with_each_base_url(server_url, prefix):
    client = openai.OpenAI(base_url=root(server_url) + prefix, api_key="unused")
    assert [m.id for m in client.models.list()][0] == MODEL
    reply = client.chat.completions.create(**GREEDY_CHAT)
    openapi.validate("CreateChatCompletionResponse", reply.model_dump(mode="json", exclude_unset=True))
    chunks = list(client.chat.completions.create(**GREEDY_CHAT, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
