"""Log-probabilities: the kernel's against a numpy log-softmax of its own
logits, and both OpenAI shapes (chat's ``logprobs.content``, the legacy
completions object) through a real server and the official SDK."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

import openapi
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence, StepInput

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Name three fruits."}]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def test_the_kernels_logprobs_are_a_log_softmax_of_its_logits(default_model):
    kernel, prompt = default_model.kernel, default_model.tokenizer.encode("The capital of France is")
    cache = kernel.new_cache(n_blocks=8, block_size=16)
    sampler = _kernel.Sampler(temperature=0.9, seed=3)  # a sampled token, not always the likeliest
    table, tokens = list(range(8)), list(prompt)
    for _ in range(6):
        (out,) = kernel.step(cache, [StepInput(table, 0, tokens, sampler, "last", 5)])  # the whole text again each time
        expected = log_softmax(np.frombuffer(out.logits, np.float32))
        assert abs(out.logprob - expected[out.token]) < 1e-5
        order = np.argsort(-expected, kind="stable")[:5]
        assert [t for t, _ in out.top_logprobs] == list(order)
        np.testing.assert_allclose([lp for _, lp in out.top_logprobs], expected[order], atol=1e-5)
        tokens.append(out.token)


def teacher_forced_logprobs(model, prompt: list[int], generated: list[int]) -> np.ndarray:
    """Each generated token's log-probability, from the kernel's logits over the whole text at once."""
    rows = np.frombuffer(SoloSequence(model.kernel).forward(prompt + generated, all_logits=True), np.float32)
    rows = rows.reshape(len(prompt) + len(generated), -1)[len(prompt) - 1 : -1]
    return np.array([log_softmax(row)[t] for row, t in zip(rows, generated)])


def test_chat_logprobs_through_the_sdk(server_url, default_model):
    client = openai.OpenAI(base_url=server_url, api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    openapi.validate("CreateChatCompletionResponse", reply.model_dump(mode="json", exclude_unset=True))
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 12
    assert b"".join(bytes(e.bytes) for e in entries).decode() == choice.message.content
    for e in entries:
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob  # greedy: the likeliest
    # The same numbers as a log-softmax of the kernel's logits over prompt and answer at once.
    tk = default_model.tokenizer
    prompt = tk.encode(default_model.chat_template.render(QUESTION))
    generated = tk.encode(choice.message.content, add_bos=False)
    assert [tk.token_bytes(t) for t in generated] == [bytes(e.bytes) for e in entries]  # the text re-encodes to the same tokens
    np.testing.assert_allclose([e.logprob for e in entries], teacher_forced_logprobs(default_model, prompt, generated), atol=2e-3)

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True,
                                                 top_logprobs=3, stream=True))
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c.model_dump(mode="json", exclude_unset=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]


def test_chat_without_top_logprobs_gives_the_chosen_tokens_only(server_url):
    client = openai.OpenAI(base_url=server_url, api_key="unused")
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, logprobs=True)
    assert [e.top_logprobs for e in reply.choices[0].logprobs.content] == [[]] * 4
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == reply.choices[0].message.content


def test_completions_logprobs_in_the_legacy_shape(server_url):
    client = openai.OpenAI(base_url=server_url, api_key="unused")
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    body = reply.model_dump(mode="json", exclude_unset=True)
    openapi.validate("CreateCompletionResponse", body)
    lp = body["choices"][0]["logprobs"]
    text = body["choices"][0]["text"]
    assert "".join(lp["tokens"]) == text and len(lp["token_logprobs"]) == 8
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(8)]
    for chosen, token, top in zip(lp["token_logprobs"], lp["tokens"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 2 and max(top.values()) == chosen and top[token] == chosen  # greedy

    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
                                            logprobs=2, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp["tokens"]
    assert [o for s in streamed for o in s.text_offset] == lp["text_offset"]


@pytest.mark.parametrize("path, body, param", [
    ("/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/chat/completions", {"messages": QUESTION, "top_logprobs": 2}, "top_logprobs"),
    ("/chat/completions", {"messages": QUESTION, "logprobs": 1}, "logprobs"),
    ("/completions", {"prompt": "Hi", "logprobs": 6}, "logprobs"),
    ("/completions", {"prompt": "Hi", "logprobs": True}, "logprobs"),
])
def test_bad_logprobs_fields_are_400s_naming_them(server_url, path, body, param):
    r = httpx.post(server_url + path, json={"model": MODEL, "max_tokens": 2, **body}, timeout=30)
    assert r.status_code == 400, r.text
    openapi.validate("ErrorResponse", r.json())
    assert r.json()["error"]["param"] == param


def test_echo_returns_the_prompt_before_the_completion(server_url):
    client = openai.OpenAI(base_url=server_url, api_key="unused")
    ask = dict(model=MODEL, max_tokens=5, temperature=0)
    plain = client.completions.create(prompt=["The sky is", "Two plus two"], **ask)
    echoed = client.completions.create(prompt=["The sky is", "Two plus two"], echo=True, **ask)
    openapi.validate("CreateCompletionResponse", echoed.model_dump(mode="json", exclude_unset=True))
    assert [c.text for c in echoed.choices] == ["The sky is" + plain.choices[0].text, "Two plus two" + plain.choices[1].text]
    streamed = list(client.completions.create(prompt="The sky is", echo=True, stream=True, **ask))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text
    nothing = client.completions.create(prompt="The sky is", echo=True, **{**ask, "max_tokens": 0})
    assert nothing.choices[0].text == "The sky is" and nothing.usage.completion_tokens == 0


def test_a_suffix_is_refused_by_a_model_without_fill_in_the_middle_tokens(server_url):
    body = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 4}
    r = httpx.post(server_url + "/completions", json={**body, "suffix": "    return c"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
    openapi.validate("ErrorResponse", r.json())
    assert httpx.post(server_url + "/completions", json={**body, "suffix": ""}, timeout=30).status_code == 200
