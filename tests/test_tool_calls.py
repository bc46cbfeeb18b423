"""Tool calling: the call parsers on their own (fed one character at a time),
how past calls are told to the model, and end to end through the official SDK
against a real server of the bundled SmolLM2-135M (our JSON format) and of a
tiny random model whose template renders tools (Hermes' format)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

import openapi
from conftest import running_server
from pycompat.api import tools
from tiny_models import TinyConfig, byte_vocab, random_weights, write_hf_model

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}}, "required": ["timezone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in one city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the time in a timezone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


def feed_by_char(parser: tools.CallParser, text: str) -> list:
    events = []
    for ch in text:
        events += parser.feed(ch)
    return events + parser.finish()


def merged(events: list) -> list:
    """Consecutive deltas of one kind joined, to compare with what a whole text gives."""
    out = []
    for e in events:
        if out and type(e) is type(out[-1]) and isinstance(e, tools.ContentDelta):
            out[-1] = tools.ContentDelta(out[-1].text + e.text)
        elif out and isinstance(e, tools.ArgumentsDelta) and isinstance(out[-1], tools.ArgumentsDelta) and e.index == out[-1].index:
            out[-1] = tools.ArgumentsDelta(e.index, out[-1].text + e.text)
        else:
            out.append(e)
    return out


# --- the parsers ---


def test_json_answer_parser_streams_content_with_escapes_split_anywhere():
    content = 'Caf\u00e9 "quoted" \\ back\nline \U0001F600 end'
    text = json.dumps({"content": content}, ensure_ascii=True)
    assert "\\ud83d\\ude00" in text  # a surrogate pair, which must be joined across pieces
    p = tools.JsonFormat().parser()
    events = feed_by_char(p, text)
    assert all(isinstance(e, tools.ContentDelta) for e in events)
    assert p.content == content and p.calls == []


def test_json_answer_parser_streams_each_calls_arguments():
    text = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris \\"}{[", "unit": "celsius"}}, ' \
           '{"name": "get_time", "arguments": {"timezone": "CET", "nested": {"a": [1, {"b": 2}]}}}]}'
    p = tools.JsonFormat().parser()
    events = merged(feed_by_char(p, text))
    assert [type(e) for e in events] == [tools.CallStarted, tools.ArgumentsDelta, tools.CallStarted, tools.ArgumentsDelta]
    assert [c.name for c in p.calls] == ["get_weather", "get_time"]
    assert json.loads(p.calls[0].arguments) == {"city": 'Paris "}{[', "unit": "celsius"}
    assert json.loads(p.calls[1].arguments) == {"timezone": "CET", "nested": {"a": [1, {"b": 2}]}}
    assert p.content is None
    assert events[0].id.startswith("call_") and events[0].id != events[2].id
    # The whole text at once gives the same calls.
    whole = tools.JsonFormat().parser()
    whole.feed(text)
    whole.finish()
    assert [(c.name, c.arguments) for c in whole.calls] == [(c.name, c.arguments) for c in p.calls]


def test_json_answer_parser_keeps_a_cut_answer():
    p = tools.JsonFormat().parser()
    feed_by_char(p, '{"content": "half an ans')
    assert p.content == "half an ans"
    for cut in ('{', '{"tool', '{"tool_calls": [{"na', '{"content'):  # the wrapper itself is never an answer
        p = tools.JsonFormat().parser()
        assert feed_by_char(p, cut) == [] and p.content is None and p.calls == []
    p = tools.JsonFormat().parser()
    feed_by_char(p, '{"tool_calls": [{"name": "get_weather", "arguments": {"ci')
    assert p.calls[0].name == "get_weather" and p.calls[0].arguments == '{"ci'


def test_hermes_parser_separates_text_and_calls():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "CET"}}\n</tool_call>'
    for feed in (feed_by_char, lambda p, t: p.feed(t) + p.finish()):
        p = tools.HermesFormat(open_is_special=True).parser()
        feed(p, text)
        assert p.content == "Let me check."
        assert [(c.name, json.loads(c.arguments)) for c in p.calls] == [("get_weather", {"city": "Paris"}), ("get_time", {"timezone": "CET"})]


def test_hermes_parser_drops_an_unfinished_call_when_calls_were_forced():
    cut = 'Sure.<tool_call>\n{"name": "get_weather", "argu'
    forced = tools.HermesFormat(open_is_special=True).parser(forced=True)
    feed_by_char(forced, cut)
    assert forced.content == "Sure." and forced.calls == []
    free = tools.HermesFormat(open_is_special=True).parser()
    feed_by_char(free, cut)
    assert free.content.endswith('"argu')


def test_past_arguments_too_deep_to_parse_stay_text():
    deep = "[" * 100_000  # past Python's recursion limit
    msgs = [{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}]}]
    out = tools.HermesFormat(open_is_special=False).prompt_messages(msgs, tools.ToolRequest([], tools.ToolChoice(tools.NONE)))
    assert out[0]["tool_calls"][0]["function"]["arguments"] == deep


def test_legacy_function_results_reach_a_hermes_template_as_tool_messages():
    msgs = [{"role": "user", "content": "hi"}, {"role": "function", "name": "f", "content": "42"}]
    out = tools.HermesFormat(open_is_special=False).prompt_messages(msgs, tools.ToolRequest([], tools.ToolChoice(tools.NONE)))
    assert out[1] == {"role": "tool", "name": "f", "content": "42"}


def test_hermes_parser_keeps_text_that_only_looks_like_a_call():
    p = tools.HermesFormat(open_is_special=False).parser()
    feed_by_char(p, "a < b and <tool_ca")
    assert p.content == "a < b and <tool_ca" and p.calls == []


# --- how past calls are told ---


def test_past_calls_and_results_are_told_in_a_user_turn():
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                                                             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
    ]
    request = tools.ToolRequest([tools.Tool("get_weather", "Weather", WEATHER)], tools.ToolChoice(tools.AUTO))
    out = tools.JsonFormat().prompt_messages(history, request)
    assert [m["role"] for m in out] == ["system", "user"], "roles still alternate"
    assert "get_weather" in out[0]["content"] and json.dumps(WEATHER) in out[0]["content"]
    assert 'You called get_weather with {"city": "Paris"}' in out[1]["content"]
    assert 'get_weather returned: {"temp": 21}' in out[1]["content"]
    assert all(set(m) == {"role", "content"} for m in out)
    # With tool_choice none the tools are not described, but the history still is.
    none = tools.JsonFormat().prompt_messages(history, tools.ToolRequest(request.tools, tools.ToolChoice(tools.NONE)))
    assert [m["role"] for m in none] == ["user"] and "returned" in none[0]["content"]


# --- end to end, our JSON format ---


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0, timeout=300)


def _create(client, **kwargs) -> dict:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, **{"max_tokens": 120, **kwargs})
    body = raw.http_response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    return body


def _check_calls(message: dict, names: set[str]) -> None:
    assert message["content"] is None
    assert message["tool_calls"]
    for call in message["tool_calls"]:
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_required_and_named_choices_always_give_valid_calls(client):
    """96 requests: 'required' and each tool named, greedy and at temperature 1."""
    choices = ["required", {"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "get_time"}}]
    jobs = [(c, t, seed) for c in choices for t in (0.0, 1.0) for seed in range(16)]

    def run(job):
        choice, t, seed = job
        return job, _create(client, messages=ASK, tools=TOOLS, tool_choice=choice, temperature=t, seed=seed)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs))
    finished = 0
    for (choice, _, _), body in results:
        c = body["choices"][0]
        if c["finish_reason"] == "length":
            continue
        finished += 1
        assert c["finish_reason"] == "tool_calls"
        names = {choice["function"]["name"]} if isinstance(choice, dict) else set(SCHEMAS)
        _check_calls(c["message"], names)
        if isinstance(choice, dict):
            assert len(c["message"]["tool_calls"]) == 1
    assert finished >= 0.9 * len(jobs)


def test_auto_answers_with_text_or_valid_calls(client):
    outcomes = set()
    for seed in range(12):
        c = _create(client, messages=[{"role": "user", "content": q} for q in ["Hi! How are you?" if seed % 2 else "What time is it in Tokyo?"]],
                    tools=TOOLS, temperature=1.0, seed=seed)["choices"][0]
        if c["finish_reason"] == "tool_calls":
            _check_calls(c["message"], set(SCHEMAS))
            outcomes.add("calls")
        elif c["finish_reason"] == "stop":
            assert isinstance(c["message"]["content"], str) and "tool_calls" not in c["message"]
            assert not c["message"]["content"].startswith('{"'), "the JSON shape is unwrapped"
            outcomes.add("text")
    assert outcomes, "every answer was cut"


@pytest.mark.parametrize("max_tokens", [1, 3, 5, 8])
@pytest.mark.parametrize("choice", ["required", "auto"])
def test_an_answer_cut_inside_our_wrapper_leaks_none_of_it(client, choice, max_tokens):
    body = _create(client, messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=max_tokens)
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert '{"' not in (message["content"] or "") and message["content"] != "{", message
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=max_tokens, stream=True) if c.choices)
    assert streamed == (message["content"] or "")


def test_none_never_calls(client):
    for seed in range(4):
        c = _create(client, messages=ASK, tools=TOOLS, tool_choice="none", temperature=1.0, seed=seed, max_tokens=30)["choices"][0]
        assert "tool_calls" not in c["message"] and c["finish_reason"] in ("stop", "length")


def test_parallel_calls_can_be_turned_off(client):
    ask = [{"role": "user", "content": "What's the weather in Paris and in London? Call get_weather once for each city."}]
    counts = {True: [], False: []}
    for parallel in (True, False):
        for seed in range(12):
            c = _create(client, messages=ask, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, parallel_tool_calls=parallel)["choices"][0]
            if c["finish_reason"] == "tool_calls":
                _check_calls(c["message"], set(SCHEMAS))
                counts[parallel].append(len(c["message"]["tool_calls"]))
    assert counts[False] and max(counts[False]) == 1
    assert max(counts[True]) > 1, "with parallel calls allowed the model makes several sometimes"


def test_streamed_calls_reassemble_and_every_chunk_is_valid(client):
    kwargs = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120)
    whole = client.chat.completions.create(**kwargs)
    chunks = [c.to_dict() for c in client.chat.completions.create(stream=True, **kwargs)]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    firsts = {}
    for d in deltas:
        (call,) = d["tool_calls"]
        if call["index"] not in firsts:  # a call's first delta: id, type, name and empty arguments
            firsts[call["index"]] = call
            assert call["id"].startswith("call_") and call["type"] == "function"
            assert call["function"]["name"] and call["function"]["arguments"] == ""
        else:
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert reasons == ["tool_calls"]
    assert chunks[0]["choices"][0]["delta"]["content"] is None, "a forced call's answer has no content"
    # The SDK's own stream helper puts the same calls back together.
    with client.chat.completions.stream(**kwargs) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    got = [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls]
    assert got == [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_streamed_logprobs_cover_every_token_once(client, choice):
    """Tokens that release no text (the JSON around an answer) bring their log-probabilities with a later chunk."""
    chunks = [c.to_dict() for c in client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=120, stream=True, logprobs=True,
        top_logprobs=2, stream_options={"include_usage": True})]
    for c in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", c)
    n = sum(len((c["choices"][0].get("logprobs") or {}).get("content") or []) for c in chunks if c["choices"])
    assert n == chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize("message, param", [
    ({"role": "assistant", "content": None, "tool_calls": [1]}, "messages[1].tool_calls[0]"),
    ({"role": "assistant", "content": None, "tool_calls": "x"}, "messages[1].tool_calls"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": 5}}]}, "messages[1].tool_calls[0].function.name"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"role": "assistant", "function_call": "x"}, "messages[1].function_call"),
    ({"role": "tool", "content": "x", "tool_call_id": 5}, "messages[1].tool_call_id"),
    ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
])
def test_malformed_past_calls_are_400s_naming_them(client, message, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK + [message], max_tokens=2)
    assert openapi.error_of(e.value)["param"] == param


def test_a_call_cut_by_a_stop_string_is_not_reported_as_a_call(client):
    c = _create(client, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                temperature=0, stop=[", "])["choices"][0]
    assert c["finish_reason"] == "stop", "its arguments never closed"


def test_a_full_round_trip(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    # The model may call again or answer; either is valid.
    again = _create(client, messages=history, tools=TOOLS, temperature=0)
    assert again["choices"][0]["finish_reason"] in ("stop", "tool_calls", "length")
    # Told not to call, it answers in text.
    answer = _create(client, messages=history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40)["choices"][0]
    assert answer["message"]["content"] and "tool_calls" not in answer["message"]


def test_legacy_functions_answer_with_function_call(client):
    functions = [t["function"] for t in TOOLS]
    body = _create(client, messages=ASK, functions=functions, function_call={"name": "get_time"}, temperature=0)
    c = body["choices"][0]
    assert c["finish_reason"] == "function_call"
    assert c["message"]["function_call"]["name"] == "get_time" and "tool_calls" not in c["message"]
    jsonschema.validate(json.loads(c["message"]["function_call"]["arguments"]), TIME)
    # A legacy call in the history is accepted too.
    history = ASK + [{"role": "assistant", "content": None, "function_call": c["message"]["function_call"]},
                     {"role": "function", "name": "get_time", "content": "12:00"}]
    assert _create(client, messages=history, functions=functions, function_call="none", max_tokens=10)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools"),
    ({"tools": []}, "tools"),
    ({"functions": []}, "functions"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"anyOf": [{"type": "integer"}]}}}]}, "tools[0].function.parameters"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"functions": [TOOLS[0]["function"]], "tools": TOOLS}, "functions"),
    ({"function_call": "auto"}, "function_call"),
])
def test_malformed_tool_requests_are_400s_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, extra_body=extra)
    assert openapi.error_of(e.value)["param"] == param


# --- Hermes' format, on a template that renders tools ---

HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    "Answer a call as <tool_call>\n{\"name\": ..., \"arguments\": ...}\n</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY = TinyConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, context_length=2048)  # byte tokens: the tools alone take ~700


@pytest.fixture(scope="module", params=["special markers", "plain-text markers"])
def hermes_url(request, tmp_path_factory):
    """The markers as special tokens (decoded only on request), or as plain text (Qwen2.5's are added, not special)."""
    path = tmp_path_factory.mktemp("hermes")
    specials = ("<tool_call>", "</tool_call>") if request.param == "special markers" else ()
    write_hf_model(path / "model", TINY, random_weights(TINY, len(byte_vocab(specials)[0]), seed=11), "F32", extra_specials=specials)
    config = json.loads((path / "model" / "tokenizer_config.json").read_text())
    (path / "model" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": HERMES_TEMPLATE}))
    with running_server(path / "serve.log", "--model", str(path / "model"), "--alias", "tiny") as (_, url):
        yield url


def test_hermes_template_gets_the_tools_and_forced_calls_are_valid(hermes_url):
    client = openai.OpenAI(base_url=hermes_url, api_key="unused", max_retries=0, timeout=120)
    finished = 0
    for seed in range(6):
        choice = "required" if seed % 2 else {"type": "function", "function": {"name": "get_time"}}
        raw = client.chat.completions.with_raw_response.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=1.0,
                                                              seed=seed, max_tokens=200)
        body = raw.http_response.json()
        openapi.validate("CreateChatCompletionResponse", body)
        c = body["choices"][0]
        if c["finish_reason"] == "length":  # a random model may ramble inside a string
            continue
        assert c["finish_reason"] == "tool_calls", c
        finished += 1
        names = set(SCHEMAS) if choice == "required" else {"get_time"}
        for call in c["message"]["tool_calls"]:
            assert call["function"]["name"] in names
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    assert finished >= 3


def test_hermes_auto_keeps_any_started_call_valid(hermes_url):
    client = openai.OpenAI(base_url=hermes_url, api_key="unused", max_retries=0, timeout=120)
    for seed in range(4):
        c = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=60).choices[0]
        for call in c.message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        assert "<tool_call>" not in (c.message.content or "")
