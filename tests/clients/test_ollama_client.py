"""The `ollama` Python library against pycompat's Ollama API (/api): list,
show, ps, chat (streamed and not), generate (with context), embed, structured
``format``, tools (a Python function, as the library turns it into a schema),
copy and delete, and errors raised as the library raises Ollama's own."""

from __future__ import annotations

import json

import jsonschema
import pytest

from clients.conftest import CHAT_MODEL, EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, require_module

ollama = require_module("ollama", "the `ollama` Python library")

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(client_server):
    return ollama.Client(host=client_server.base_url)


def test_list_show_ps(client):
    listed = {m.model: m for m in client.list().models}
    chat = listed[f"{CHAT_MODEL}:latest"]
    assert chat.details.family == "llama" and chat.details.format == "gguf" and chat.details.quantization_level == "Q4_1"
    assert chat.size > 50_000_000 and len(chat.digest) == 64 and chat.modified_at is not None
    assert f"{EMBEDDING_MODEL}:latest" in listed
    shown = client.show(CHAT_MODEL)
    assert shown.modelinfo["general.architecture"] == "llama" and shown.modelinfo["llama.context_length"] == 8192
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert "{{ .Prompt }}" in shown.template and shown.modified_at is not None
    assert client.show(EMBEDDING_MODEL).capabilities == ["embedding"]
    running = {m.model: m for m in client.ps().models}
    assert running[f"{CHAT_MODEL}:latest"].expires_at.year > 2200 and running[f"{CHAT_MODEL}:latest"].context_length > 0


def test_chat(client):
    response = client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                           options=GREEDY)
    assert response.message.role == "assistant" and response.message.content
    assert response.done and response.done_reason in ("stop", "length")
    assert response.prompt_eval_count > 5 and 0 < response.eval_count <= 12
    assert response.total_duration >= response.eval_duration > 0


def test_chat_stream_joins_to_the_whole_answer(client):
    messages = [{"role": "user", "content": "Name three colors."}]
    parts = list(client.chat(model=CHAT_MODEL, messages=messages, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    streamed = "".join(p.message.content for p in parts)
    whole = client.chat(model=CHAT_MODEL, messages=messages, options=GREEDY)
    assert streamed == whole.message.content and streamed.strip()
    assert parts[-1].eval_count == whole.eval_count


def test_generate_and_its_context(client):
    first = client.generate(model=CHAT_MODEL, prompt="My favourite number is 7.", options={"temperature": 0, "num_predict": 5})
    assert first.response and first.context and abs(len(first.context) - first.prompt_eval_count - first.eval_count) <= 1
    second = client.generate(model=CHAT_MODEL, prompt="What is my favourite number?", context=first.context,
                             options={"temperature": 0, "num_predict": 5})
    assert list(second.context[:len(first.context)]) == list(first.context)
    streamed = list(client.generate(model=CHAT_MODEL, prompt="Say hello.", options={"temperature": 0, "num_predict": 5}, stream=True))
    assert streamed[-1].done and "".join(p.response for p in streamed).strip()


def test_embed(client):
    response = client.embed(model=EMBEDDING_MODEL, input=["The cat sleeps.", "A kitten naps.", "Stock prices fell."])
    vectors = response.embeddings
    assert len(vectors) == 3 and all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])  # the related sentence is nearer
    assert response.prompt_eval_count > 0
    legacy = client.embeddings(model=EMBEDDING_MODEL, prompt="The cat sleeps.")
    assert max(abs(a - b) for a, b in zip(legacy.embedding, vectors[0])) < 1e-5


def test_structured_format(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "maximum": 150}},
              "required": ["name", "age"]}
    response = client.chat(model=CHAT_MODEL, format=schema, options={"temperature": 0},
                           messages=[{"role": "user", "content": "Alice is 30 years old. Give her name and age as JSON."}])
    jsonschema.validate(json.loads(response.message.content), schema)
    plain_json = client.generate(model=CHAT_MODEL, format="json", options={"temperature": 0},
                                 prompt='Give a JSON object with the key "color" and a color as its value.')
    assert isinstance(json.loads(plain_json.response), dict)


def get_current_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The name of the city

    Returns:
        The weather, in words
    """
    return f"18 degrees and sunny in {city}"


def test_tools_from_a_python_function(client):
    messages = [{"role": "user", "content": "What is the weather in Paris? Call the tool."}]
    response = client.chat(model=CHAT_MODEL, messages=messages, tools=[get_current_weather], options={"temperature": 0})
    (call,) = response.message.tool_calls
    assert call.function.name == "get_current_weather" and isinstance(call.function.arguments["city"], str)
    # Run it and send the result back, as the library's docs do; the model answers in text.
    result = get_current_weather(**call.function.arguments)
    follow = client.chat(model=CHAT_MODEL, tools=[get_current_weather], options={"temperature": 0, "num_predict": 40},
                         messages=[*messages, response.message, {"role": "tool", "content": result, "tool_name": call.function.name}])
    assert follow.done and (follow.message.content or follow.message.tool_calls)
    # Streamed, the call arrives whole in one part.
    parts = list(client.chat(model=CHAT_MODEL, messages=messages, tools=[get_current_weather], options={"temperature": 0},
                             stream=True))
    assert [c.function.name for p in parts for c in (p.message.tool_calls or [])] == ["get_current_weather"]


def test_copy_and_delete(client):
    assert client.copy(CHAT_MODEL, "gpt-3.5-turbo-ollama").status == "success"
    assert client.chat(model="gpt-3.5-turbo-ollama", messages=[{"role": "user", "content": "Hi"}],
                       options={"num_predict": 1}).eval_count == 1
    assert client.delete("gpt-3.5-turbo-ollama").status == "success"
    assert "gpt-3.5-turbo-ollama:latest" not in [m.model for m in client.list().models]


def test_errors_raise_as_the_library_raises_ollamas(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3.2")
    assert e.value.status_code == 400 and "--model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], think=True)
    assert "thinking" in e.value.error
    assert client.pull(CHAT_MODEL).status == "success"


def test_logprobs(client):
    response = client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "Name a color."}], options=GREEDY,
                           logprobs=True, top_logprobs=2)
    assert len(response.logprobs) == response.eval_count
    assert "".join(t.token for t in response.logprobs) == response.message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in response.logprobs)
