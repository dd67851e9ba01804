"""A response that is all here, written to the client in one piece.

Most shop pages arrive whole with their headers. aiohttp's ``web.Response`` would take such a page
through five coroutine layers (prepare, its headers, the hooks, write_eof, the writer) and about a
tenth of a proxied request's CPU. :func:`write_whole` serialises the status line, the headers and
the body itself, writes them with one call of the request's writer, and hands aiohttp a
:class:`WrittenResponse`, which aiohttp only has to finish.

What aiohttp's response added, this adds the same way, so a page reads alike whether it went out
whole or streamed (aiohttp writes those): Content-Length (the body's own, or none on 1xx, 204 and
304; a HEAD answer keeps the shop's), Date, Server, Content-Type for a body without one, and
Connection where the request's version and keep-alive call for it. Through the writer, aiohttp
knows bytes went out: it never writes an error response after them.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from multidict import CIMultiDict

from proxy.errors import ClientGone

# aiohttp's header names as compiled-in constants: compiled code looks ``hdrs.X`` up at each use.
_CONNECTION: Final = hdrs.CONNECTION
_CONTENT_LENGTH: Final = hdrs.CONTENT_LENGTH
_CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
_DATE: Final = hdrs.DATE
_SERVER: Final = hdrs.SERVER

# Statuses whose response never has a body, nor a Content-Length (RFC 9110 8.6). 1xx never gets
# here: both shop clients read past interim answers and refuse a 101 nobody asked for.
_NO_CONTENT_LENGTH: Final = frozenset((204, 304))
# Bytes a head holds only where the line ends put them: CR and LF, and what aiohttp's serialiser
# refuses besides (NUL, the other C0 controls but HTAB, and DEL; llhttp lets them through in a
# shop's reason phrase).
_CONTROLS: Final = bytes((*range(0x09), *range(0x0A, 0x20), 0x7F))


class WrittenResponse(web.StreamResponse):
    """A response whose bytes are out already: aiohttp's finishing steps have nothing left to do.

    Instances are shared between requests (see :func:`_written`) and never changed once made:
    their keep_alive is fixed, so ``force_close()`` on one has no effect.
    """

    def __init__(self, status: int, reason: str, keep_alive: bool) -> None:
        super().__init__(status=status, reason=reason)
        self._written_keep_alive = keep_alive

    @property
    def keep_alive(self) -> bool:
        return self._written_keep_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


# Finished responses by (status, reason, keep-alive). aiohttp only reads their keep_alive and
# calls their no-op prepare and write_eof, so one serves every response with that status line;
# building one costs more than writing the page's head.
_WRITTEN: Final[dict[tuple[int, str, bool], WrittenResponse]] = {}
_WRITTEN_KEPT: Final = 256


def _written(status: int, reason: str, keep_alive: bool) -> WrittenResponse:
    key = (status, reason, keep_alive)
    response = _WRITTEN.get(key)
    if response is None:
        response = WrittenResponse(status, reason, keep_alive)
        if len(_WRITTEN) < _WRITTEN_KEPT:  # a shop's own reason phrases are not kept without end
            _WRITTEN[key] = response
    return response


class _HttpDate:
    """Date header values, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._value = formatdate(second, usegmt=True)
            self._second = second
        return self._value


_date = _HttpDate()


def parsed_head(request: web.BaseRequest) -> Any:
    """The request line and headers as aiohttp's parser gave them (its RawRequestMessage).

    Each field aiohttp's request offers as a property (``method``, ``headers``, ``path``, ...)
    is a cached property: a lookup at every use and a call of interpreted code at the first,
    together about a twentieth of a page's cost. The parsed message's fields are plain
    attributes. aiohttp keeps it private (``_message``; its public ``message`` is deprecated and
    warns), so tests/unit/test_client_response.py holds each field read here to the request's
    own property. Typed ``Any``: it is the C parser's own type, not the NamedTuple aiohttp's stubs
    name, which compiled (mypyc) code would check it against.
    """
    return getattr(request, "_message")  # noqa: B009 (a plain attribute read would be type-checked)


def decoded_path(request: web.BaseRequest, message: Any) -> str:
    """``request.path`` (the percent-decoded path), from ``message`` (:func:`parsed_head`) when it can.

    aiohttp's property is the path of the target's URL made relative. For an origin-form target
    (``/p?q``, nearly every request) the parsed URL is relative already: its path is the same.
    Any other form asks the property: an absolute-form target without a path
    (``GET http://shop.test``) has ``/`` as its URL's path but ``""`` as the property's.
    """
    target: str = message.path
    if target.startswith("/"):
        path: str = message.url.path
        return path
    return request.path


async def write_whole(
    request: web.BaseRequest, status: int, reason: str, headers: CIMultiDict[str], body: bytes
) -> WrittenResponse:
    """Write ``status``, ``headers`` and the whole ``body`` to the client in one write.

    ``headers`` are the response's end to end headers (hop-by-hop ones already gone); they are
    changed in place. Raises ValueError, before anything is written, if the reason or a header
    would break a line; :class:`ClientGone` if the client left before or while it was written.
    """
    message = parsed_head(request)
    version = message.version
    keep_alive = not message.should_close
    head_only = message.method == hdrs.METH_HEAD
    empty_body = head_only or status in _NO_CONTENT_LENGTH
    if status in _NO_CONTENT_LENGTH:
        headers.popall(_CONTENT_LENGTH, None)
    elif not head_only:
        # The body's own length, whatever the shop's said (a rewritten page has a new one).
        headers.popall(_CONTENT_LENGTH, None)
        headers[_CONTENT_LENGTH] = str(len(body))
        if body and _CONTENT_TYPE not in headers:
            headers[_CONTENT_TYPE] = "application/octet-stream"
    if _DATE not in headers:
        headers[_DATE] = _date.now()
    if _SERVER not in headers:
        headers[_SERVER] = SERVER_SOFTWARE
    if keep_alive:
        if version == HttpVersion10:
            headers[_CONNECTION] = "keep-alive"
    elif version == HttpVersion11:
        headers[_CONNECTION] = "close"

    # An f-string per line: compiled, a third cheaper than joining each pair with ": ".
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    protocol = "HTTP/1.1" if version == HttpVersion11 else f"HTTP/{version.major}.{version.minor}"
    head = f"{protocol} {status} {reason}\r\n{fields}\r\n"
    # The shop's header bytes were read as UTF-8 with surrogateescape: they go out as they came.
    data = head.encode("utf-8", "surrogateescape")
    # Every control byte is a CR or LF of the line ends just put there: nothing in a value starts
    # a line. (One C-speed pass; a regex search and two counts cost three times as much.)
    if len(data) - len(data.translate(None, _CONTROLS)) != 2 * (len(headers) + 2):
        raise ValueError("control character in the response head")
    if not empty_body and body:
        data += body

    transport = request.transport
    if transport is None or transport.is_closing():
        # The client went away while the shop answered: nothing to write, nothing to keep.
        raise ClientGone("before the response was written")
    writer = request.writer
    try:
        # Straight to the transport, as aiohttp's StreamWriter.write would after its checks (a
        # coroutine per page). Its count of bytes out is kept: an error raised after this point
        # must never make aiohttp write a second response (its handle_error looks at it).
        writer.output_size += len(data)
        transport.write(data)
        if transport.get_write_buffer_size():
            # As aiohttp's write_eof does: wait while the client's socket is over its high-water
            # mark (drain returns at once below it). Without it a client that pipelines requests
            # and reads nothing has every page buffered here without limit. A page the socket took
            # whole leaves nothing buffered: no drain to ask for.
            await writer.drain()
    except ConnectionError as exc:
        # Gone while a large page drained: the connection ends here.
        raise ClientGone("while the response was written") from exc
    return _written(status, reason, keep_alive)


# What aiohttp finishes a request with once its client is gone: nothing to write, the connection
# closed. Its status is what the request is counted as (nginx's 499, "client closed request").
CLIENT_GONE: Final = WrittenResponse(ClientGone.status, "Client Closed Request", keep_alive=False)
