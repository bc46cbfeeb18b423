"""End to end: the official `openai` SDK (sync and async clients) against a real
`pycompat serve` of the bundled model. Every body and stream chunk the SDK
receives is validated against OpenAI's OpenAPI component schemas."""

from __future__ import annotations

import openai
import pytest

import openapi
from pycompat.loading.load import DEFAULT_MODEL_SAMPLING

MODEL = "smollm2-135m-instruct"
# SmolLM2-135M answers this one correctly and briefly when greedy.
QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def greedy_answer(default_model) -> tuple[str, int]:
    """The kernel's own greedy answer to QUESTION, computed in this process: the
    server must send exactly these words. Its wording moves with the kernel's
    rounding at near-ties (llama.cpp's answer, "The answer to this classic math
    problem is 4.", picks "to" over "is" by 0.12 logits; ours have been either
    side of it), so it is taken from the kernel rather than written here. Even
    its first word is a near-tie: "The" leads by 0.49 on the AVX2 kernels and
    by 0.13 on the portable ones, so only the "4" is asserted."""
    from pycompat import _kernel
    from pycompat.engine.runner import SoloSequence

    m = default_model
    seq, sampler = SoloSequence(m.kernel), _kernel.Sampler(temperature=0.0)
    new, out = m.tokenizer.encode(m.chat_template.render(QUESTION)), []
    while len(out) < 64:
        token = seq.step(new, sampler)
        if token in m.tokenizer.stop_ids:
            break
        out.append(token)
        new = [token]
    text = m.tokenizer.decode(out)
    assert "4" in text, text
    return text, len(out)


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(server_url):
    return openai.AsyncOpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=120)


def body_of(raw) -> dict:
    """The JSON the server actually sent (not the SDK's parsed object)."""
    return raw.http_response.json()


def collect_chat_stream(stream) -> tuple[str, list[dict]]:
    chunks = [c.to_dict() for c in stream]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


def test_models_list_and_retrieve(client):
    raw = client.models.with_raw_response.list()
    body = body_of(raw)
    openapi.validate("ListModelsResponse", body)
    # The chat model and its alias, then the bundled embedding model.
    assert [m["id"] for m in body["data"]] == [MODEL, "gpt-3.5-turbo", "all-minilm-l6-v2"]
    for model_id in (MODEL, "gpt-3.5-turbo", "all-minilm-l6-v2"):
        one = body_of(client.models.with_raw_response.retrieve(model_id))
        openapi.validate("Model", one)
        assert one["id"] == model_id


def test_chat_answers_in_fluent_english(client, greedy_answer):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, temperature=0)
    body = body_of(raw)
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == greedy_answer[0]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 20 and usage["completion_tokens"] == greedy_answer[1]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_with_default_sampling_is_fluent_english(client):
    # No sampling fields, as in the brief's example: the model's recommended defaults
    # apply (at OpenAI's temperature 1 a 135M model drifts into nonsense), so the
    # text is the one those values give when a request sets them. Seeded only to
    # make the test repeatable. What the text says is not asserted: the first
    # token is a draw between "L" (63%), "The" (22%) and "La" (13%) on the AVX2
    # kernels, and "The" falls to 3% on the portable ones.
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, seed=7).choices[0].message.content
    explicit = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, seed=7,
                                              **DEFAULT_MODEL_SAMPLING).choices[0].message.content
    assert text == explicit
    words = text.split()
    assert len(words) >= 4, text
    assert sum(c.isascii() for c in text) / len(text) > 0.95, text


def test_chat_stream_follows_openai_invariants(client, greedy_answer):
    text, chunks = collect_chat_stream(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"][0]["delta"] == {}
    assert len(chunks) > 5, "the answer should arrive token by token"
    assert text == greedy_answer[0]


def test_greedy_stream_and_non_stream_give_the_same_text(client):
    messages = [{"role": "user", "content": "Write two sentences about the moon."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
    streamed, _ = collect_chat_stream(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48, stream=True))
    assert streamed == whole.choices[0].message.content and len(streamed) > 20


def test_same_seed_same_text_at_temperature_one(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], temperature=1, max_tokens=32)
    first = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    second = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    other = client.chat.completions.create(seed=99, **kw).choices[0].message.content
    assert first == second
    assert first != other


def test_max_tokens_and_max_completion_tokens_end_with_length(client):
    for field in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **{field: 3})
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_stop_strings_are_never_returned(client):
    base = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0).choices[0].message.content
    words = base.split()
    assert len(words) >= 4, base
    stop = " ".join(words[1:3])  # several tokens from inside the greedy answer, e.g. "answer is"
    cut = base[: base.index(stop)]
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, stop=[stop, "zzz"])
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    streamed, chunks = collect_chat_stream(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, stop=stop, stream=True))
    assert streamed == cut and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_include_usage_ends_with_a_usage_chunk(client):
    _, chunks = collect_chat_stream(
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=5, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completions_non_stream_and_stream(client):
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    body = body_of(raw)
    openapi.validate("CreateCompletionResponse", body)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert "Paris" in body["choices"][0]["text"] and body["choices"][0]["finish_reason"] == "length"
    chunks = [c.to_dict() for c in client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True)]
    for c in chunks:
        openapi.validate_completion_chunk(c)
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_completions_default_to_16_tokens_and_take_several_prompts(client):
    reply = client.completions.create(model=MODEL, prompt=["Once upon a time", "1, 2, 3,"], temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 32


def test_alias_answers_as_the_alias(client):
    reply = client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, max_tokens=2)
    assert reply.model == "gpt-3.5-turbo"


async def test_async_client_end_to_end(aclient):
    models = await aclient.models.list()
    assert MODEL in [m.id for m in models.data]
    chat = await aclient.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, temperature=0)
    openapi.validate("CreateChatCompletionResponse", chat.http_response.json())
    stream = await aclient.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, stream=True)
    chunks = [c.to_dict() async for c in stream]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == chat.parse().choices[0].message.content
    completion = await aclient.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    openapi.validate("CreateCompletionResponse", completion.to_dict())
    cstream = await aclient.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True)
    async for c in cstream:
        openapi.validate_completion_chunk(c.to_dict())


# --- errors, as the SDK sees them -----------------------------------------------------


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=QUESTION)
    assert openapi.error_of(e.value)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": 5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type"),
        ({"not_a_field": 1}, "not_a_field"),
    ],
)
def test_bad_fields_are_400_naming_the_param(client, extra, param):
    kwargs = {"model": MODEL, "messages": QUESTION}
    body = {k: v for k, v in extra.items() if k not in kwargs}
    kwargs.update({k: v for k, v in extra.items() if k in kwargs})
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(extra_body=body, **kwargs)
    assert openapi.error_of(e.value)["param"] == param


def test_fields_without_effect_on_the_answer_are_accepted_and_change_nothing(client):
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0)
    hinted = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, user="u1", store=False, safety_identifier="hash-1",
        prompt_cache_key="k", prompt_cache_retention="24h", modalities=["text"], reasoning_effort="none", verbosity="medium",
        prediction={"type": "content", "content": "Paris"}, metadata={"a": "b"})
    assert hinted.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("field, value", [
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("reasoning_effort", "high"),
    ("verbosity", "low"),
    ("web_search_options", {}),
    ("user", 5),
    ("safety_identifier", ["x"]),
    ("prompt_cache_retention", "forever"),
])
def test_fields_asking_for_what_a_text_model_cannot_do_are_400s_naming_them(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2, extra_body={field: value})
    assert openapi.error_of(e.value)["param"] == field


def test_prompt_longer_than_the_context_is_400_with_both_numbers(client):
    from conftest import SERVER_CONTEXT

    long = "word " * (SERVER_CONTEXT + 50)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}])
    error = openapi.error_of(e.value)
    assert error["code"] == "context_length_exceeded" and str(SERVER_CONTEXT) in error["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=SERVER_CONTEXT)
    assert str(SERVER_CONTEXT) in openapi.error_of(e.value)["message"]
