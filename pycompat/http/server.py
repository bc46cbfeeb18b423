"""HTTP/1.1 on trio with h11: the socket loop and nothing else.

Each connection runs one request at a time: read a request (head and whole
body), ask the handler for a Response, write it, and go on to the next request
on the same connection (keep-alive; pipelined requests are already buffered in
h11 and so are answered in order).

The rules this module keeps:
- Nothing that happens on one connection ends the server. Every connection
  task runs inside a boundary (``serve_connection``) that catches whatever its
  work raises, exception groups included, logs it with the request, answers
  500 if no byte of a response has been written yet, and closes that
  connection. Only cancellation (the server stopping) passes through.
- Every wait has a bound: the head of a request must arrive within
  ``header_timeout`` of its first byte (or of the connection opening), the body
  within ``body_timeout``, and a kept-alive connection may idle for
  ``keepalive_timeout``. At most ``max_connections`` are open; beyond that new
  ones wait in the listen backlog, after idle kept-alive connections have been
  closed to make room (as nginx does).
- Memory per connection is bounded: the head by ``max_header_bytes`` and
  ``max_headers``, the body by ``max_body_bytes``, and bytes a client sends
  while its response is in progress (pipelined requests) by the same sum;
  past that the connection is closed.
- A client that goes away cancels its request at once. A client that only
  half-closes (shuts down its sending side after the request, as HTTP allows)
  is still answered: on end-of-file we send a ``100 Continue`` interim
  response, which every HTTP/1.1 client must skip; a peer that has really
  closed answers it with a reset, which the socket reports (SO_ERROR).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus

import h11
import trio

from pycompat.http.messages import Request, Response
from pycompat.lifecycle import READY, Lifecycle

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
# Builds the body of an error the HTTP layer itself produces (status, message).
ErrorBody = Callable[[int, str], bytes]

RECEIVE_BYTES = 64 * 1024
LINGER_SECONDS, LINGER_BYTES = 2.0, 64 << 20  # after an error response, what is read before closing
SERVER_NAME = "pycompat"
SUPPORTED_VERSIONS = (b"1.0", b"1.1")
DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError)
# accept() errors that mean "out of file descriptors or memory for now": wait, then go on.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass
class Limits:
    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 64 << 10  # request line and header fields together
    max_headers: int = 100
    max_connections: int = 1000
    header_timeout: float = 10.0  # to receive a request's head, from its first byte or the connection's start
    body_timeout: float = 30.0  # to receive a request's body once its head is in
    keepalive_timeout: float = 30.0  # a kept-alive connection's idle time between requests

    @property
    def max_buffered_bytes(self) -> int:
        """Most bytes held for one connection that are not yet a request."""
        return self.max_header_bytes + self.max_body_bytes


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _RequestRejected(Exception):
    """A request the HTTP layer answers itself (too large, too slow); the connection closes after."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Connection:
    def __init__(self, stream: trio.abc.Stream, limits: Limits, client: str, lifecycle: Lifecycle | None = None):
        self.stream = stream
        self.limits = limits
        self.lifecycle = lifecycle or Lifecycle(READY)
        self.client = client
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.request: Request | None = None  # the one being served, for logs
        self.response_started = False  # a byte of the current response is on the wire
        self.served = 0  # requests answered on this connection
        self.idle_scope: trio.CancelScope | None = None  # set while idling between requests
        self._send_lock = trio.Lock()  # the response and a liveness probe may both write

    # --- reading ---------------------------------------------------------------------

    async def _receive(self) -> None:
        """Feeds the next bytes from the socket to h11 (b"" on end-of-file or a reset)."""
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except DISCONNECTS:
            data = b""
        self.conn.receive_data(data)

    async def _next_event(self):
        while True:
            try:
                event = self.conn.next_event()
            except ValueError as e:  # h11 int()s Content-Length: more than 4,300 digits raises this
                raise h11.RemoteProtocolError(f"unreadable request head ({e})", error_status_hint=400) from None
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
            await self._receive()

    def _buffered(self) -> bool:
        data, closed = self.conn.trailing_data
        return bool(data) or closed

    async def read_request(self) -> Request | None:
        """The next request, or None when the connection should close quietly
        (closed by the client, idle too long, or closed to make room)."""
        # Wait for the first byte of a request: a new connection gets the head's
        # bound, a kept-alive one the idle bound (and may be closed to make room).
        head_deadline = trio.current_time() + self.limits.header_timeout
        if not self._buffered():
            first = self.served == 0
            with trio.move_on_after(self.limits.header_timeout if first else self.limits.keepalive_timeout) as scope:
                if not first:
                    self.idle_scope = scope
                await self._receive()
            self.idle_scope = None
            if scope.cancelled_caught:
                return None
            if not first:  # the head's time starts with its first byte
                head_deadline = trio.current_time() + self.limits.header_timeout
        with trio.move_on_at(head_deadline) as scope:
            event = await self._next_event()
        if scope.cancelled_caught:
            raise _RequestRejected(408, "Timed out waiting for the request head.")
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        self._check_head(event)
        request = Request(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("ascii", "replace"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
            client=self.client,
        )
        self.request = request
        body = bytearray()
        with trio.move_on_after(self.limits.body_timeout) as scope:
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

    def _check_head(self, event: h11.Request) -> None:
        """Limits h11 leaves to us: it bounds only a head that arrives in pieces."""
        if event.http_version not in SUPPORTED_VERSIONS:
            raise _RequestRejected(505, f"HTTP/{event.http_version.decode('ascii', 'replace')} is not supported; use HTTP/1.1.")
        if len(event.headers) > self.limits.max_headers:
            raise _RequestRejected(431, f"The request has {len(event.headers)} header fields; at most {self.limits.max_headers} are accepted.")
        size = len(event.method) + len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > self.limits.max_header_bytes:
            raise _RequestRejected(431, f"The request head is larger than {self.limits.max_header_bytes} bytes.")
        declared = dict(event.headers).get(b"content-length")
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            raise _RequestRejected(413, f"Request body of {int(declared)} bytes exceeds the limit of {self.limits.max_body_bytes} bytes.")

    # --- writing ---------------------------------------------------------------------

    async def _send(self, event) -> None:
        async with self._send_lock:
            data = self.conn.send(event)
            if data:
                if isinstance(event, h11.Response):
                    self.response_started = True
                await self.stream.send_all(data)

    async def send_response(self, response: Response, head_only: bool) -> None:
        """Writes the response; ``head_only`` for HEAD requests (the same head as
        GET, no body). Whatever happens, the response's stream and ``on_close``
        are closed and called."""
        try:
            headers = [
                ("server", SERVER_NAME),
                ("date", formatdate(usegmt=True)),
                ("content-type", response.content_type),
                *response.headers,
            ]
            if response.stream is None:
                headers.append(("content-length", str(len(response.body))))
            # Header values a handler echoes from a request may hold any latin-1 byte; h11 takes ASCII str only.
            head = h11.Response(status_code=response.status, reason=_reason(response.status),
                                headers=[(k.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for k, v in headers])
            if response.stream is None or head_only:
                # One write for the whole response: fewer syscalls, and no small-packet delay.
                async with self._send_lock:
                    data = self.conn.send(head)
                    if response.body and not head_only:
                        data += self.conn.send(h11.Data(data=response.body))
                    data += self.conn.send(h11.EndOfMessage())
                    self.response_started = True
                    await self.stream.send_all(data)
                return
            await self._send(head)
            async with aclosing(response.stream) as pieces:
                async for piece in pieces:
                    await self._send(h11.Data(data=piece))
            await self._send(h11.EndOfMessage())
        finally:
            with trio.CancelScope(shield=True):
                if response.stream is not None:
                    with trio.move_on_after(1):
                        await response.stream.aclose()
                if response.on_close is not None:
                    response.on_close()

    async def send_error(self, status: int, body: bytes) -> None:
        """Best effort, when no byte of a response is out yet; the connection closes after.
        Written by hand when h11 can no longer help (its state is ERROR after a bug)."""
        if self.response_started:
            return
        self.response_started = True
        head = (
            f"HTTP/1.1 {status} {_reason(status).decode()}\r\nserver: {SERVER_NAME}\r\ndate: {formatdate(usegmt=True)}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode("latin-1")
        with trio.move_on_after(5):
            try:
                async with self._send_lock:
                    await self.stream.send_all(head + body)
            except DISCONNECTS:
                return
        await self._linger()

    async def _linger(self) -> None:
        """Reads and drops what the client is still sending (a refused body) for a
        moment before closing: closing with unread bytes makes the kernel send a
        reset, which can destroy the error response before the client reads it."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES and (data := await self.stream.receive_some(RECEIVE_BYTES)):
                    drained += len(data)
            except (*DISCONNECTS, trio.BusyResourceError, AttributeError, NotImplementedError):
                pass

    # --- one request, answered while watching the socket ------------------------------

    async def respond(self, handler: Handler, request: Request) -> bool:
        """Runs the handler and sends its response while watching the socket. If the
        client goes away, the work is cancelled at once (a generation must not run on
        for nobody) and False is returned."""
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal gone
                if not await self._watch():
                    gone = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            response = await handler(request)
            try:
                await self.send_response(response, head_only=request.method == "HEAD")
            except DISCONNECTS:
                gone = True
            nursery.cancel_scope.cancel()
        return not gone

    async def _watch(self) -> bool:
        """Reads while a response is in progress. Returns False when the client is
        gone (or sent more than a connection may buffer); returns True, or never
        returns, while it is still there."""
        buffered = len(self.conn.trailing_data[0])
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except DISCONNECTS:
                return False
            if not data:
                self.conn.receive_data(b"")  # h11 now knows this connection ends after the response
                return await self._still_there_after_eof()
            buffered += len(data)
            if buffered > self.limits.max_buffered_bytes:
                log.warning("closing the connection of %s: %d bytes sent while its response was in progress",
                            self.request.describe() if self.request else self.client, buffered)
                return False
            self.conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle

    async def _still_there_after_eof(self) -> bool:
        """End-of-file: a client that closed, or one that half-closed and still
        reads. Tell them apart by writing an interim response and asking the
        socket for the reset a closed peer answers with."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return False  # not a socket (tests' in-memory streams): treat as closed
        if self.conn.their_http_version != b"1.1":
            return False  # no 1xx may go to HTTP/1.0 clients, and none of theirs half-closes: gone
        async with self._send_lock:
            if self.conn.our_state is h11.SEND_RESPONSE and not self.response_started:
                try:
                    await self.stream.send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
                except DISCONNECTS:
                    return False
        # A response already under way finds a reset through its own writes; until
        # then, look for one at growing intervals (a reset takes a round trip).
        delay = 0.01
        while True:
            await trio.sleep(delay)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            delay = min(delay * 2, 2.0)

    # --- the connection's life --------------------------------------------------------

    async def serve(self, handler: Handler, error_body: ErrorBody) -> None:
        while True:
            try:
                request = await self.read_request()
            except h11.RemoteProtocolError as e:
                await self.send_error(e.error_status_hint, error_body(e.error_status_hint, f"Malformed HTTP request: {e}"))
                return
            except _RequestRejected as e:
                await self.send_error(e.status, error_body(e.status, str(e)))
                return
            if request is None:
                return
            with self.lifecycle.request():
                if not await self.respond(handler, request):
                    return  # the client went away mid-request
            self.served += 1
            self.request, self.response_started = None, False
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            if self.lifecycle.draining.is_set():
                return  # its request is answered: the server is stopping, so the connection goes too
            self.conn.start_next_cycle()


def _peer_name(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except (AttributeError, OSError, TypeError, ValueError):
        return "unknown"


async def serve_connection(stream: trio.abc.Stream, handler: Handler, error_body: ErrorBody, limits: Limits,
                           on_open: Callable[[_Connection], None] | None = None, lifecycle: Lifecycle | None = None) -> None:
    """Serves requests on one connection until either side closes it. Never
    raises but for cancellation: this is the boundary that keeps a failure in
    one connection in that connection."""
    c = _Connection(stream, limits, _peer_name(stream), lifecycle)
    if on_open is not None:
        on_open(c)
    try:
        await c.serve(handler, error_body)
    except* DISCONNECTS:
        pass  # the client went away; nothing to tell anyone
    except* Exception as group:
        failure = group.exceptions[0] if len(group.exceptions) == 1 else group
        log.error("error while serving %s; closing the connection", c.request.describe() if c.request else c.client,
                  exc_info=failure)
        await c.send_error(500, error_body(500, "The server had an error while processing your request."))
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            try:
                await stream.aclose()
            except Exception:  # closing must not fail the boundary either
                pass


class _ConnectionSlots:
    """At most ``limit`` open connections. When all are taken, idle kept-alive
    connections are closed first to make room; if none is idle, accepting waits
    (new clients wait in the listen backlog)."""

    def __init__(self, limit: int):
        self._free = trio.Semaphore(limit)
        self._open: set[_Connection] = set()

    def track(self, c: _Connection) -> None:
        self._open.add(c)

    def forget(self, c: _Connection | None) -> None:
        self._open.discard(c)
        self._free.release()

    async def take(self) -> None:
        while True:
            if self._free.value == 0:  # full: close some idle connections (again, as others turn idle)
                idle = [c for c in self._open if c.idle_scope is not None]
                for c in idle[: max(1, len(idle) // 8)]:
                    c.idle_scope.cancel()
            with trio.move_on_after(0.25):
                await self._free.acquire()
                return


async def serve(
    handler: Handler,
    error_body: ErrorBody,
    host: str,
    port: int,
    limits: Limits | None = None,
    *,
    lifecycle: Lifecycle | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Listens on host:port and serves each connection in its own task.

    ``task_status.started`` receives the listeners (so a caller can learn the port when it asked for 0).
    When ``lifecycle`` starts draining, the listeners close (new connections are
    refused, so a load balancer moves on), each connection closes once its
    current request is answered, and idle kept-alive ones stay open until the
    caller cancels this: a request sent on one meanwhile gets the handler's answer
    (the App's 503). Running requests are counted in ``lifecycle``.
    """
    limits = limits or Limits()
    lifecycle = lifecycle or Lifecycle(READY)
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = _ConnectionSlots(limits.max_connections)

    async def run(stream: trio.SocketStream) -> None:
        opened: list[_Connection] = []

        def on_open(c: _Connection) -> None:
            opened.append(c)
            slots.track(c)

        try:
            await serve_connection(stream, handler, error_body, limits, on_open=on_open, lifecycle=lifecycle)
        finally:
            slots.forget(opened[0] if opened else None)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            await slots.take()
            try:
                stream = await listener.accept()
            except OSError as e:
                slots.forget(None)
                if e.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("accept failed (%s); trying again shortly", errno.errorcode.get(e.errno, e.errno))
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.forget(None)
                raise
            nursery.start_soon(run, stream)

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(partial(accept_loop, listener, nursery))
            task_status.started(listeners)
            await lifecycle.draining.wait()
            accepting.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
        await trio.sleep(math.inf)
