"""`n`: several choices of one prompt. Each is its own sample (reproducible with
a seed, the first equal to the request's n=1 answer), the prompt is computed
once and its cache blocks shared, streams interleave the choices by index,
and usage counts the prompt once."""

from __future__ import annotations

import httpx
import openai
import pytest

import openapi

MODEL = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Write one sentence about the sea."}]
SAMPLED = dict(temperature=1.0, top_p=1.0, seed=42, max_tokens=12)


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0)


def test_chat_choices_are_distinct_samples_reproducible_with_a_seed(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=STORY, n=3, **SAMPLED,
                                                          extra_body={"ignore_eos": True})
    body = raw.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == 3
    one = client.chat.completions.create(model=MODEL, messages=STORY, **SAMPLED, extra_body={"ignore_eos": True})
    assert texts[0] == one.choices[0].message.content  # the first choice has the request's own seed
    again = client.chat.completions.create(model=MODEL, messages=STORY, n=3, **SAMPLED, extra_body={"ignore_eos": True})
    assert [c.message.content for c in again.choices] == texts
    assert body["usage"]["prompt_tokens"] == one.usage.prompt_tokens  # the prompt counts once
    assert body["usage"]["completion_tokens"] == 3 * 12


def test_a_chat_stream_interleaves_the_choices_by_index(client):
    whole = client.chat.completions.create(model=MODEL, messages=STORY, n=3, **SAMPLED)
    chunks = list(client.chat.completions.create(model=MODEL, messages=STORY, n=3, stream=True,
                                                 stream_options={"include_usage": True}, **SAMPLED))
    texts, ends, roles = ["", "", ""], {}, set()
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c.model_dump(mode="json", exclude_unset=True))
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            roles.add(choice.index) if choice.delta.role else None
            if choice.finish_reason:
                assert choice.index not in ends
                ends[choice.index] = choice.finish_reason
    assert roles == {0, 1, 2} and set(ends) == {0, 1, 2}
    assert texts == [c.message.content for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_choices_come_prompt_by_prompt(client):
    prompts = ["The sea is", "My favourite food is"]
    body = client.completions.create(model=MODEL, prompt=prompts, n=2, echo=True, **SAMPLED).model_dump(mode="json", exclude_unset=True)
    openapi.validate("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"].startswith(p) for c, p in zip(body["choices"], [prompts[0]] * 2 + [prompts[1]] * 2)] == [True] * 4
    alone = [client.completions.create(model=MODEL, prompt=p, **SAMPLED) for p in prompts]
    assert body["usage"]["prompt_tokens"] == sum(a.usage.prompt_tokens for a in alone)
    streamed = ["", "", "", ""]
    for c in client.completions.create(model=MODEL, prompt=prompts, n=2, echo=True, stream=True, **SAMPLED):
        for choice in c.choices:
            streamed[choice.index] += choice.text
    assert streamed == [c["text"] for c in body["choices"]]


@pytest.mark.parametrize("n", [0, 129, 1.5, "2"])
def test_n_out_of_bounds_is_a_400_naming_it(server_url, n):
    r = httpx.post(server_url + "/chat/completions", json={"model": MODEL, "messages": STORY, "n": n, "max_tokens": 2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_a_named_service_tier_is_answered_with_the_one_tier_there_is(client, server_url):
    reply = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=3, service_tier="auto")
    openapi.validate("CreateChatCompletionResponse", reply.model_dump(mode="json", exclude_unset=True))
    assert reply.service_tier == "default"
    chunks = list(client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=3, service_tier="flex", stream=True))
    assert {c.service_tier for c in chunks} == {"default"}
    assert "service_tier" not in client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=3).model_dump(exclude_unset=True)
    r = httpx.post(server_url + "/chat/completions", json={"model": MODEL, "messages": STORY, "service_tier": "gold"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "service_tier"
