"""Structured outputs end to end: the official SDK against a real server of the
bundled SmolLM2-135M, whose answers must follow the requested JSON schema,
JSON object, regular expression, choice or grammar every time. Every body and
chunk is validated against OpenAI's spec, every JSON output against its schema."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

import openapi

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 160

# Schemas that cover what the issue lists: nested objects, arrays with
# min/max items, enums, bounded integers, optional fields, anyOf. Strings get
# a maxLength where a 135M model would otherwise ramble past max_tokens.
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "maxLength": 40},  # optional
        },
        "required": ["name", "age"],
    },
    "order": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 99999},
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "maxLength": 12}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["sku", "qty"],
                },
            },
            "status": {"enum": ["pending", "shipped", "delivered"]},
        },
        "required": ["id", "items", "status"],
    },
    "shape": {
        "type": "object",
        "properties": {
            "shape": {
                "anyOf": [
                    {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}},
                     "required": ["kind", "radius"]},
                    {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 50}},
                     "required": ["kind", "side"]},
                ]
            }
        },
        "required": ["shape"],
    },
    "tags": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue", "cyan"]}, "minItems": 2, "maxItems": 4},
            "score": {"type": "integer", "minimum": -5, "maximum": 5},
            "ok": {"type": "boolean"},
        },
        "required": ["tags", "score", "ok"],
    },
    "address": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "location": {
                "type": "object",
                "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                "required": ["lat", "lon"],
            },
            "zip": {"anyOf": [{"type": "string", "pattern": "^[0-9]{5}$"}, {"type": "null"}]},
        },
        "required": ["city", "location", "zip"],
    },
}
PROMPTS = {
    "person": "Invent a person.",
    "order": "Create a shop order.",
    "shape": "Pick a shape.",
    "tags": "Tag this sentence: the sky is blue.",
    "address": "Where is the Eiffel Tower?",
}


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=300)


def _ask(client, name: str, temperature: float, seed: int, strict: bool) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPTS[name]}], temperature=temperature, seed=seed,
        max_tokens=MAX_TOKENS, response_format={"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": strict}})
    body = raw.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def test_json_schema_outputs_always_parse_and_validate(client):
    """240 requests: 5 schemas, greedy and at temperature 1, 24 seeds, strict and not."""
    jobs = [(name, t, seed, seed % 2 == 0) for name in SCHEMAS for t in (0.0, 1.0) for seed in range(24)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: (job, _ask(client, *job)), jobs))
    finished = [(job, text) for job, (text, reason) in results if reason == "stop"]
    cut = [(job, text) for job, (text, reason) in results if reason != "stop"]
    assert all(reason in ("stop", "length") for _, (_, reason) in results)
    for (name, *_), text in finished:
        jsonschema.validate(json.loads(text), SCHEMAS[name])
    # Cut outputs are the only incomplete ones; a grammar that never completed would make them all.
    assert len(finished) >= 0.9 * len(results), f"{len(cut)} of {len(results)} hit max_tokens: {cut[:3]}"
    print(f"\n{len(finished)} of {len(results)} outputs finished and all are valid; {len(cut)} cut by max_tokens")


def test_json_object_is_always_an_object(client):
    texts = []
    for seed in range(8):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe a cat."}], seed=seed,
                                           temperature=1.0, max_tokens=MAX_TOKENS, response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            texts.append(r.choices[0].message.content)
    assert texts
    for text in texts:
        assert isinstance(json.loads(text), dict)
        assert "\n" not in text and "  " not in text.replace('"  ', ""), "whitespace is bounded (one space after , and :)"


def test_streamed_schema_output_is_the_same_text_and_every_chunk_is_valid(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "tags", "schema": SCHEMAS["tags"]}}
    messages = [{"role": "user", "content": PROMPTS["tags"]}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS, response_format=fmt)
    chunks = [c.to_dict() for c in client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS,
                                                                     response_format=fmt, stream=True)]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMAS["tags"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    species: str = pydantic.Field(max_length=20)
    legs: int = pydantic.Field(ge=0, le=8)


class Household(pydantic.BaseModel):
    pets: list[Pet] = pydantic.Field(min_length=1, max_length=2)
    city: str = pydantic.Field(max_length=20)


@pytest.mark.parametrize("model", [Pet, Household])
def test_sdk_parse_returns_the_pydantic_object(client, model):
    for seed in range(3):
        r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe my pets."}],
                                          response_format=model, seed=seed, max_tokens=200)
        if r.choices[0].finish_reason == "stop":
            assert isinstance(r.choices[0].message.parsed, model)


def test_n_choices_each_follow_the_schema(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS["person"]}], n=4, temperature=1.0,
                                       seed=5, max_tokens=MAX_TOKENS,
                                       response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS["person"]}})
    texts = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert len(texts) >= 3
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMAS["person"])
    assert len(set(texts)) > 1, "each choice samples on its own"


def test_max_tokens_cuts_a_constrained_output_with_length(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS["order"]}], max_tokens=5,
                                       response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMAS["order"]}})
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.startswith("{")
    assert r.usage.completion_tokens == 5


def test_free_and_constrained_requests_share_batches(client):
    """Free requests run beside constrained ones and stay free (prose, not JSON)."""
    def free(seed):
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello in French."}], seed=seed,
                                              temperature=0, max_tokens=12).choices[0].message.content

    def constrained(seed):
        return _ask(client, "tags", 1.0, seed, True)

    with ThreadPoolExecutor(8) as pool:
        frees = [pool.submit(free, s) for s in range(4)]
        fixed = [pool.submit(constrained, s) for s in range(4)]
        free_texts = [f.result() for f in frees]
        fixed_results = [f.result() for f in fixed]
    assert len(set(free_texts)) == 1 and not free_texts[0].startswith("{")
    for text, reason in fixed_results:
        if reason == "stop":
            jsonschema.validate(json.loads(text), SCHEMAS["tags"])


def test_closing_objects_touches_only_schema_positions():
    from pycompat.api.structured import closed_objects

    schema = {
        "type": "object",
        "properties": {"properties": {"type": "object", "properties": {"x": {"const": {"properties": {"y": 1}}}}},
                       "list": {"type": "array", "items": {"type": "object", "properties": {"z": {}}}}},
        "$defs": {"D": {"type": "object", "properties": {"d": {}}}},
    }
    out = closed_objects(schema)
    assert out["additionalProperties"] is False
    assert set(out["properties"]) == {"properties", "list"}, "a property named 'properties' is a property"
    assert out["properties"]["properties"]["additionalProperties"] is False
    assert out["properties"]["properties"]["properties"]["x"] == {"const": {"properties": {"y": 1}}}, "values are left alone"
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in out["$defs"]["D"], "$defs may be reached from an allOf"
    inherits = {"allOf": [{"$ref": "#/$defs/B"}], "properties": {"x": {}}, "required": ["x"], "$defs": {"B": {"properties": {"b": {}}}}}
    assert closed_objects(inherits) == inherits
    assert "additionalProperties" not in closed_objects({"properties": {"a": {}}, "required": ["a", "b"]})
    branch = {"if": {"properties": {"a": {"const": 1}}}, "then": {"properties": {"b": {}}}, "properties": {"a": {}}}
    assert closed_objects(branch) == branch
    # Open objects stay open, and so do those whose properties other keywords extend.
    assert closed_objects({"type": "object"}) == {"type": "object"}
    extended = {"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}, "required": ["b"]}]}
    assert "additionalProperties" not in closed_objects(extended)
    assert closed_objects({"properties": {"a": {}}, "additionalProperties": True})["additionalProperties"] is True


# --- vLLM's and llama.cpp's fields, on both routes ---


@pytest.mark.parametrize("extra, check", [
    ({"guided_regex": r"[A-Z][a-z]{2,8} [0-9]{1,3}"}, lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} [0-9]{1,3}", t)),
    ({"guided_choice": ["yes", "no", "maybe so"]}, lambda t: t in ("yes", "no", "maybe so")),
    ({"guided_json": SCHEMAS["person"]}, lambda t: jsonschema.validate(json.loads(t), SCHEMAS["person"]) is None),
    ({"json_schema": SCHEMAS["tags"]}, lambda t: jsonschema.validate(json.loads(t), SCHEMAS["tags"]) is None),
    ({"guided_grammar": 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,2}/'}, lambda t: re.fullmatch(r"The answer is [0-9]{1,2}\.", t)),
    ({"grammar": 'root ::= ("yes" | "no") "," ws [a-c]{2,4}\nws ::= [ ]?'}, lambda t: re.fullmatch(r"(yes|no), ?[a-c]{2,4}", t)),
    ({"guided_grammar": 'root ::= "x" [0-9]+'}, lambda t: re.fullmatch(r"x[0-9]+", t)),  # GBNF in guided_grammar
    ({"response_format": {"type": "json_object", "schema": SCHEMAS["person"]}}, lambda t: jsonschema.validate(json.loads(t), SCHEMAS["person"]) is None),
])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_guided_fields(client, extra, check, route):
    for seed in range(4):
        if route == "chat":
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Answer."}], seed=seed, temperature=1.0,
                                               max_tokens=60, extra_body=extra)
            text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        else:
            r = client.completions.create(model=MODEL, prompt="Answer:", seed=seed, temperature=1.0, max_tokens=60, extra_body=extra)
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        if reason == "stop":
            assert check(text), text


def test_text_response_format_changes_nothing(client):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10)
    text = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


# --- refusals ---


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "array", "uniqueItems": True}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
    ({"grammar": "root ::= [a-"}, "grammar"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"guided_json": "[" * 5000}, "guided_json"),  # nests past Python's recursion limit
    ({"grammar": 'root ::= "\\U00110000"'}, "grammar"),  # past the last code point
    ({"grammar": 'root ::= "\\uD800"'}, "grammar"),  # a surrogate is no character
])
def test_what_cannot_be_enforced_is_a_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body=extra)
    error = openapi.error_of(e.value)
    assert error["param"] == param, error
    if param == "response_format":
        assert "uniqueItems" in error["message"] or "object" in error["message"], error


def test_a_schema_is_compiled_once(default_model):
    """The second request with the same schema reuses the compiled grammar (the kernel keeps it by source)."""
    from pycompat.api import structured

    g = structured.json_schema({"type": "object", "properties": {"unique_name_for_this_test": {"type": "integer"}}}, "response_format")
    support = default_model.grammars
    support.compile("regex", "warm-up")  # builds the vocabulary's compiler
    before = support._compiler().compiled
    support.compile(g.kind, g.source)
    support.compile(g.kind, g.source)
    assert support._compiler().compiled == before + 1
