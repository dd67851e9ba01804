"""A small pooled HTTP/1.1 client for plain-http shops: asyncio protocols and httptools' parser.

Only what forwarding needs: one request line and header block in one write, the body streamed
from the client's request (Content-Length as given, else re-encoded chunked), the response parsed
by httptools (llhttp) with its headers first and its body in chunks through a bounded buffer
(``pause_reading`` above ``_HIGH_WATER``, so a 1 GB download never sits in memory).

Framing: Content-Length, chunked, or until the shop closes; HEAD, 1xx, 204 and 304 have no body.
A connection goes back to its pool only once its response was read to the end, the whole request
body went out, and both sides keep it alive; anything else closes it.

A response ends where its framing ends, and the shop may say nothing more until it is asked again:
- a byte past the end (more than Content-Length, after the last chunk, a body on an answer to
  HEAD or on a 204 or 304) closes the connection; the response before it, complete and clean,
  is still delivered (as nginx does), so the outcome never depends on how TCP split the bytes,
  and the excess reaches no one (without this, llhttp parsed it as a second message into the
  same response: ``200 OKOK`` with two Content-Lengths);
- a byte on an idle pooled connection closes it, so the next request can never take the
  shop's late or surplus answer for its own (nginx serves it to the next client): seen by the
  loop, or by a look at the socket before the connection is reused, for bytes a busy loop has
  not read yet;
- a ``101`` is refused: this client never asks to upgrade (WebSockets go through aiohttp), so
  the request fails with :class:`ResponseMalformed` and the connection is closed;
- anything httptools refuses (``HttpParserUpgrade`` included) is :class:`ResponseMalformed` if it
  broke the response, the excess above if the response was complete; never an exception out of
  ``data_received`` (which asyncio would log as "Fatal error on transport").
Each of these is logged as one WARNING. Unseen is only what llhttp consumes without a callback in
the packet that ends a response: CR and LF (RFC 9112 2.2 lets a recipient skip empty lines between
messages) and, after a chunked answer to HEAD, the start of a chunk-size line. Those bytes go with
the response's parser and reach no one; the connection stays pooled.

Failures: ``TimeoutError`` (connect, headers or an idle body), ``OSError`` (refused, reset) and
:class:`HttpClientError` (the shop broke the protocol or the connection mid-message).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import fcntl
import logging
import select
import socket
import struct
import termios
import time
from typing import Final, Protocol, cast

import httptools

log = logging.getLogger("proxy.upstream")

# Body bytes buffered per response before the socket stops being read, and where it resumes.
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024
# Idle connections kept per shop, and how long one may sit unused before it is closed.
MAX_IDLE: Final = 128
IDLE_TIMEOUT_S: Final = 30.0
_NO_BODY_STATUSES: Final = frozenset((204, 304))
# Methods that carry no body when the client sent none (others get Content-Length: 0).
BODYLESS_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
# Safe to send again (no side effects) on a fresh connection when a kept-alive one died before any answer.
IDEMPOTENT_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))


class BodySource(Protocol):
    """A request body as this client reads it: aiohttp's StreamReader, or a buffered body."""

    async def readany(self) -> bytes:
        """The next bytes; b"" at the end."""
        ...


class HttpClientError(Exception):
    """The shop broke the connection or the protocol."""


class ConnectionBroken(HttpClientError):
    """The connection was closed or reset before the message was complete."""


class ResponseMalformed(HttpClientError):
    """The shop's bytes are not HTTP/1.x, or not an answer this client can take (a 101)."""


_IDLE_BYTES_WARNING: Final = "shop sent bytes on an idle connection: closed it"


class _StopParsing(Exception):
    """Raised in a parser callback to stop llhttp there (it would parse on into the next message)."""


def _warn_about_shop(message: str, conn: _Connection | None) -> None:
    """Log a shop's protocol breach at WARNING, tied to no request.

    Protocol callbacks run in the context of the request that opened the connection (asyncio
    and uvloop copy it when the transport is made), so a line logged there would carry that
    request's id, often the wrong one on a reused connection: it is logged in an empty context.
    """
    shop = f"{conn.pool.host}:{conn.pool.port}" if conn is not None else ""
    contextvars.Context().run(log.warning, message, extra={"shop": shop})


class _Connection(asyncio.Protocol):
    """One TCP connection to the shop; carries one request/response at a time."""

    __slots__ = (
        "_drain_waiter",
        "_paused_writing",
        "closed",
        "fd",
        "idle_since",
        "loop",
        "poller",
        "pool",
        "response",
        "transport",
    )

    def __init__(self, pool: HttpPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        # The socket the transport reads, and a poll of it alone: looked at before a reuse
        # (spoke_while_idle); set once connected (watch_socket).
        self.fd = -1
        self.poller: select.poll | None = None
        # Kept, not looked up per request: on Python 3.11 get_running_loop() costs a getpid().
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: HttpResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused_writing = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they quack like one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Nothing was asked: a late or surplus answer, which the next request on this
            # connection would otherwise read as its own.
            _warn_about_shop(_IDLE_BYTES_WARNING, self)
            self.close()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        response = self.response
        if response is not None:
            response.eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            response.lost(exc)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionBroken("connection lost while sending"))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ours ----------------------------------------------------------------------------------

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionBroken("connection closed while sending")
        if not self._paused_writing:
            return
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def watch_socket(self) -> None:
        """Keep the connected socket's descriptor and a poll of it, for :meth:`spoke_while_idle`."""
        assert self.transport is not None
        self.fd = self.transport.get_extra_info("socket").fileno()
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        self.poller = poller

    def spoke_while_idle(self) -> bool:
        """Whether the shop sent bytes or closed since its last answer; if so, closes the connection.

        Asked of the socket itself: a busy loop reads such bytes only after the next request
        went out, and that request would take them for its answer. A poll that does not wait
        answers (about 0.3 µs): it reports bytes, the shop's end of file and an error alike, and
        only then does the count of bytes waiting (FIONREAD) tell which, for the warning. (The
        loop owns the socket: nothing here reads from it.)
        """
        poller = self.poller
        if poller is None or not poller.poll(0):
            return False  # nothing waiting: the usual case
        try:
            waiting = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            waiting = 0
        if waiting:
            _warn_about_shop(_IDLE_BYTES_WARNING, self)
        self.close()  # bytes, or the shop's end of file (it let the connection go), or an error
        return True


class HttpResponse:
    """The shop's answer: status and headers at once, then the body through :meth:`read`."""

    __slots__ = (
        "_body_task",
        "_buffer",
        "_buffered",
        "_conn",
        "_error",
        "_head",
        "_headers_done",
        "_interim",
        "_keep_alive",
        "_loop",
        "_parser",
        "_paused",
        "_progress",
        "_released",
        "_timer",
        "_waiter",
        "_waiting_since",
        "_waits_for",
        "complete",
        "raw_headers",
        "reason",
        "received",
        "status",
    )

    def __init__(self, conn: _Connection, head: bool, timer: ReadTimer) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        # Holds our callbacks, so the two form a cycle: release() breaks it, leaving the
        # cyclic garbage collector nothing to find per request.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head = head
        self._timer = timer
        self._buffer: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_since = 0.0
        self._waits_for = ""
        self._error: BaseException | None = None
        self._headers_done = False
        self._interim = False
        self._keep_alive = False
        self._released = False
        self._body_task: asyncio.Task[bool] | None = None
        self._progress = 0.0
        self.complete = False
        self.received = False
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[str, str]] = []

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # llhttp starts a second message on the bytes after this one's framing: they are
            # not this response's, and the parser must go no further (it would merge them in).
            raise _StopParsing

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # called back by it
        status = parser.get_status_code()
        if status == 101:
            # Never asked for (no request from this client carries Upgrade): whatever follows
            # would be another protocol on a connection the pool thinks is HTTP.
            self._fail(ResponseMalformed("101 Switching Protocols to a request that did not ask to upgrade"))
            raise _StopParsing
        if 100 <= status < 200:
            # An interim answer (103 Early Hints and the like): the real one follows.
            self._interim = True
            self.raw_headers = []
            self.reason = ""
            return
        self.status = status
        self._keep_alive = parser.should_keep_alive()
        self._headers_done = True
        if self._head:
            self._message_complete()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            # Body bytes after the head of an answer to HEAD, which has none.
            raise _StopParsing
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered >= _HIGH_WATER and not self._paused and self._conn is not None:
            transport = self._conn.transport
            if transport is not None:
                self._paused = True
                transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            # Only an answer to HEAD gets here (complete at its head, the parser reads the body
            # its headers announce): at once for Content-Length: 0, 204 or 304, but after a
            # chunked head only once the shop sent a last chunk, a body HEAD must not have.
            if self.status not in _NO_BODY_STATUSES and self._chunked():
                raise _StopParsing
            return
        self._message_complete()
        self._wake()

    # -- from the connection -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # released: nothing more is read for it
        self.received = True
        conn = self._conn
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # HttpParserCallbackError (one of ours raised _StopParsing) is an HttpParserError;
            # HttpParserUpgrade is not, and would escape data_received as a fatal transport error.
            if self.complete:
                _warn_about_shop("shop sent bytes past the end of its response: closed the connection", conn)
            else:
                self._fail(ResponseMalformed(f"unparseable response: {type(exc).__name__}: {exc}"))
                _warn_about_shop(f"shop broke the protocol: {self._error}", conn)
            self._close_connection()
            if conn is not None:
                conn.close()  # even if it went back to the pool a moment ago

    def eof(self) -> None:
        if self._headers_done and not self.complete and not self._framed():
            # Close-delimited body: the shop's close is its end.
            self._keep_alive = False
            self._message_complete()
            self._wake()

    def _framed(self) -> bool:
        """Whether the body has a length of its own (else the shop's close ends it)."""
        if self.status in _NO_BODY_STATUSES or self._chunked():
            return True
        return any(name.lower() == "content-length" for name, _ in self.raw_headers)

    def _chunked(self) -> bool:
        """Whether the headers announce a chunked body."""
        for name, value in self.raw_headers:
            if name.lower() == "transfer-encoding" and "chunked" in value.lower():
                return True
        return False

    def lost(self, exc: Exception | None) -> None:
        if not self.complete:
            message = "connection closed" if exc is None else f"connection lost: {type(exc).__name__}"
            self._fail(ConnectionBroken(message))
        self._conn = None

    # -- state -----------------------------------------------------------------------------------

    def _message_complete(self) -> None:
        self.complete = True
        self._maybe_return_connection()

    def _maybe_return_connection(self) -> None:
        """Hand the connection back as soon as the message is in (the body is buffered here)."""
        conn = self._conn
        if conn is None or not self.complete:
            return
        task = self._body_task
        if task is not None and not (task.done() and not task.cancelled() and task.result()):
            return  # the request body is still going out (or failed): decided at release
        self._conn = None
        conn.response = None
        if self._paused and conn.transport is not None:
            conn.transport.resume_reading()
        if self._keep_alive and not conn.closed:
            conn.pool.give_back(conn)
        else:
            conn.close()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close_connection(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.response = None
            conn.close()

    async def _wait(self, waits_for: str) -> None:
        """Wait for the next event; the pool's :class:`ReadTimer` ends a wait that sees no progress."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._waits_for = waits_for
        self._waiting_since = self._loop.time()
        self._timer.watch(self)
        try:
            await waiter
        finally:
            self._waiter = None
            self._timer.forget(self)

    def _last_progress(self) -> float:
        """When this wait last saw progress: its start, or (waiting for headers) a body chunk sent."""
        if self._headers_done:
            return self._waiting_since
        return max(self._waiting_since, self._progress)

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"no {self._waits_for} within the timeout"))

    # -- for the caller --------------------------------------------------------------------------

    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait("response headers")

    async def read(self) -> bytes:
        """The next body bytes; ``b""`` at the end. Raises if the body broke off or stalled."""
        while True:
            if self._buffer:
                return self.read_buffered()
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait("body bytes")

    def read_buffered(self) -> bytes:
        """The body bytes that arrived and were not read yet (``b""``: none), without waiting."""
        buffer = self._buffer
        if not buffer:
            return b""
        chunk = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        if buffer:
            buffer.clear()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _LOW_WATER:
            self._paused = False
            conn = self._conn
            if conn is not None and conn.transport is not None:
                conn.transport.resume_reading()
        return chunk

    def at_eof(self) -> bool:
        """Whether every body byte has been read already."""
        return self.complete and not self._buffer

    def body_complete(self) -> bool:
        """Whether the whole body has arrived (read or not)."""
        return self.complete

    def release(self) -> None:
        """Done with the response: its connection is reused if it was read to the end, else closed."""
        if self._released:
            return
        self._released = True
        # Both refer back to this response (the parser by its callbacks, an error by its
        # traceback's frames): let go, so reference counting frees it.
        self._parser = None
        self._error = None
        task = self._body_task
        if task is not None and not task.done():
            task.cancel()
            self._close_connection()
            return
        if self.complete and not self._buffer:
            self._maybe_return_connection()
        self._close_connection()
        self._buffer.clear()

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.close()


class ReadTimer:
    """Ends the waits of one pool's responses that see no progress within the read timeout.

    One timer per pool checks the waits in flight every tick (a tenth of the timeout, at most
    a second), so a wait ends at most one tick late, and no timer runs while nothing waits.
    A timer per wait, set and cancelled on every read, cost about 6 % of a proxied request's CPU.
    """

    __slots__ = ("_handle", "_loop", "_tick", "_waiting", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tick = max(0.01, min(1.0, timeout / 10))
        self._waiting: set[HttpResponse] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, response: HttpResponse) -> None:
        loop = response._loop
        # Armed on the waiting response's loop (a pool outliving its loop, as in tests, re-arms).
        if self._handle is None or loop is not self._loop:
            self._handle = loop.call_later(self._tick, self._check, loop)
            self._loop = loop
        self._waiting.add(response)

    def forget(self, response: HttpResponse) -> None:
        self._waiting.discard(response)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # superseded by a timer on the loop now in use
        self._handle = None
        if not self._waiting:
            return
        now = loop.time()
        expired = [response for response in self._waiting if now - response._last_progress() >= self.timeout]
        for response in expired:
            self._waiting.discard(response)
            response._expire()
        self._handle = loop.call_later(self._tick, self._check, loop)


class HttpPool:
    """Keep-alive connections to one shop (host and port), reused last-in first-out."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int = MAX_IDLE,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._read_timer = ReadTimer(read_timeout)
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._closed = False
        self._addresses: list[tuple[int, tuple[str, int]]] = []
        self._addresses_until = 0.0

    # -- connections -----------------------------------------------------------------------------

    def give_back(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def _resolve(self) -> list[tuple[int, tuple[str, int]]]:
        now = time.monotonic()
        if self._addresses and now < self._addresses_until:
            return self._addresses
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        self._addresses = [(family, (str(addr[0]), int(addr[1]))) for family, _, _, _, addr in infos]
        self._addresses_until = now + 60.0
        return self._addresses

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        # One protocol for every try (the loop's factory hands it over): nothing in it is set
        # until a try connects.
        conn = _Connection(self, loop)
        async with asyncio.timeout(self._connect_timeout):
            addresses = await self._resolve()
            error: OSError | None = None
            for family, (host, port) in addresses:
                try:
                    # An address already resolved: the loop connects it without resolving it
                    # again (uvloop's sock_connect went through its thread pool every time), and
                    # sets TCP_NODELAY itself.
                    await loop.create_connection(lambda: conn, host, port, family=family)
                except OSError as exc:
                    error = exc
                    continue
                conn.watch_socket()
                return conn
            raise error or OSError(f"cannot resolve {self.host}")

    def _idle_connection(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - conn.idle_since > self._idle_timeout:
                conn.close()
                continue
            if conn.spoke_while_idle():
                continue
            return conn
        return None

    async def close(self) -> None:
        # The read timer runs on while requests in flight wait, and stops by itself after.
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- requests --------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        head: bytes,
        body: BodySource | None,
        content_length: int | None,
    ) -> HttpResponse:
        """Send ``head`` (request line and headers, CRLF-terminated) and the body; wait for headers.

        ``content_length`` None with a body: the body is sent chunked (``head`` says so).
        """
        conn = self._idle_connection()
        if conn is not None:
            response = self._send(conn, method, head, body, content_length)
            try:
                await response.wait_headers()
                return response
            except TimeoutError:
                # The shop is slow, not gone (TimeoutError is an OSError): never send it twice.
                response.release()
                raise
            except (ConnectionBroken, OSError):
                # A kept-alive connection the shop closed as we used it: retry once on a new one,
                # if nothing came back, the method is safe to repeat, and no body was consumed.
                response.release()
                if response.received or body is not None or method not in IDEMPOTENT_METHODS:
                    raise
            except BaseException:
                response.release()  # a malformed answer or a cancellation: never retried
                raise
        conn = await self._connect()
        response = self._send(conn, method, head, body, content_length)
        try:
            await response.wait_headers()
        except BaseException:
            response.release()
            raise
        return response

    def _send(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: BodySource | None,
        content_length: int | None,
    ) -> HttpResponse:
        response = HttpResponse(conn, method == "HEAD", self._read_timer)
        conn.response = response
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        if body is not None:
            response._body_task = asyncio.create_task(_send_body(conn, response, body, content_length))
        return response


async def _send_body(
    conn: _Connection, response: HttpResponse, body: BodySource, content_length: int | None
) -> bool:
    """Stream the client's body to the shop; True once it all went out."""
    transport = conn.transport
    assert transport is not None
    loop = conn.loop
    sent = 0
    try:
        while True:
            chunk = await body.readany()
            if not chunk:
                break
            if content_length is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent + len(chunk) > content_length:
                # Bytes past the announced length would be the shop's next request: never sent.
                raise ConnectionBroken("the client's body is longer than its Content-Length")
            else:
                transport.write(chunk)
            sent += len(chunk)
            response._progress = loop.time()
            await conn.drain()
        if content_length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != content_length:
            raise ConnectionBroken("the client's body ended short of its Content-Length")
    except asyncio.CancelledError:
        conn.close()
        raise
    except Exception as exc:
        log.debug("request body did not reach the shop", extra={"error": type(exc).__name__})
        conn.close()
        return False
    response._progress = loop.time()
    loop.call_soon(response._maybe_return_connection)
    return True
