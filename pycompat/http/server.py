"""HTTP/1.1 on trio with h11: the socket loop and nothing else.

Each connection runs one request at a time: read a request (head and whole
body), ask the handler for a Response, write it, and go on to the next request
on the same connection (keep-alive; pipelined requests are already buffered in
h11 and so are answered in order). Protocol errors get a plain error response
and the connection is closed; a handler's exceptions never get here (the API
layer turns them into OpenAI-shaped errors), but if one did, the client gets a
500 and the server keeps serving.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import h11
import trio

from pycompat.http.messages import Request, Response

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
# Builds the body of an error the HTTP layer itself produces (status, message).
ErrorBody = Callable[[int, str], bytes]

RECEIVE_BYTES = 64 * 1024
SERVER_NAME = "pycompat"


@dataclass
class Limits:
    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 64 << 10
    idle_timeout: float = 75.0  # between requests on a kept-alive connection
    request_timeout: float = 30.0  # to receive one request's head and body once it has begun


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _RequestRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Connection:
    def __init__(self, stream: trio.abc.Stream, limits: Limits):
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def _send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(data)

    async def read_request(self) -> Request | None:
        """The next request, or None when the client has closed the connection."""
        event = None
        with trio.move_on_after(self.limits.idle_timeout):
            event = await self._next_event()
        if event is None or isinstance(event, h11.ConnectionClosed):
            return None  # closed by the client, or idle too long: close quietly
        assert isinstance(event, h11.Request)
        request = Request(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("ascii", "replace"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
        )
        declared = request.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise _RequestRejected(413, f"Request body of {declared} bytes exceeds the limit of {self.limits.max_body_bytes} bytes.")
        body = bytearray()
        with trio.move_on_after(self.limits.request_timeout) as scope:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.limits.max_body_bytes:
                        raise _RequestRejected(413, f"Request body exceeds the limit of {self.limits.max_body_bytes} bytes.")
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed mid-body
                    return None
        if scope.cancelled_caught:
            raise _RequestRejected(408, "Timed out waiting for the request body.")
        request.body = bytes(body)
        return request

    async def send_response(self, response: Response) -> None:
        headers = [
            ("server", SERVER_NAME),
            ("date", formatdate(usegmt=True)),
            ("content-type", response.content_type),
            *response.headers,
        ]
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        head = self.conn.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status)))
        if response.stream is None:
            # One write for the whole response: fewer syscalls, and no small-packet delay.
            body = self.conn.send(h11.Data(data=response.body)) if response.body else b""
            await self.stream.send_all(head + body + self.conn.send(h11.EndOfMessage()))
            return
        await self.stream.send_all(head)
        async with aclosing(response.stream) as pieces:
            async for piece in pieces:
                await self._send(h11.Data(data=piece))
        await self._send(h11.EndOfMessage())

    async def respond(self, handler: Handler, request: Request, error_body: ErrorBody) -> bool:
        """Runs the handler and sends its response while watching the socket: if the
        client closes it, the work is cancelled at once (a generation must not run on
        for nobody). Returns False in that case."""
        peer_closed = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal peer_closed
                while True:
                    try:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        peer_closed = True
                        nursery.cancel_scope.cancel()
                        return
                    self.conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle

            nursery.start_soon(watch)
            try:
                response = await handler(request)
            except Exception:
                log.exception("handler failed on %s %s", request.method, request.target)
                response = Response(500, error_body(500, "The server had an error while processing your request."))
            try:
                await self.send_response(response)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The client reset the connection mid-response. Caught here: out of
                # this nursery it would arrive wrapped in an ExceptionGroup, which
                # serve_connection's handler does not match, and end the server.
                peer_closed = True
            nursery.cancel_scope.cancel()
        return not peer_closed

    async def send_error(self, status: int, body: bytes) -> None:
        """Best-effort error response outside the normal cycle, then the connection closes."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(
                h11.Response(
                    status_code=status,
                    reason=_reason(status),
                    headers=[("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")],
                )
            )
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_connection(stream: trio.abc.Stream, handler: Handler, error_body: ErrorBody, limits: Limits) -> None:
    """Serves requests on one connection until either side closes it."""
    c = _Connection(stream, limits)
    try:
        while True:
            try:
                request = await c.read_request()
            except h11.RemoteProtocolError as e:
                await c.send_error(e.error_status_hint, error_body(e.error_status_hint, f"Malformed HTTP request: {e}"))
                return
            except _RequestRejected as e:
                await c.send_error(e.status, error_body(e.status, str(e)))
                return
            if request is None:
                return
            if not await c.respond(handler, request, error_body):
                return  # the client went away mid-request
            if c.conn.our_state is h11.MUST_CLOSE or c.conn.their_state is h11.MUST_CLOSE:
                return
            c.conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away; nothing to tell anyone
    except h11.ProtocolError as e:
        log.debug("closing connection after protocol error: %s", e)
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await stream.aclose()


async def serve(
    handler: Handler,
    error_body: ErrorBody,
    host: str,
    port: int,
    limits: Limits | None = None,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Listens on host:port and serves each connection in its own task.

    ``task_status.started`` receives the listeners (so a caller can learn the port when it asked for 0).
    """
    limits = limits or Limits()

    async def on_connection(stream: trio.SocketStream) -> None:
        await serve_connection(stream, handler, error_body, limits)

    await trio.serve_tcp(on_connection, port, host=host, task_status=task_status)
