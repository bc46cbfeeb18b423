"""What a hostile or careless client did to a real `pycompat serve` (issue 9's
reproducers): each is now a 4xx, or is answered, and the process lives on."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

import openapi
from conftest import peak_rss_bytes, running_server

MODEL = "smollm2-135m-instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
HUGE_INT = "1" + "0" * 4400  # more digits than Python's int() converts by default


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with a small cache (one long request at a time) and a queue of one."""
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    with running_server(log, "--context-length", "256", "--kv-cache-mb", "8", "--max-queue", "1") as (proc, url):
        yield proc, url.removesuffix("/v1")


@pytest.fixture
def http(served):
    proc, base = served
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client
    assert proc.poll() is None, "the server died"


def raw(base: str, data: bytes, shut_write: bool = False, timeout: float = 30) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    body = r.json()
    openapi.validate("ErrorResponse", body)
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def post_raw_json(http: httpx.Client, path: str, text: str) -> httpx.Response:
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("path, status", [("/health", 200), ("/v1/models", 200), ("/", 200), ("/nope", 404),
                                          ("/v1/completions", 405)])
def test_head_requests_get_heads_and_the_server_lives(http, path, status):
    r = http.head(path)
    assert r.status_code == status and r.content == b""
    if status == 200:
        assert int(r.headers["content-length"]) == len(http.get(path).content)


@pytest.mark.parametrize("text, param", [
    (json.dumps({**CHAT, "n": 0}).replace('"n": 0', f'"n": {HUGE_INT}'), None),
    (json.dumps({**CHAT, "max_tokens": 0}).replace('"max_tokens": 0', f'"max_tokens": {HUGE_INT}'), None),
    (json.dumps({**CHAT, "logit_bias": {HUGE_INT: 1}}), "logit_bias"),
    (json.dumps({**CHAT, "logit_bias": {"1" * 40: 1}}), "logit_bias"),
    (json.dumps({**CHAT, "model": "\ud800"}), None),
    (json.dumps({**CHAT, "\ud800": 1}), None),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}), None),
    (json.dumps({**CHAT, "top_k": 2**64}), "top_k"),
    (json.dumps({**CHAT, "top_k": 2**64, "stream": True}), "top_k"),
    (json.dumps({**CHAT, "seed": 2**64}), "seed"),
    (json.dumps({**CHAT, "max_tokens": 2**40}), "max_tokens"),
    (json.dumps({**CHAT, "stop": ["a" * 100_000]}), "stop"),  # matching it cost seconds per token
    (json.dumps({**CHAT, "temperature": 0}).replace('"temperature": 0', '"temperature": NaN'), None),
    (json.dumps({**CHAT, "temperature": 0}).replace('"temperature": 0', '"temperature": Infinity'), None),
    (json.dumps({**CHAT, "temperature": 0}).replace('"temperature": 0', '"temperature": 1e999'), "temperature"),
])
def test_chat_bodies_that_were_500s_are_400s(http, text, param):
    error = assert_error(post_raw_json(http, "/v1/chat/completions", text), 400, param)
    assert "decimal instead" not in error["message"]  # "expected a decimal, but got a decimal instead"


@pytest.mark.parametrize("prompt", ["\ud800", ["ok", "\udfff"]])
def test_completion_prompts_with_lone_surrogates_are_400s(http, prompt):
    text = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2})  # ensure_ascii: "\ud800" escapes
    assert_error(post_raw_json(http, "/v1/completions", text), 400, code="invalid_unicode")


def test_a_body_far_too_long_for_the_context_is_refused_before_tokenizing(http):
    body = {**CHAT, "messages": [{"role": "user", "content": "word " * 1_500_000}]}  # 7.5 MB
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, "messages", "context_length_exceeded")
    assert "at least" in error["message"]  # the byte-length bound answered, not the tokenizer
    assert http.get("/health").status_code == 200


def test_max_tokens_zero_generates_nothing(http):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["Hello", "Hi there"], "max_tokens": 0})
    body = r.json()
    openapi.validate("CreateCompletionResponse", body)
    assert [c["text"] for c in body["choices"]] == ["", ""] and {c["finish_reason"] for c in body["choices"]} == {"length"}
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] > 0
    with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 0, "stream": True}) as s:
        events = [e for e in s.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks] == [("", "length")]


def test_a_half_closed_client_gets_its_answer(served):
    _, base = served
    body = json.dumps(CHAT).encode()
    answer = raw(base, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body), shut_write=True)
    final = answer.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    assert final.startswith(b"HTTP/1.1 200 ")
    assert json.loads(final.split(b"\r\n\r\n", 1)[1])["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("data, status", [
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    (b"GET http://127.0.0.1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 200),
])
def test_protocol_details(served, data, status):
    _, base = served
    assert raw(base, data).startswith(b"HTTP/1.1 %d " % status)


def test_junk_sent_during_a_stream_is_not_buffered(served, http):
    proc, base = served
    host, port = base.removeprefix("http://").split(":")
    rss_before = peak_rss_bytes(proc.pid)
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 200, "logit_bias": {"0": -100, "2": -100}}).encode()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        try:
            while sent < 300 << 20:
                s.sendall(b"x" * (1 << 20))
                sent += 1 << 20
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 300 << 20, "the server kept reading"
    assert peak_rss_bytes(proc.pid) - rss_before < 100 << 20
    assert http.get("/health").json()["status"] == "ok"


def test_a_multi_prompt_request_that_overflows_the_queue_is_a_429(served, http):
    """One long request runs (the cache holds one), one waits (the queue holds
    one request); a completion with several prompts must then be refused whole."""
    _, base = served
    long = {**CHAT, "max_tokens": 200, "logit_bias": {"0": -100, "2": -100}}
    with httpx.Client(base_url=base, timeout=120) as a, httpx.Client(base_url=base, timeout=120) as b:
        with a.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as running:
            lines = running.iter_lines()
            next(lines)  # generating now
            import threading

            waiting = threading.Thread(target=lambda: b.post("/v1/chat/completions", json=long))
            waiting.start()
            deadline = time.monotonic() + 30
            while http.get("/health").json()["queued"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 2})
            assert_error(r, 429, code="rate_limit_exceeded")
            assert r.headers["retry-after"] == "1"
            for _ in lines:
                pass
        waiting.join()
    assert http.get("/health").json()["kv_cache"]["blocks_used"] == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/chatcmpl-x/messages",
                                  "/v1/responses/resp_x/input_items", "/v1/conversations/conv_x/items"])
def test_a_list_limit_of_thousands_of_digits_is_a_400(http, path):
    # int() refuses more than 4,300 digits: it was a 500.
    assert_error(http.get(path, params={"limit": "9" * 5000}), 400, "limit", "invalid_value")
    assert_error(http.get(path, params={"limit": "0" * 5000}), 400, "limit", "invalid_value")


def test_a_list_limit_with_leading_zeros_is_its_number(http):
    assert http.get("/v1/chat/completions", params={"limit": "0" * 5000 + "7"}).status_code == 200


def test_an_input_of_tens_of_thousands_of_items_stalls_no_one(served, http):
    """Each input item is checked for a reused id and given a new one: that was
    quadratic (and 30 us an id) on the event loop, so /health waited 27 s."""
    _, base = served
    body = {"model": MODEL, "input": [{"role": "user", "content": ""}] * 40_000, "max_output_tokens": 2}
    answer = {}
    posting = threading.Thread(target=lambda: answer.update(r=httpx.post(base + "/v1/responses", json=body, timeout=120)))
    posting.start()
    slowest = 0.0
    while posting.is_alive():
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    posting.join()
    assert_error(answer["r"], 400, "input", "context_length_exceeded")
    assert slowest < 2.0, f"/health waited {slowest:.1f} s"
