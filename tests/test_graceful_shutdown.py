"""Graceful shutdown and health: SIGTERM drains a real server (running streams
finish, new requests and connections are refused, exit 0), a drain deadline
ends the streams still running with an error event, a second signal exits at
once, stored state survives; and /health's phases (loading, ok, draining),
checked in-process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from conftest import running_server
from pycompat.api.app import App
from pycompat.api.openai.sse import sse_response
from pycompat.api.registry import Registry
from pycompat.api.render import request_lifecycle
from pycompat.api.router import Route
from pycompat.http.messages import Request, Response
from pycompat.lifecycle import DRAINING, LOADING, READY, Lifecycle

MODEL = "smollm2-135m-instruct"
WAIT = 60  # seconds at most for anything the server does (a bound on a hang, not a speed check)


# --- helpers for the real server ------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def wait_for_log(log: Path, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log:\n{log.read_text()}"
        time.sleep(0.02)


class Stream(threading.Thread):
    """One streaming completion read to its end; ``events`` holds its data lines
    as sent, ``error`` what broke the read (a cut socket), ``started`` is set at
    the first event."""

    def __init__(self, url: str, max_tokens: int):
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection(*address(self.url), timeout=WAIT)
            body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": self.max_tokens, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            while line := response.readline():  # http.client raises IncompleteRead on a cut chunked body
                if line.startswith(b"data: "):
                    self.events.append(line[6:].decode().strip())
                    self.started.set()
            conn.close()
        except BaseException as e:
            self.error = e
        finally:
            self.started.set()

    def chunks(self) -> list[dict]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    @property
    def tokens(self) -> int | None:
        """completion_tokens from the usage chunk, if one came."""
        return next((c["usage"]["completion_tokens"] for c in self.chunks() if c.get("usage")), None)

    @property
    def finish_reason(self) -> str | None:
        return next((c["choices"][0]["finish_reason"] for c in self.chunks() if c.get("choices") and c["choices"][0]["finish_reason"]), None)


def start_streams(url: str, n: int, max_tokens: int) -> list[Stream]:
    streams = [Stream(url, max_tokens) for _ in range(n)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(WAIT)
        assert s.error is None, s.error
    return streams


def kept_alive(url: str) -> http.client.HTTPConnection:
    """A connection that has answered one request and is kept open."""
    conn = http.client.HTTPConnection(*address(url), timeout=WAIT)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    return conn


# --- draining a real server -----------------------------------------------------------


def test_sigterm_lets_running_streams_finish_refuses_new_work_and_exits_0(tmp_path):
    log = tmp_path / "serve.log"
    with running_server(log, "--model", MODEL) as (proc, url):
        health_conn, request_conn = kept_alive(url), kept_alive(url)
        streams = start_streams(url, 8, max_tokens=64)
        proc.send_signal(signal.SIGTERM)
        wait_for_log(log, "SIGTERM: draining")
        assert "8 running" in log.read_text()  # the streams were mid-way when the drain began

        # A new request on a kept-alive connection: a 503 in OpenAI's shape, and the connection closes.
        health_conn.request("GET", "/health")
        health = health_conn.getresponse()
        assert health.status == 503 and health.getheader("connection") == "close"
        assert json.loads(health.read())["status"] == "draining"
        request_conn.request("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 4}),
                             {"content-type": "application/json"})
        refused = request_conn.getresponse()
        assert refused.status == 503 and refused.getheader("connection") == "close"
        assert json.loads(refused.read())["error"]["code"] == "server_shutting_down"
        # A new connection is refused: the listening socket is closed.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address(url), timeout=WAIT)

        for s in streams:
            s.join(WAIT)
            assert s.error is None, s.error
            assert s.events[-1] == "[DONE]" and s.finish_reason == "length" and s.tokens == 64, s.events[-3:]
        assert proc.wait(WAIT) == 0
    assert "drained: every running request finished" in log.read_text()


def test_at_the_drain_deadline_each_stream_ends_with_an_error_event_and_the_server_exits_0(tmp_path):
    log = tmp_path / "serve.log"
    with running_server(log, "--model", MODEL, "--drain-timeout", "0.5") as (proc, url):
        streams = start_streams(url, 4, max_tokens=2000)
        proc.send_signal(signal.SIGTERM)
        for s in streams:
            s.join(WAIT)
            assert s.error is None, s.error  # the body ended well-formed, not a cut socket
            last = json.loads(s.events[-1])
            assert last["error"]["code"] == "server_shutting_down" and last["error"]["type"] == "server_error", s.events[-2:]
            assert s.finish_reason is None and "[DONE]" not in s.events
        assert proc.wait(WAIT) == 0
    assert "drain timeout: 4 requests still running were ended with an error" in log.read_text()


def test_a_second_signal_exits_at_once(tmp_path):
    log = tmp_path / "serve.log"
    with running_server(log, "--model", MODEL, "--drain-timeout", "600") as (proc, url):
        streams = start_streams(url, 1, max_tokens=2000)
        proc.send_signal(signal.SIGTERM)
        wait_for_log(log, "SIGTERM: draining")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 128 + signal.SIGTERM  # not the drain's 600 s
        streams[0].join(WAIT)
    assert "SIGTERM again: exiting now" in log.read_text()


def test_a_response_stored_just_before_sigterm_is_there_after_a_restart(tmp_path):
    state = str(tmp_path / "state.sqlite3")
    with running_server(tmp_path / "first.log", "--model", MODEL, "--state", state) as (proc, url):
        conn = http.client.HTTPConnection(*address(url), timeout=WAIT)
        conn.request("POST", "/v1/responses", json.dumps({"model": MODEL, "input": "Say hi.", "max_output_tokens": 8}),
                     {"content-type": "application/json"})
        stored = json.loads(conn.getresponse().read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    with running_server(tmp_path / "second.log", "--model", MODEL, "--state", state) as (_, url):
        conn = http.client.HTTPConnection(*address(url), timeout=WAIT)
        conn.request("GET", f"/v1/responses/{stored['id']}")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["output"] == stored["output"]


# --- the phases, in-process --------------------------------------------------------------


def request(path: str, method: str = "GET") -> Request:
    return Request(method, path, [("host", "127.0.0.1")])


async def test_health_says_loading_until_the_models_are_ready_and_draining_after():
    lifecycle = Lifecycle()
    app = App(None, lifecycle=lifecycle)
    assert lifecycle.phase == LOADING
    health = await app(request("/health"))
    assert health.status == 503 and json.loads(health.body)["status"] == "loading"
    assert (await app(request("/"))).status == 200
    models = await app(request("/v1/models"))
    assert models.status == 503 and json.loads(models.body)["error"]["code"] == "server_loading"

    app.serve_models(Registry([]))
    assert lifecycle.phase == READY
    health = await app(request("/health"))
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"
    assert (await app(request("/v1/models"))).status == 200

    await lifecycle.drain(0)
    assert lifecycle.phase == DRAINING
    health = await app(request("/health"))
    assert health.status == 503 and json.loads(health.body)["status"] == "draining"
    assert ("connection", "close") in health.headers
    models = await app(request("/v1/models"))
    assert models.status == 503 and json.loads(models.body)["error"]["code"] == "server_shutting_down"


async def test_a_drain_cuts_a_stream_at_its_deadline_with_an_error_event(autojump_clock):
    """With trio's clock jumping ahead: the stream outlives the 30 s timeout, so it is cut then, not before."""
    lifecycle = Lifecycle(READY)

    async def forever():
        n = 0
        while True:
            await trio.sleep(1)
            n += 1
            yield f"data: {n}\n\n".encode()

    request_lifecycle.set(lifecycle)
    response = sse_response(forever())
    pieces: list[bytes] = []

    async def read() -> None:
        with lifecycle.request():
            async for piece in response.stream:
                pieces.append(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(5.5)
        start = trio.current_time()
        assert await lifecycle.drain(30) == 1
        assert trio.current_time() - start == pytest.approx(30)
    assert len(pieces) == 36  # 5 before the drain, 30 during it, then the error
    assert json.loads(pieces[-1].removeprefix(b"data: "))["error"]["code"] == "server_shutting_down"


async def test_a_drain_waits_for_requests_that_finish_before_the_deadline(autojump_clock):
    lifecycle = Lifecycle(READY)

    async def short_request() -> None:
        with lifecycle.request():
            await trio.sleep(3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(short_request)
        await trio.sleep(1)
        start = trio.current_time()
        assert await lifecycle.drain(30) == 0
        assert trio.current_time() - start == pytest.approx(2)  # when the request ended, not at the deadline
    with lifecycle.cuttable() as scope:  # nothing was cut, so new scopes are not either
        await trio.sleep(0)
    assert not scope.cancelled_caught


async def test_a_request_still_waiting_at_the_deadline_is_answered_503(autojump_clock):
    """A non-streamed answer (here a handler that would wait an hour) is cut too, into an error in OpenAI's shape."""
    lifecycle = Lifecycle(READY)
    app = App(Registry([]), lifecycle=lifecycle)

    async def slow(request: Request) -> Response:
        await trio.sleep(3600)
        return Response(200, b"{}")

    app.router.add([Route("GET", "/slow", slow)])
    answers: list[Response] = []

    async def ask() -> None:
        with lifecycle.request():
            answers.append(await app(request("/slow")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.sleep(1)
        assert await lifecycle.drain(30) == 1
    [answer] = answers
    assert answer.status == 503 and json.loads(answer.body)["error"]["code"] == "server_shutting_down"
