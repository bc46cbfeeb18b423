"""LiteLLM against a real pycompat server, through its OpenAI-compatible provider
(``openai/<model>`` with ``api_base``): completion, stream, a forced tool call,
json_schema structured output, embeddings and the Responses API.

LiteLLM would fetch its model-price map from GitHub on import and may report
telemetry: LITELLM_LOCAL_MODEL_COST_MAP and ``litellm.telemetry = False`` keep
it on this machine (the tests must pass with no network but loopback)."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from clients.conftest import CHAT_MODEL, EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, require_module

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # read before and during the import
litellm = require_module("litellm", "LiteLLM (litellm)")
litellm.telemetry = False

# LiteLLM's own pydantic models warn about themselves on first use: noise, not about pycompat.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")

MODEL = f"openai/{CHAT_MODEL}"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
    "required": ["name", "country"],
    "additionalProperties": False,
}


def server(client_server) -> dict:
    return {"api_base": client_server.api_url, "api_key": "unused", "num_retries": 0, "timeout": 120}


def complete(client_server, prompt: str, **kwargs):
    return litellm.completion(model=MODEL, messages=[{"role": "user", "content": prompt}],
                              temperature=0, max_tokens=64, **server(client_server), **kwargs)


def test_completion_answers(client_server):
    reply = complete(client_server, "What is 2 + 2?")
    choice = reply.choices[0]
    assert choice.message.content.strip() and choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_stream_comes_in_pieces_that_join_to_the_whole_answer(client_server):
    prompt = "Name three colors."
    chunks = list(complete(client_server, prompt, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == complete(client_server, prompt).choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_forced_tool_call(client_server):
    reply = complete(client_server, "What is the weather in Paris?", tools=[WEATHER_TOOL],
                     tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_json_schema_response_format(client_server):
    reply = complete(client_server, "Give a city in France and its country.",
                     response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), CITY_SCHEMA)


def test_embeddings(client_server):
    reply = litellm.embedding(model=f"openai/{EMBEDDING_MODEL}", input=["hello world", "a second text"], **server(client_server))
    assert [len(d["embedding"]) for d in reply.data] == [EMBEDDING_DIMENSIONS] * 2
    assert [d["index"] for d in reply.data] == [0, 1]
    assert reply.usage.prompt_tokens > 0


def test_responses_api(client_server):
    reply = litellm.responses(model=MODEL, input="What is 2 + 2?", temperature=0, max_output_tokens=32, **server(client_server))
    assert reply.status == "completed"
    [message] = [item for item in reply.output if item.type == "message"]
    assert message.content[0].text.strip()
