"""The request head the shop gets from :meth:`Upstream.open`: every line break in it is a line's own end.

A recording shop (tests/fixtures/recording.py) parses what arrives as a server would. A line
break smuggled into a header value or the target would start a line the sidecar never meant to
send; the head is refused before a byte of it goes out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.buffering import BufferedBody, Spool
from proxy.config import parse_settings
from proxy.upstream import OutgoingHeaders, Upstream, UpstreamSession
from proxy.upstream_http import BodySource
from tests.fixtures.recording import RecordingUpstream
from tests.fixtures.shop import sidecar_config

NO_API = "http://127.0.0.1:9"


def buffered(data: bytes) -> BufferedBody:
    """A request body as proxy.buffering hands one over: read in full, held in memory."""
    spool = Spool()
    spool.write(data)
    return BufferedBody(spool)


@pytest.fixture
async def upstream(recording_upstream: RecordingUpstream) -> AsyncIterator[Upstream]:
    settings = parse_settings(sidecar_config(recording_upstream.url, NO_API), {}).storefronts[0]
    clients = UpstreamSession(settings)
    try:
        yield Upstream(settings, clients)
    finally:
        await clients.close()


@pytest.fixture
async def aiohttp_upstream(recording_upstream: RecordingUpstream) -> AsyncIterator[Upstream]:
    """The same shop reached through aiohttp's client, as an https shop is."""
    settings = parse_settings(sidecar_config(recording_upstream.url, NO_API), {}).storefronts[0]
    clients = UpstreamSession(settings)
    clients.pool = None
    try:
        yield Upstream(settings, clients)
    finally:
        await clients.close()


def header(name: bytes, value: bytes) -> list[bytes]:
    return [name, b": ", value, b"\r\n"]


@pytest.mark.parametrize(
    ("value", "target"),
    [
        (b"a\nX-Injected: 1", "/p"),
        (b"a\rX-Injected: 1", "/p"),
        (b"a\r\nX-Injected: 1", "/p"),
        (b"a\n", "/p"),
        (b"ok", "/p HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /q"),
        (b"ok", "/p\n"),
    ],
)
async def test_a_line_break_inside_a_line_sends_nothing(
    upstream: Upstream, recording_upstream: RecordingUpstream, value: bytes, target: str
) -> None:
    """A CR or LF anywhere but at a line's end: ValueError, and the shop receives no byte."""
    outgoing = OutgoingHeaders("GET", header(b"X-A", value), True, None, target)
    with pytest.raises(ValueError, match="newline or carriage return in the request head"):
        await upstream.open(outgoing)
    assert recording_upstream.raw == b""


@pytest.mark.parametrize(
    ("method", "has_host", "content_length", "body", "added"),
    [
        ("GET", True, None, None, []),
        ("GET", False, None, None, [(b"Host", b"127.0.0.1")]),
        ("POST", True, None, None, [(b"Content-Length", b"0")]),
        ("POST", True, None, b"abc", [(b"Transfer-Encoding", b"chunked")]),
        ("POST", False, b"3", b"abc", [(b"Host", b"127.0.0.1")]),
    ],
)
async def test_each_line_the_head_adds_is_counted_as_its_own(
    upstream: Upstream,
    recording_upstream: RecordingUpstream,
    method: str,
    has_host: bool,
    content_length: bytes | None,
    body: bytes | None,
    added: list[tuple[bytes, bytes]],
) -> None:
    """The Host, Content-Length: 0 and chunked lines open adds are its own line ends: the request goes."""
    parts = header(b"X-A", b"1") + (header(b"Content-Length", content_length) if content_length else [])
    outgoing = OutgoingHeaders(method, parts, has_host, content_length, "/p")
    source: BodySource | None = buffered(body) if body is not None else None
    response = await upstream.open(outgoing, source)
    response.release()
    [received] = recording_upstream.requests
    port = str(recording_upstream.port).encode()
    expected_added = [(name, value + b":" + port if name == b"Host" else value) for name, value in added]
    sent = [(b"X-A", b"1")] + ([(b"Content-Length", content_length)] if content_length else [])
    assert (received.method, received.target) == (method.encode(), b"/p")
    assert sorted(received.headers) == sorted(sent + expected_added)
    assert received.body == (body or b"")


@pytest.mark.parametrize(
    ("content_length", "framing"),
    [(b"3", (b"Content-Length", b"3")), (None, (b"Transfer-Encoding", b"chunked"))],
)
async def test_a_body_reaches_a_shop_through_aiohttp_as_through_the_pool(
    aiohttp_upstream: Upstream,
    recording_upstream: RecordingUpstream,
    content_length: bytes | None,
    framing: tuple[bytes, bytes],
) -> None:
    """The body source open is given goes to an https shop's client too, framed as announced."""
    parts = header(b"X-A", b"1") + (header(b"Content-Length", content_length) if content_length else [])
    outgoing = OutgoingHeaders("POST", parts, False, content_length, "/p")
    response = await aiohttp_upstream.open(outgoing, buffered(b"abc"))
    response.release()
    [received] = recording_upstream.requests
    assert (received.method, received.target, received.body) == (b"POST", b"/p", b"abc")
    assert received.header(framing[0].decode()) == [framing[1]]
    assert received.header("X-A") == [b"1"]
