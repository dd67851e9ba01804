"""What one client connection may cost: time, head size, connections; nginx's limits, in aiohttp.

aiohttp's server bounds a request head only per line (8190 bytes) and per header count (128),
which lets one head hold about 1 MB, and has a single timer, its keep-alive timeout, for
everything a connection does between requests. :class:`LimitedRequestHandler` is aiohttp's
protocol with nginx's timers and limits (each a ``limits:`` key, see docs/security.md "Abuse"):

- ``head_timeout_s`` (client_header_timeout): from a connection's start, or the first byte of a
  later request, the whole head must be in within this; else the connection closes.
- ``keepalive_timeout_s`` (keepalive_timeout): aiohttp's own timer, between requests.
- ``max_head_bytes`` (large_client_header_buffers): the request line and headers together; a
  head past it (complete or not) is answered 431, the connection closes and nothing goes upstream.
  A complete head is measured from what the parser made of it whenever it may have begun before
  the count did (so, however it arrived), as the fewest bytes it can have come in (whitespace
  around values left out). An incomplete one is counted from its first byte (on a connection
  waiting for a request, or pipelined behind one whose body is all in) and refused with the
  packet that passes the limit; uncounted is only what came in the same packet as the end of the
  request before (or, behind a declined upgrade request, what aiohttp held back for it: up to its
  64 KB read buffer and one read).
- ``send_timeout_s`` (send_timeout): a client whose socket takes nothing for this long (aiohttp
  has paused writing to it) is cut off; the write waiting for it fails as the client gone (499).

:class:`ShopServer` is aiohttp's ``web.Server`` making those protocols, and holding open
connections to ``max_connections`` (worker_connections): at the limit a new connection makes an
idle one close (a keep-alive connection between requests first, then the oldest waiting for a
request head), as nginx reuses its idle connections; with none idle the new one is closed.

Private aiohttp names this module leans on (aiohttp 3.14), each used where noted: the protocol's
``_waiter`` (set while it waits for a request), ``_drain_waiter`` (a write waiting for the
client), ``_messages`` and ``_request_count`` (the parsed requests), ``_upgraded``,
``_payload_parser`` and ``_message_tail`` (what follows an upgrade request), ``_keepalive_handle``
(its keep-alive timer), ``_ErrInfo`` (a refused request, answered by aiohttp's own error path)
and the server's ``_connections``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web_protocol
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from proxy.compiled import python_class
from proxy.config.model import LimitsSettings
from proxy.log import REPEATED_WARNING_INTERVAL_S
from proxy.metrics import Metrics

log = logging.getLogger("proxy.limits")

# Descriptors kept free of client connections when max_connections is automatic: each proxied
# request holds two (the client's and the shop's), plus the API, Redis and the listeners.
_DESCRIPTORS_PER_CONNECTION = 2


# aiohttp's stand-in message for a request it answers itself (its parser refused it). Typed Any:
# it is the C parser's type, not the NamedTuple aiohttp's stubs name, which compiled (mypyc)
# code would check it against.
_REFUSED_MESSAGE: Final[Any] = getattr(web_protocol, "ERROR")  # noqa: B009


class HeadTooLarge(BadHttpMessage):
    """A request head past ``max_head_bytes``: answered 431, logged as any request the parser refused."""

    code = 431


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (nginx: worker_rlimit_nofile); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit: %s", exc, extra={"soft": soft, "hard": hard})
    return soft


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits of :class:`LimitsSettings`, with ``max_connections`` resolved to a number."""

    head_timeout_s: float
    keepalive_timeout_s: float
    send_timeout_s: float
    max_head_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: LimitsSettings, open_files: int) -> ConnectionLimits:
        return cls(
            head_timeout_s=settings.head_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            max_head_bytes=settings.max_head_bytes,
            max_connections=settings.max_connections or max(1, open_files // _DESCRIPTORS_PER_CONNECTION),
        )


@python_class  # compiled, but a Python class: aiohttp's protocol has __slots__
class LimitedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol with nginx's head timeout, head size limit and send timeout."""

    def __init__(self, manager: ShopServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        limits = manager.limits
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout_s, **kwargs)
        self._limits = limits
        self._max_head_bytes = limits.max_head_bytes  # read per packet
        self._closed = manager.closed
        self._kept_alive = manager.kept_alive
        self._record_refused = manager.record_refused
        # While a request head is coming in: when it must be complete, and its bytes so far.
        self._head_deadline: float | None = None
        self._head_bytes = 0
        # At most how many bytes of the next head came uncounted: in the packet that finished the
        # request before (what followed it there), or during a body. A head whose two counts
        # together are within the limit is within it, and is not measured.
        self._head_carry = 0
        # The body of the request parsed last: once it is all in, what follows is the next head.
        self._last_payload: Any = EMPTY_PAYLOAD
        # Watches the deadline; set lazily and moved on, not made and cancelled per request
        # (as aiohttp's keep-alive timer): a head that arrives in one packet costs no timer.
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._refused = False

    @property
    def idle(self) -> bool:
        """Whether the connection waits for a request: nothing of its own is in flight."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    @property
    def kept_alive(self) -> bool:
        """Whether the connection served a request and no byte of another came yet (keep-alive)."""
        return self._request_count > 0 and self._head_bytes == 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # nginx gives a new connection client_header_timeout for its first request, where
        # aiohttp would give its keep-alive timeout.
        self._begin_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_deadline = None
        for timer in (self._head_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._close or self._force_close:
            return  # aiohttp reads nothing more either
        # A connection waiting for a request is given the head timeout. aiohttp's waiter is set
        # and not yet done: uvloop reads a socket up to 32 times per wake-up, so after the read
        # that completed a head (and woke the waiter) come its body's bytes, not another head.
        waiter = self._waiter
        if self._head_deadline is None and waiter is not None and not waiter.done():
            self._begin_head()
        # Bytes are a head's while the connection waits for one, and while a request is served
        # once its body is all in (the client pipelines the next); never a body's or a WebSocket's.
        size = len(data)
        # The request parsed last: queued, else the one served (or served last).
        messages = self._messages
        last_payload = messages[-1][1] if messages else self._last_payload
        if self._head_deadline is not None or (not self._upgraded and last_payload.is_eof()):
            self._head_bytes += size
        else:
            self._head_carry += size
        parsed = self._request_count
        RequestHandler.data_received(self, data)
        if self._request_count > parsed:
            self._last_payload = self._messages[-1][1]
            # A head is measured whole, from what the parser made of it, unless the bytes it can
            # have come in are within the limit: counted, and carried from before the count began.
            if self._head_bytes + self._head_carry > self._max_head_bytes:
                self._refuse_large_heads(self._request_count - parsed)
            self._head_deadline = None
            self._head_bytes = 0
            # What followed the parsed request in this packet (at most all of it) may begin the
            # next head. Requests parsed from what aiohttp held back (no packet) leave an unknown
            # remainder: the next head is measured.
            self._head_carry = size if size else self._max_head_bytes + 1
        elif self._head_bytes > self._max_head_bytes:
            # Refused with the packet that passed the limit: the parser is given no more of it.
            self._head_deadline = None
            self._refuse(None)

    def log_access(self, request: BaseRequest, response: StreamResponse, time: float | None) -> None:
        # aiohttp's access log is off: the shop handler writes each request's line. What aiohttp
        # answers itself, never asking the handler (a request its parser refused, or a head over
        # the limit here), is written here, so every request has its line, as nginx's 400s do.
        if self._record_refused is not None and getattr(request, "_message") is _REFUSED_MESSAGE:  # noqa: B009
            self._record_refused(response.status, self._peer())

    def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[StreamResponse, bool]]:
        # A keep-alive connection from here on, until its client begins another request (one
        # already gone has left the server: not entered again).
        if self.transport is not None:
            self._kept_alive[self] = None
        # What came behind an upgrade request that is declined (aiohttp held it, uncounted, for a
        # WebSocket) is parsed by aiohttp here, not in data_received: measured here. Every other
        # response goes on as it is, with no coroutine of its own.
        declined = self._upgraded and self._payload_parser is None and self._parser is not None
        if declined and not self._messages:
            return self._finish_declined_upgrade(request, resp, start_time)
        return RequestHandler.finish_response(self, request, resp, start_time)

    async def _finish_declined_upgrade(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        held = len(self._message_tail)
        parsed = self._request_count
        result = await RequestHandler.finish_response(self, request, resp, start_time)
        if self._refused or self._close or self._force_close:
            return result
        if self._messages:
            self._last_payload = self._messages[-1][1]
            self._refuse_large_heads(len(self._messages))
        elif self._request_count == parsed:
            # No request in it: all of it is the start of a head.
            self._head_bytes += held
            if self._head_bytes > self._max_head_bytes:
                self._head_deadline = None
                self._refuse(None)
        return result

    def pause_writing(self) -> None:
        super().pause_writing()
        # The client's socket is full: it must take something within send_timeout.
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._limits.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _begin_head(self) -> None:
        deadline = self._loop.time() + self._limits.head_timeout_s
        self._head_deadline = deadline
        # aiohttp's keep-alive timer would close the connection mid-head; it waits for this one.
        self._next_keepalive_close_time = max(self._next_keepalive_close_time, deadline)
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(deadline, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:
            return  # no head coming in: the next one sets the timer again
        if self._loop.time() < deadline:
            self._head_timer = self._loop.call_at(deadline, self._check_head)
            return
        self._closed.labels("head_timeout").inc()
        # Counted, and logged only at DEBUG: a slowloris flood would be a line per connection.
        log.debug("closed a connection whose request head was late", extra={"peer": self._peer()})
        self.force_close()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        self._closed.labels("send_timeout").inc()
        # The write waiting for the client fails as the client gone (counted 499 by the handler);
        # aiohttp would wake it without an error for a transport closed on purpose.
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("send timeout"))
        if self.transport is not None:
            self.transport.abort()

    def _refuse_large_heads(self, count: int) -> None:
        """Refuse the first of the ``count`` requests just parsed whose head is over the limit."""
        first_new = len(self._messages) - count
        for index in range(max(first_new, 0), len(self._messages)):
            # The C parser's RawRequestMessage, not the NamedTuple aiohttp's stubs name: typed
            # loosely, as compiled code would check it as a tuple.
            message: Any = self._messages[index][0]
            if isinstance(message, _ErrInfo):
                return
            # The fewest bytes the head can have come in: the request line ("GET / HTTP/1.1"
            # and CRLF), each header as "name:value" and CRLF, the blank line. The parser drops
            # the whitespace around a value, so a head padded with it is measured without.
            # Decoded from UTF-8 (surrogateescape); llhttp refuses raw non-ASCII in the target
            # today, but should it pass, its bytes are what count.
            path: str = message.path
            path_bytes = len(path) if path.isascii() else len(path.encode("utf-8", "surrogateescape"))
            size = len(message.method) + path_bytes + 14
            for name, value in message.raw_headers:
                size += len(name) + len(value) + 3
            if size > self._limits.max_head_bytes:
                # The request and every one pipelined after it go; aiohttp answers in their place.
                while len(self._messages) > index:
                    self._messages.pop()
                self._refuse(size)
                return

    def _refuse(self, size: int | None) -> None:
        """Answer 431 through aiohttp's error path (which closes the connection); read nothing more."""
        self._refused = True
        self._closed.labels("head_too_large").inc()
        reason = f"request head over {self._limits.max_head_bytes} bytes" + (
            f" ({size})" if size is not None else " (incomplete)"
        )
        exc = HeadTooLarge(message=reason)
        self._messages.append((_ErrInfo(status=431, exc=exc, message=f"{exc.message}\n"), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _peer(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)


# A Python class with compiled methods, as the protocol: it extends aiohttp's Server and uses the
# attributes Server's __init__ sets. Server is imported from its own module: as web.Server,
# mypyc's C refers to a module it never imported.
@python_class
class ShopServer(Server):
    """aiohttp's low-level server making :class:`LimitedRequestHandler` protocols, to ``max_connections``."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.closed = metrics.connections_closed
        # Counts and logs a request aiohttp answered itself (the shop handler's, when it has one).
        self.record_refused: Callable[[int, str | None], None] | None = getattr(
            handler, "record_refused", None
        )
        self._closed_for_room = metrics.connections_closed.labels("connection_limit")
        self._refused = metrics.connections_closed.labels("connection_refused")
        # Connections that finished a response, in the order they first did: the keep-alive
        # connections a newcomer at the limit closes first. Each is checked when picked (one
        # that has begun another request since is dropped here, and enters again at its next
        # response), so a newcomer costs no walk over every open connection while one of them
        # is between requests (as under a flood of reconnecting keep-alive clients).
        self.kept_alive: dict[RequestHandler, None] = {}
        # The limit's WARNING is written once a minute at most (the metric counts each newcomer):
        # not even made in between, as a flood of newcomers would make one a connection.
        self._limit_warned_at = -REPEATED_WARNING_INTERVAL_S

    def __call__(self) -> RequestHandler:
        return LimitedRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.limits.max_connections:
            self._make_room(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.kept_alive.pop(handler, None)
        super().connection_lost(handler, exc)

    def _make_room(self, newcomer: RequestHandler) -> None:
        """Close the idle connection that costs a visitor least.

        A keep-alive connection between requests first (its client reconnects when it needs
        to; of those, the one that first finished a response), else the oldest one waiting for a
        request head (a slowloris' hold, or a visitor's connection that has had its chance): the
        newest connections are the last to go.
        """
        victim = self._kept_alive_victim(newcomer)
        if victim is None:
            # Every open connection, oldest first. A keep-alive one can be missing from the list
            # (taken out as busy while it finished the response it was entered for): it still
            # goes before one waiting for a head.
            for connection in self._connections:
                if (
                    isinstance(connection, LimitedRequestHandler)
                    and connection is not newcomer
                    and connection.idle
                ):
                    if connection.kept_alive:
                        victim = connection
                        break
                    if victim is None:
                        victim = connection
        now = self._loop.time()
        if now - self._limit_warned_at >= REPEATED_WARNING_INTERVAL_S:
            self._limit_warned_at = now
            log.warning(
                "connection limit reached: closing %s",
                "an idle connection" if victim is not None else "the new connection",
                extra={"max_connections": self.limits.max_connections},
            )
        if victim is None:
            self._refused.inc()
            newcomer.force_close()
            return
        self._closed_for_room.inc()
        victim.force_close()

    def _kept_alive_victim(self, newcomer: RequestHandler) -> LimitedRequestHandler | None:
        """The first connection of :attr:`kept_alive` still between requests; the others leave it."""
        kept_alive = self.kept_alive
        while kept_alive:
            connection = next(iter(kept_alive))
            del kept_alive[connection]
            if (
                connection is not newcomer
                and isinstance(connection, LimitedRequestHandler)
                and connection.idle
                and connection.kept_alive
            ):
                return connection
        return None
