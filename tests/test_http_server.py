"""The HTTP layer on its own: a real listening socket, a stand-in handler, and
raw bytes from the client side, so framing and connection handling are exact."""

from __future__ import annotations

import json

import pytest
import trio

from pycompat.api.openai.errors import error_body
from pycompat.http.messages import Request, Response
from fake_streams import ScriptedStream
from pycompat.http.server import Limits


async def echo(request: Request) -> Response:
    body = {"method": request.method, "path": request.path, "body": request.body.decode()}
    return Response(200, json.dumps(body).encode())


async def streamed(request: Request) -> Response:
    async def pieces():
        for p in (b"data: 1\n\n", b"data: 2\n\n"):
            yield p

    return Response(200, content_type="text/event-stream", stream=pieces())


@pytest.fixture
def server(start_http_server):
    """Starts the HTTP layer alone (handler echo unless given); returns the port."""
    return lambda handler=echo, limits=None: start_http_server(handler, limits)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    out = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0]) for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [(b["path"], b["body"]) for b in bodies] == [("/a", "one"), ("/b", "two"), ("/c", "")]


async def test_streamed_body_uses_chunked_encoding(server):
    port = await server(streamed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await read_until_closed(stream)
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"


async def test_body_over_the_limit_gets_413_and_an_openai_error(server):
    port = await server(limits=Limits(max_body_bytes=10))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n01234567890")
    data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert set(error) == {"message", "type", "param", "code"} and "10 bytes" in error["message"]


async def test_chunked_body_over_the_limit_gets_413(server):
    port = await server(limits=Limits(max_body_bytes=10))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n")
    assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02 nonsense\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"])
async def test_malformed_requests_get_400_and_the_server_keeps_serving(server, garbage):
    port = await server()
    bad = await trio.open_tcp_stream("127.0.0.1", port)
    await bad.send_all(garbage)
    assert (await read_until_closed(bad)).startswith(b"HTTP/1.1 400 ")
    good = await trio.open_tcp_stream("127.0.0.1", port)
    await good.send_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(good)).startswith(b"HTTP/1.1 200 ")


async def test_expect_100_continue_is_honoured(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    with trio.fail_after(5):
        interim = await stream.receive_some(65536)
    assert interim.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"hi")
    with trio.fail_after(5):
        final = await stream.receive_some(65536)
    assert final.startswith(b"HTTP/1.1 200 ") and b'"body": "hi"' in final


async def test_a_client_that_hangs_up_cancels_its_request(server):
    cancelled = trio.Event()

    async def slow(request: Request) -> Response:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    port = await server(slow)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.05)
    await stream.aclose()
    with trio.fail_after(5):
        await cancelled.wait()


async def test_a_failing_handler_gives_500_not_a_traceback(server):
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    port = await server(broken)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 500 ") and b"secret" not in data and b"Traceback" not in data


class ResetDuringBody(ScriptedStream):
    """A client connection that sends one request, then never sends again,
    and resets the connection once the response head has been written."""

    def __init__(self, request: bytes):
        self._request, self.sends = request, 0

    async def receive_some(self, max_bytes=None) -> bytes:
        if self._request:
            data, self._request = self._request, b""
            return data
        await trio.sleep_forever()

    async def send_all(self, data) -> None:
        self.sends += 1
        if self.sends > 1:
            raise trio.BrokenResourceError("connection reset by peer")


async def test_a_write_to_a_reset_connection_ends_that_connection_only():
    """The failing write happens inside the task group that also watches the
    socket; its error must end the connection quietly (it used to escape,
    wrapped in an ExceptionGroup, and stop the server) and close the stream's
    generator, which is what cancels a generation."""
    from pycompat.api.openai.sse import sse_response
    from pycompat.http.server import serve_connection

    closed = trio.Event()

    async def endless(request: Request) -> Response:
        async def pieces():
            try:
                while True:
                    yield b"data: x\n\n"
            finally:
                closed.set()

        return sse_response(pieces())  # the routes' wrapper must close what it wraps

    conn = ResetDuringBody(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        await serve_connection(conn, endless, error_body, Limits())
    assert closed.is_set() and conn.sends == 2
