"""presence_penalty, frequency_penalty, repetition_penalty and ignore_eos through
the official `openai` SDK against a real server, on both routes; every body is
validated against OpenAI's spec. (The formula itself is tested in
rust/sampler.rs, on hand-made logits.)"""

from __future__ import annotations


import openai
import pytest

import openapi

MODEL = "smollm2-135m-instruct"
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0}
# SmolLM2-135M answers this one briefly (about a dozen tokens) when greedy.
QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
# The same question as a completion: the prompt holds the chat template's
# special tokens, so the answer ends with the end-of-turn token there too.
QUESTION_AS_PROMPT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
# Greedy answers that repeat themselves: the chat one comes back to "A world of
# ..." lines, the completion one to "The cat sat on the mat".
REPETITIVE_CHAT = [{"role": "user", "content": "Write a poem about the sea."}]
REPETITIVE_PROMPT = "The cat sat on the mat. The cat sat on the mat. The cat"
LENGTH = 64  # tokens per answer, all generated (ignore_eos), so that counts compare


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=120)


def chat(client, extra_body=None, **kw) -> dict:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, extra_body=extra_body, **kw)
    body = raw.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    return body


def complete(client, extra_body=None, **kw) -> dict:
    raw = client.completions.with_raw_response.create(model=MODEL, extra_body=extra_body, **kw)
    body = raw.http_response.json()
    openapi.validate("CreateCompletionResponse", body)
    return body


def answer(client, route: str, penalties: dict, **kw) -> dict:
    """One greedy answer of ``route``; OpenAI's fields as the SDK's arguments, the extras in ``extra_body``."""
    extra = {k: v for k, v in penalties.items() if k in ("repetition_penalty", "ignore_eos")}
    openai_fields = {k: v for k, v in penalties.items() if k not in extra}
    if route == "chat":
        body = chat(client, extra_body=extra, messages=kw.pop("messages", REPETITIVE_CHAT), **openai_fields, **kw)
        body["text"] = body["choices"][0]["message"]["content"]
    else:
        body = complete(client, extra_body=extra, prompt=kw.pop("prompt", REPETITIVE_PROMPT), **openai_fields, **kw)
        body["text"] = body["choices"][0]["text"]
    return body


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_neutral_penalties_give_the_same_text_as_none(client, route):
    # Sampled, not greedy, so that a changed logit anywhere would show.
    kw = dict(temperature=1.0, seed=11, max_tokens=40)
    plain = answer(client, route, {}, **kw)["text"]
    assert answer(client, route, {**NEUTRAL, "repetition_penalty": 1, "ignore_eos": False}, **kw)["text"] == plain
    assert answer(client, route, {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}, **kw)["text"] == plain
    assert answer(client, route, {"frequency_penalty": 1.5}, **kw)["text"] != plain


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_penalties_change_a_repetitive_answer_in_their_direction(client, route):
    # Measured in tokens, what the penalties count: how many distinct tokens the
    # 64 generated ones hold (the logprobs give them back).
    kw = dict(temperature=0, seed=1, max_tokens=LENGTH)

    def distinct_tokens(penalties: dict) -> int:
        asked = {"logprobs": True} if route == "chat" else {"logprobs": 0}
        body = answer(client, route, {**penalties, "ignore_eos": True}, **asked, **kw)
        assert body["usage"]["completion_tokens"] == LENGTH
        logprobs = body["choices"][0]["logprobs"]
        tokens = [tuple(e["bytes"]) for e in logprobs["content"]] if route == "chat" else logprobs["tokens"]
        assert len(tokens) == LENGTH
        return len(set(tokens))

    plain = distinct_tokens({})
    assert plain < LENGTH * 3 // 4, "the greedy answer should repeat itself"
    for name in ("frequency_penalty", "presence_penalty"):
        assert distinct_tokens({name: 2.0}) > plain, name
        assert distinct_tokens({name: -1.0}) < plain, name
    assert distinct_tokens({"repetition_penalty": 1.5}) > plain


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_ignore_eos_generates_exactly_max_tokens(client, route):
    kw = dict(messages=QUESTION) if route == "chat" else dict(prompt=QUESTION_AS_PROMPT)
    brief = answer(client, route, {}, temperature=0, max_tokens=60, **kw)
    assert brief["choices"][0]["finish_reason"] == "stop" and brief["usage"]["completion_tokens"] < 60
    for n in (60, 25):
        body = answer(client, route, {"ignore_eos": True}, temperature=0, max_tokens=n, **kw)
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == n
        assert body["text"].startswith(brief["text"])
    stop = brief["text"].split()[1]  # a stop string still ends it
    body = answer(client, route, {"ignore_eos": True}, temperature=0, max_tokens=60, stop=[stop], **kw)
    assert body["choices"][0]["finish_reason"] == "stop" and stop not in body["text"]


def test_ignore_eos_streams_to_max_tokens(client):
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = [c.to_dict() for c in stream]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    assert chunks[-1]["usage"]["completion_tokens"] == 30
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


@pytest.mark.parametrize("field, value, words", [
    ("presence_penalty", 2.5, "Expected a value <= 2, but got 2.5 instead."),
    ("presence_penalty", -3, "Expected a value >= -2, but got -3 instead."),
    ("frequency_penalty", 2.01, "Expected a value <= 2, but got 2.01 instead."),
    ("frequency_penalty", -2.5, "Expected a value >= -2, but got -2.5 instead."),
    ("frequency_penalty", "high", "expected a decimal, but got"),
    ("repetition_penalty", 0, "Expected a value > 0, but got 0 instead."),
    ("repetition_penalty", -1, "Expected a value > 0, but got -1 instead."),
    ("repetition_penalty", 10.5, "Expected a value <= 10, but got 10.5 instead."),
    ("repetition_penalty", True, "expected a decimal, but got"),
    ("ignore_eos", "yes", "expected a boolean, but got a string"),
    ("ignore_eos", 1, "expected a boolean, but got an integer"),
])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_out_of_bounds_values_are_400_naming_the_param(client, route, field, value, words):
    with pytest.raises(openai.BadRequestError) as e:
        _send(client, route, {field: value})
    body = e.value.response.json()
    openapi.validate("ErrorResponse", body)
    assert body["error"]["param"] == field and words in body["error"]["message"], body
    assert body["error"]["message"].startswith(("Invalid '", "Invalid type for '")) and f"'{field}'" in body["error"]["message"]


def _send(client, route: str, extra_body: dict) -> None:
    if route == "chat":
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, extra_body=extra_body)
    else:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body=extra_body)


def test_bounds_are_inclusive_for_presence_and_frequency(client):
    for value in (-2, 2):
        body = answer(client, "chat", {"presence_penalty": value, "frequency_penalty": value, "repetition_penalty": 10},
                      messages=QUESTION, max_tokens=3)
        assert body["usage"]["completion_tokens"] <= 3
