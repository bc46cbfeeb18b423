"""LangChain's OpenAI integration (`langchain-openai`) against a real pycompat server:
ChatOpenAI's invoke, stream and logprobs, with_structured_output by each of its methods,
bind_tools with a forced call, the Responses API, and OpenAIEmbeddings.

The model is tiny: the checks are on shapes and validity (the structured output
parses into the schema, the tool call names the tool and carries JSON
arguments), not on how wise the answers are."""

from __future__ import annotations

import functools
import json
import operator

import jsonschema
import pytest

from clients.conftest import CHAT_MODEL, EMBEDDING_DIMENSIONS, EMBEDDING_MODEL, require_module

langchain_openai = require_module("langchain_openai", "LangChain (langchain-openai)")
from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402  (langchain-core comes with it)
from pydantic import BaseModel, Field  # noqa: E402


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city's name")
    country: str = Field(description="the country it is in")


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return "sunny"


def chat(client_server, **overrides):
    """ChatOpenAI aimed at the server: greedy, short answers, no retries (a failure shows at once)."""
    options = dict(model=CHAT_MODEL, base_url=client_server.api_url, api_key="unused", temperature=0,
                   max_tokens=64, max_retries=0, timeout=120)
    return langchain_openai.ChatOpenAI(**(options | overrides))


def test_invoke_answers(client_server):
    reply = chat(client_server).invoke("What is 2 + 2?")
    assert isinstance(reply.content, str) and reply.content.strip()
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == CHAT_MODEL
    assert reply.usage_metadata["output_tokens"] > 0 and reply.usage_metadata["input_tokens"] > 0


def test_stream_comes_in_pieces_that_join_to_the_whole_answer(client_server):
    llm = chat(client_server, stream_usage=True)
    prompt = "Name three colors."
    chunks = list(llm.stream(prompt))
    pieces = [c.content for c in chunks if c.content]
    assert len(pieces) > 1, pieces
    # Greedy: the streamed text is the text the same request gives whole.
    assert "".join(pieces) == llm.invoke(prompt).content
    # stream_usage asked for stream_options.include_usage: the counts arrive in a chunk of their own.
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


def test_logprobs(client_server):
    reply = chat(client_server, logprobs=True, top_logprobs=2, max_tokens=8).invoke("What is 2 + 2?")
    tokens = reply.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == reply.content
    for t in tokens:
        assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 2
        # Greedy: the chosen token is the likeliest.
        assert t["top_logprobs"][0]["logprob"] == t["logprob"] >= t["top_logprobs"][1]["logprob"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output_parses_into_the_schema(client_server, method):
    # json_mode sends response_format json_object with no schema: the prompt has to ask for the JSON
    # (LangChain's own advice), and OpenAI rejects a json_object request whose messages never say "JSON".
    prompt = "Give a city in France and its country as JSON with the keys name and country."
    structured = chat(client_server).with_structured_output(City, method=method, include_raw=True)
    out = structured.invoke(prompt)
    assert out["parsing_error"] is None, out
    city = out["parsed"]
    assert isinstance(city, City), out
    jsonschema.validate(city.model_dump(), City.model_json_schema())
    raw = out["raw"]
    if method == "function_calling":
        # Sent as a tool the request forces; the answer is that tool's call.
        [call] = raw.tool_calls
        assert call["name"] == "City" and call["args"] == city.model_dump()
    else:
        assert json.loads(raw.content) == city.model_dump()


def test_bind_tools_with_a_forced_call(client_server):
    llm = chat(client_server).bind_tools([get_weather], tool_choice="get_weather")
    reply = llm.invoke("What is the weather in Paris?")
    assert reply.invalid_tool_calls == []
    [call] = reply.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str) and call["id"]
    assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_a_streamed_tool_call_and_its_result_sent_back(client_server):
    """The agent loop: the tool call streamed (LangChain adds up the chunks by their index),
    then the tool's result goes back as a tool message and the model answers in text."""
    llm = chat(client_server)
    messages = [HumanMessage("What is the weather in Paris?")]
    chunks = list(llm.bind_tools([get_weather], tool_choice="get_weather").stream(messages))
    assert len(chunks) > 1
    reply = functools.reduce(operator.add, chunks)
    assert reply.invalid_tool_calls == []
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    messages += [reply, ToolMessage("sunny, 21 C", tool_call_id=call["id"])]
    answer = llm.invoke(messages)
    assert isinstance(answer.content, str) and answer.content.strip() and not answer.tool_calls


def test_responses_api_invoke_and_stream(client_server):
    llm = chat(client_server, use_responses_api=True)
    prompt = "Name three colors."
    whole = llm.invoke(prompt)
    assert whole.text.strip()
    pieces = [c.text for c in llm.stream(prompt) if c.text]
    assert len(pieces) > 1 and "".join(pieces) == whole.text


def test_openai_embeddings(client_server):
    # check_embedding_ctx_length=False: otherwise LangChain counts tokens with tiktoken first,
    # whose vocabulary it downloads from OpenAI (and the texts would go as token ids).
    embeddings = langchain_openai.OpenAIEmbeddings(model=EMBEDDING_MODEL, base_url=client_server.api_url,
                                                   api_key="unused", check_embedding_ctx_length=False, max_retries=0)
    query = embeddings.embed_query("What is the capital of France?")
    documents = embeddings.embed_documents(["Paris is the capital of France.", "Bananas are yellow."])
    assert len(query) == EMBEDDING_DIMENSIONS
    assert [len(d) for d in documents] == [EMBEDDING_DIMENSIONS] * 2
    # The vectors are unit length (sentence-transformers normalizes): the closer text scores higher.
    paris, bananas = (sum(q * d for q, d in zip(query, doc)) for doc in documents)
    assert paris > bananas
