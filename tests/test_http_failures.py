"""The HTTP layer under failure and abuse: failures injected at every stage of
a request stay in their connection; heads, bodies, buffers and connections are
bounded; timeouts fire (trio's MockClock: no real waiting); half-closed clients
are answered (test_http_server.py shows vanished ones cancelled)."""

from __future__ import annotations

import json
import logging
import socket
from functools import partial

import h11
import pytest
import trio
import trio.testing

from pycompat.api.openai.errors import error_body
from pycompat.http import server as http_server
from pycompat.http.messages import Request, Response
from fake_streams import ScriptedStream
from pycompat.http.server import Limits, serve_connection

GET = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(request: Request) -> Response:
    return Response(200, json.dumps({"method": request.method, "path": request.path}).encode())


@pytest.fixture
def server(start_http_server):
    """Starts the HTTP layer alone (handler ok unless given); returns the port."""
    return lambda handler=ok, limits=None: start_http_server(handler, limits)


async def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Sends ``data`` on a new connection and reads until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    with trio.fail_after(timeout):
        try:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                out += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return out


async def still_serving(port: int) -> None:
    answer = await exchange(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- failures injected at each stage: they stay in their connection -----------------


class Boom(Exception):
    pass


async def handler_raises(request: Request) -> Response:
    raise Boom("in the handler")


async def handler_raises_a_group(request: Request) -> Response:
    async with trio.open_nursery() as nursery:  # a failing task inside a nursery: an ExceptionGroup
        nursery.start_soon(handler_raises, request)
    raise AssertionError("unreachable")


async def response_h11_refuses(request: Request) -> Response:
    return Response(200, b"{}", headers=[("bad header name", "x")])  # h11 raises LocalProtocolError


async def stream_fails_midway(request: Request) -> Response:
    async def pieces():
        yield b"data: 1\n\n"
        raise Boom("in the stream body")

    return Response(200, content_type="text/event-stream", stream=pieces())


@pytest.mark.parametrize("handler, before_any_byte", [
    (handler_raises, True),
    (handler_raises_a_group, True),
    (response_h11_refuses, True),
    (stream_fails_midway, False),
])
async def test_a_failure_while_answering_stays_in_its_connection(server, caplog, handler, before_any_byte):
    async def fails_on_x(request: Request) -> Response:
        return await (handler if request.path == "/x" else ok)(request)

    failing = await server(fails_on_x)
    answer = await exchange(failing, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    if before_any_byte:
        assert status(answer) == 500 and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "server_error"
    else:  # the head was out: the connection is cut, so the client sees an unfinished chunked body
        assert answer.startswith(b"HTTP/1.1 200 ") and not answer.endswith(b"0\r\n\r\n")
    assert any("GET /x" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR), "not logged with the request"
    await still_serving(failing)


class FailingStream(ScriptedStream):
    """A connection whose receive or send raises an unexpected error on a chosen call."""

    def __init__(self, data: bytes, fail_receive_at: int | None = None, fail_send_at: int | None = None):
        self._data, self.sent = data, b""
        self._receives, self._sends = 0, 0
        self._fail_receive_at, self._fail_send_at = fail_receive_at, fail_send_at

    async def receive_some(self, max_bytes=None) -> bytes:
        self._receives += 1
        if self._receives == self._fail_receive_at:
            raise Boom("while reading")
        data, self._data = self._data[:7], self._data[7:]
        if not data:
            await trio.sleep_forever()
        return data

    async def send_all(self, data) -> None:
        self._sends += 1
        if self._sends == self._fail_send_at:
            raise Boom("while sending")
        self.sent += bytes(data)


@pytest.mark.parametrize("where", [dict(fail_receive_at=1), dict(fail_receive_at=4), dict(fail_send_at=1)])
async def test_a_failure_in_reading_or_sending_ends_only_that_connection(caplog, where):
    conn = FailingStream(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", **where)
    with trio.fail_after(5):
        await serve_connection(conn, ok, error_body, Limits())  # returns: does not raise
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    if "fail_receive_at" in where:
        assert conn.sent.startswith(b"HTTP/1.1 500 ")


async def test_a_failure_in_reading_with_the_real_server_running(server, monkeypatch):
    """The same through serve(): a connection whose read raises (patched for
    requests to /fail only) does not take the server or other clients down."""
    real = http_server._Connection._check_head

    def failing_check(self, event):
        if event.target == b"/fail":
            raise Boom("injected while reading the head")
        return real(self, event)

    monkeypatch.setattr(http_server._Connection, "_check_head", failing_check)
    port = await server()
    answers = [await exchange(port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(3)]
    assert all(status(a) == 500 for a in answers)
    await still_serving(port)


# --- HEAD ---------------------------------------------------------------------------


async def test_head_gets_the_get_head_without_a_body(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"HEAD /ok HTTP/1.1\r\nHost: x\r\n\r\n" + GET)  # then a GET on the same connection
    data = b""
    with trio.fail_after(5):
        while data.count(b"HTTP/1.1 200 ") < 2 or not data.endswith(b"}"):
            data += await stream.receive_some(65536)
    head_response, get_response = data.split(b"HTTP/1.1 200 OK")[1:]
    head, rest = head_response.split(b"\r\n\r\n", 1)
    would_be = json.dumps({"method": "HEAD", "path": "/ok"}).encode()
    assert rest == b"" and f"content-length: {len(would_be)}".encode() in head.lower()
    assert get_response.endswith(b'{"method": "GET", "path": "/ok"}')


# --- limits on what a request may be --------------------------------------------------


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),  # a 100 KB target
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"b" * 60_000 + b"\r\nX-Pad2: " + b"c" * 60_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n", 431),  # 50 KB of fields
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"d" * 70_000, 431),  # a head not finished yet, already over 64 KiB
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
])
async def test_oversized_or_unsupported_heads_are_refused(server, request_bytes, expected):
    port = await server()
    answer = await exchange(port, request_bytes)
    assert status(answer) == expected
    assert set(json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]) == {"message", "type", "param", "code"}
    await still_serving(port)


async def test_absolute_form_targets_are_served(server):
    port = await server()
    answer = await exchange(port, b"GET http://localhost:8000/ok?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status(answer) == 200 and b'"path": "/ok"' in answer


async def test_bytes_sent_during_a_response_are_capped_then_the_connection_closed(server):
    release = trio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200, b"{}")

    port = await server(slow, Limits(max_body_bytes=1000, max_header_bytes=1000))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GET)
    sent = 0
    with trio.fail_after(5):
        try:
            while sent < 10_000_000:  # far more than 2,000 bytes: the server must hang up long before
                await stream.send_all(b"x" * 65536)
                sent += 65536
        except trio.BrokenResourceError:
            pass
    assert sent < 10_000_000
    release.set()
    await still_serving(port)


# --- clients that leave, or half-leave ------------------------------------------------


async def test_a_half_closed_client_is_answered(server):
    async def slowish(request: Request) -> Response:
        await trio.sleep(0.3)  # the half-close arrives while the handler works
        return Response(200, b'{"done": true}')

    port = await server(slowish)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    stream.socket.shutdown(socket.SHUT_WR)
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            data += chunk
    # An interim 100 Continue (the liveness probe) may come first; the answer follows.
    assert data.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"").startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b'{"done": true}')


# --- connections and timeouts ---------------------------------------------------------


async def test_idle_kept_alive_connections_make_room_for_new_ones(server):
    port = await server(limits=Limits(max_connections=2))
    idle = []
    for _ in range(2):  # both slots taken by clients that finished a request and keep the connection
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(GET)
        with trio.fail_after(5):
            assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        idle.append(s)
    await still_serving(port)  # a third client gets in: an idle one was closed for it
    closed = 0
    for s in idle:
        with trio.move_on_after(1):
            closed += await s.receive_some(65536) == b""
    assert closed >= 1


async def test_beyond_the_cap_new_connections_wait_until_a_slot_frees(server):
    port = await server(limits=Limits(max_connections=2, header_timeout=0.5))
    silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]  # hold both slots, send nothing
    waiting = await trio.open_tcp_stream("127.0.0.1", port)  # in the listen backlog
    await waiting.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    start = trio.current_time()
    with trio.fail_after(5):
        answer = await waiting.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and trio.current_time() - start >= 0.3  # served once a silent one timed out
    for s in silent:
        with trio.fail_after(5):
            assert await s.receive_some(65536) == b""  # closed at the head timeout


async def serve_memory(limits: Limits):
    """A connection over an in-memory stream pair: (client stream, task that serves it)."""
    client, server_side = trio.testing.memory_stream_pair()
    return client, partial(serve_connection, server_side, ok, error_body, limits)


async def read_all(client) -> bytes:
    out = b""
    while chunk := await client.receive_some(65536):
        out += chunk
    return out


async def test_a_head_that_trickles_in_too_slowly_gets_408(autojump_clock, nursery):
    client, run = await serve_memory(Limits(header_timeout=10))
    nursery.start_soon(run)
    answered = []

    async def read_answer():
        answered.append(await client.receive_some(65536))
        answered.append(trio.current_time())

    nursery.start_soon(read_answer)
    await client.send_all(b"GET / HTTP/1.1\r\n")
    for _ in range(100):  # one header line a second: a slowloris
        try:
            await client.send_all(b"X-A: b\r\n")
        except trio.BrokenResourceError:
            break
        await trio.sleep(1)
        if answered:
            break
    answer, when = answered
    assert status(answer) == 408 and when == pytest.approx(10)


async def test_a_slowloris_client_does_not_stop_others_being_served(autojump_clock, nursery):
    """While one client trickles its head a byte a second, others are answered
    at once; the trickler gets its 408 at the head timeout, not later."""
    slow, run_slow = await serve_memory(Limits(header_timeout=10))
    nursery.start_soon(run_slow)
    cut_at = []

    async def trickle():
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
            try:
                await slow.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            await trio.sleep(1)

    async def read_slow():
        cut_at.append((await read_all(slow), trio.current_time()))

    nursery.start_soon(trickle)
    nursery.start_soon(read_slow)
    start = trio.current_time()
    for second in range(5):  # a request from another client every second while the trickle goes on
        fast, run_fast = await serve_memory(Limits(header_timeout=10))
        nursery.start_soon(run_fast)
        await fast.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(fast)
        assert status(answer) == 200 and trio.current_time() == pytest.approx(start + second)  # no wait at all
        await trio.sleep(1)
    while not cut_at:
        await trio.sleep(1)
    answer, when = cut_at[0]
    assert status(answer) == 408 and when - start == pytest.approx(10)


async def test_a_new_connection_has_header_timeout_for_its_whole_head(autojump_clock, nursery):
    client, run = await serve_memory(Limits(header_timeout=10))
    nursery.start_soon(run)
    await trio.sleep(9)
    await client.send_all(b"G")  # a first byte late, then nothing: the 408 comes at 10 s, not 19
    assert status(await client.receive_some(65536)) == 408 and trio.current_time() == pytest.approx(10)


async def test_a_connection_that_never_sends_is_closed_after_the_head_timeout(autojump_clock, nursery):
    client, run = await serve_memory(Limits(header_timeout=10))
    nursery.start_soon(run)
    start = trio.current_time()
    assert await read_all(client) == b""
    assert trio.current_time() - start == pytest.approx(10)


async def test_a_kept_alive_connection_closes_after_its_idle_time(autojump_clock, nursery):
    client, run = await serve_memory(Limits(keepalive_timeout=30))
    nursery.start_soon(run)
    await client.send_all(GET)
    first = await client.receive_some(65536)
    start = trio.current_time()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert await read_all(client) == b""
    assert trio.current_time() - start == pytest.approx(30)


async def test_a_body_that_never_completes_gets_408(autojump_clock, nursery):
    client, run = await serve_memory(Limits(body_timeout=30))
    nursery.start_soon(run)
    await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert status(await read_all(client)) == 408
    assert trio.current_time() == pytest.approx(30)


def test_h11_still_bounds_only_incomplete_heads():
    """Why _check_head exists: h11 parses a complete head of any size."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1000)
    conn.receive_data(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
