"""Fuzzing a real server, bounded: request bodies for both generating routes
built from their fields with hostile values, and raw bytes on the socket.
Every answer must be 2xx or an OpenAI-shaped 4xx, never a 5xx, and the server
must answer /health after each case.

CI runs a few hundred cases with a fixed seed. For a long run with fresh
random cases: PYCOMPAT_FUZZ_EXAMPLES=5000 ./scripts/dev test tests/test_fuzz.py -s
(the counts of each status are printed at the end)."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import openapi
from conftest import running_server
from pycompat.api.openai import chat, completions, protocol

MODEL = "smollm2-135m-instruct"
EXAMPLES = int(os.environ.get("PYCOMPAT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 100,
    derandomize=not EXAMPLES,  # CI: the same cases every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
STATUSES: dict[str, Counter] = {"chat": Counter(), "completions": Counter(), "raw": Counter()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A server whose context (64 tokens) bounds every generation the fuzzer starts."""
    log = tmp_path_factory.mktemp("fuzz") / "serve.log"
    with running_server(log, "--context-length", "64", "--header-timeout", "2") as (proc, url):
        yield url.removesuffix("/v1")
        assert proc.poll() is None, "the server died"
    for route, counts in STATUSES.items():
        if counts:
            print(f"\nfuzz {route}: {sum(counts.values())} cases, statuses {dict(sorted(counts.items()))}")


# --- JSON bodies ----------------------------------------------------------------------

# Stands for an integer of 4,401 digits (hypothesis cannot print one): post_fuzzed writes it out.
HUGE = "__huge_integer__"
HOSTILE_TEXT = st.sampled_from(["", "\ud800", "\udfff\ud800", "x" * 5000, "<|im_start|>", "\x00", "é😀", "NaN", "-1"])
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, HUGE]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20), HOSTILE_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "robot"])},
    optional={
        "content": st.one_of(st.text(max_size=40), HOSTILE_TEXT, st.lists(st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image_url"]), "text": st.one_of(st.text(max_size=20), JSON_VALUES)}),
            JSON_VALUES), max_size=3), JSON_VALUES),
        "name": st.one_of(st.text(max_size=10), JSON_VALUES),
    },
)


def field_values(name: str):
    """Plausible values for a field, then anything at all."""
    plausible = {
        "model": st.sampled_from([MODEL, MODEL, MODEL, "gpt-4", "", "\ud800"]),
        "messages": st.lists(MESSAGE, max_size=4),
        "prompt": st.one_of(st.text(max_size=40), HOSTILE_TEXT, st.lists(st.text(max_size=10), max_size=3),
                            st.lists(st.integers(-5, 60000), max_size=8), st.lists(st.lists(st.integers(-5, 60000), max_size=4), max_size=3)),
        "max_tokens": st.integers(-2, 70), "max_completion_tokens": st.integers(-2, 70),
        "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5), "top_k": st.integers(-1, 2**65),
        "min_p": st.floats(-0.5, 1.5), "seed": st.integers(-(2**64), 2**64),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6)),
        "logit_bias": st.dictionaries(st.one_of(st.integers(-5, 60000).map(str), st.text(max_size=6)), st.floats(-150, 150), max_size=4),
        "stream": st.booleans(), "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON_VALUES}),
    }.get(name)
    return JSON_VALUES if plausible is None else st.one_of(plausible, plausible, JSON_VALUES)


def bodies(route_module):
    """A valid request with a few fields replaced, added or removed: most cases
    get past the first check and reach the deeper ones (and generation)."""
    names = sorted(protocol.accepted(protocol.CHAT if route_module is chat else protocol.COMPLETIONS)) + ["unknown_field", "\ud800"]
    valid = {"model": MODEL, "max_tokens": 3}
    valid |= {"messages": [{"role": "user", "content": "Hi"}]} if route_module is chat else {"prompt": "Hi"}
    fuzzed = st.lists(st.sampled_from(names), max_size=4, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({n: field_values(n) for n in chosen}))
    dropped = st.lists(st.sampled_from(sorted(valid)), max_size=1)
    return st.builds(lambda new, gone: {k: v for k, v in {**valid, **new}.items() if k not in gone}, fuzzed, dropped)


def check_answer(r: httpx.Response, validate_chunk, body_schema: str) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()
        openapi.validate("ErrorResponse", error)
        assert set(error["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in r.content.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]", events[-3:]
        for e in events[:-1]:
            payload = json.loads(e.removeprefix(b"data: "))
            assert "error" not in payload, payload
            validate_chunk(payload)
    else:
        openapi.validate(body_schema, r.json())


def post_fuzzed(base: str, path: str, body: dict) -> httpx.Response:
    # ensure_ascii: lone surrogates travel as \u escapes, as a client's JSON encoder would send them
    content = json.dumps(body, ensure_ascii=True).replace(f'"{HUGE}"', "1" + "0" * 4400).encode()
    return httpx.post(base + path, content=content, headers={"content-type": "application/json"}, timeout=60)


@FUZZ
@given(body=bodies(chat))
def test_fuzzed_chat_bodies_get_2xx_or_openai_shaped_4xx(base, body):
    r = post_fuzzed(base, "/v1/chat/completions", body)
    STATUSES["chat"][r.status_code] += 1
    check_answer(r, lambda chunk: openapi.validate("CreateChatCompletionStreamResponse", chunk), "CreateChatCompletionResponse")


@FUZZ
@given(body=bodies(completions))
def test_fuzzed_completion_bodies_get_2xx_or_openai_shaped_4xx(base, body):
    r = post_fuzzed(base, "/v1/completions", body)
    STATUSES["completions"][r.status_code] += 1
    check_answer(r, openapi.validate_completion_chunk, "CreateCompletionResponse")


# --- raw bytes ------------------------------------------------------------------------

VALID = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n"
    b'{"model": "smollm2-135m-instruct", "prompt": "Hi", "m":1}',
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
]
TOKENS = [b"\r\n", b"\r\n\r\n", b" ", b":", b"HTTP/1.1", b"HTTP/1.0", b"Content-Length: ", b"Transfer-Encoding: chunked",
          b"0", b"99999999999999999999", b"\x00", b"\xff", b"GET", b"POST", b"/v1/", b"%", b"?", b"Connection: close"]


@st.composite
def raw_requests(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "token"]))
        if how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "replace":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
        else:
            data[at:at] = draw(st.sampled_from(TOKENS))
    if draw(st.booleans()):
        data += draw(st.sampled_from(VALID))  # a pipelined second request
    return bytes(data)


def send_raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # no more is coming: an incomplete request ends now, not at a timeout
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


@FUZZ
@given(data=raw_requests())
def test_fuzzed_raw_bytes_never_get_a_5xx_and_the_server_lives(base, data):
    answer = send_raw(base, data)
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit() and line[9:10] != b"1":
            STATUSES["raw"][int(line[9:12])] += 1
            # 501 (a transfer coding we do not know) and 505 (an HTTP version) are HTTP's own answers to such requests.
            assert not line[9:10] == b"5" or line[9:12] in (b"501", b"505"), answer[:300]
    health = httpx.get(base + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
