"""A shop's response ends where its framing ends: raw bytes from a client, through the sidecar, to a raw shop.

Each test scripts the exact bytes the shop sends (tests/fixtures/raw_shop.py records what it
received on each connection), talks to the sidecar over a plain socket, and asserts the bytes the
client got and which requests went on which shop connection. The baseline is nginx ``proxy_pass``
given the same shop bytes: it returns the first response cleanly and drops the connection; for bytes
on an idle connection it does worse (it serves them to the next client), and the sidecar drops those
too. The autouse fixture of this package fails any test that logged at ERROR (a traceback).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from proxy.app import SHOP_SERVER_OPTIONS
from proxy.client_response import parsed_head
from proxy.config import parse_settings
from proxy.errors import UpstreamUnreachable
from proxy.upstream import Upstream, UpstreamSession, response_headers
from tests.fixtures.raw_shop import RawConnection, RecordingShop, Script, StartRecordingShop
from tests.fixtures.shop import SidecarFactory, sidecar_config

# No editor page is asked for: the Customer's Canvas API is never called.
NO_API = "http://127.0.0.1:9"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
# What a confused shop sends after its answer; the word must never reach a client.
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Smuggled: 1\r\n\r\nsmuggled!!!!"


@dataclass
class ClientAnswer:
    """What a client read from the sidecar, byte for byte, split into its parts."""

    raw: bytes
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


async def ask(sidecar: BaseTestServer, method: str, path: str) -> ClientAnswer:
    """Send one request with ``Connection: close`` on a new socket; read the answer to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = [(name, value) for name, _, value in (line.partition(b": ") for line in lines)]
    return ClientAnswer(raw, status_line, headers, body)


async def sidecar_before(shop: RecordingShop, make_sidecar: SidecarFactory) -> BaseTestServer:
    return await make_sidecar(sidecar_config(shop.url, NO_API))


def first_answer_then(first: bytes, surplus: bytes) -> Script:
    """The first connection answers its request with ``first`` and ``surplus`` in one write; later ones with OK."""

    async def script(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(first + surplus if conn.number == 0 else OK)

    return script


async def assert_next_client_is_served_on_a_new_connection(
    sidecar: BaseTestServer, shop: RecordingShop, first_request_line: bytes
) -> None:
    """The connection that carried the surplus was closed by the sidecar; the next client got a clean OK."""
    await asyncio.wait_for(shop.connections[0].closed_by_peer.wait(), timeout=2)
    after = await ask(sidecar, "GET", "/next")
    assert (after.status_line, after.header(b"Content-Length"), after.body) == (
        b"HTTP/1.1 200 OK",
        [b"2"],
        b"OK",
    )
    assert [conn.request_lines() for conn in shop.connections] == [
        [first_request_line],
        [b"GET /next HTTP/1.1"],
    ]


async def test_a_response_longer_than_its_content_length_is_cut_at_its_length(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory
) -> None:
    """Content-Length: 2 and then another response: the client gets ``200 OK``, one Content-Length, ``OK``.

    nginx does the same and drops the connection; before, the client got ``200 OKOK`` with
    Content-Length 2 and 12.
    """
    shop = await recording_shop(first_answer_then(OK, SMUGGLED))
    sidecar = await sidecar_before(shop, make_sidecar)
    answer = await ask(sidecar, "GET", "/page")
    assert (answer.status_line, answer.header(b"Content-Length"), answer.body) == (
        b"HTTP/1.1 200 OK",
        [b"2"],
        b"OK",
    )
    assert b"muggled" not in answer.raw
    await assert_next_client_is_served_on_a_new_connection(sidecar, shop, b"GET /page HTTP/1.1")


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified"], ids=["204", "304"]
)
async def test_a_body_after_a_204_or_304_never_reaches_the_client(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory, status_line: bytes
) -> None:
    """A 204 or 304 followed by a response: the client gets the bare status, no body, the reason unchanged.

    nginx returns the 204 or 304 and drops the connection; before, the client got
    ``200 No ContentOK`` with a body.
    """
    shop = await recording_shop(first_answer_then(status_line + b"\r\n\r\n", SMUGGLED))
    sidecar = await sidecar_before(shop, make_sidecar)
    answer = await ask(sidecar, "GET", "/empty")
    assert (answer.status_line, answer.body) == (status_line, b"")
    assert b"muggled" not in answer.raw
    await assert_next_client_is_served_on_a_new_connection(sidecar, shop, b"GET /empty HTTP/1.1")


async def test_a_body_after_a_head_answer_never_reaches_the_client(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory
) -> None:
    """An answer to HEAD with a body and another response after it: the client gets the head alone.

    nginx returns the head and drops the connection.
    """
    head_with_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    shop = await recording_shop(first_answer_then(head_with_body, SMUGGLED))
    sidecar = await sidecar_before(shop, make_sidecar)
    answer = await ask(sidecar, "HEAD", "/page")
    assert (answer.status_line, answer.header(b"Content-Length"), answer.body) == (
        b"HTTP/1.1 200 OK",
        [b"5"],
        b"",
    )
    assert b"muggled" not in answer.raw
    await assert_next_client_is_served_on_a_new_connection(sidecar, shop, b"HEAD /page HTTP/1.1")


async def test_bytes_on_an_idle_shop_connection_never_reach_the_next_client(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory
) -> None:
    """A response the shop sends on a pooled connection while it is idle: the next client never gets it.

    The sidecar closes that connection and the next client's request goes on a new one. nginx
    serves such bytes to the next client that reuses the connection.
    """
    first_served = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(OK)
        if conn.number == 0:
            await first_served.wait()
            await conn.send(SMUGGLED)

    shop = await recording_shop(script)
    sidecar = await sidecar_before(shop, make_sidecar)
    first = await ask(sidecar, "GET", "/first")
    assert (first.status_line, first.body) == (b"HTTP/1.1 200 OK", b"OK")
    first_served.set()
    await assert_next_client_is_served_on_a_new_connection(sidecar, shop, b"GET /first HTTP/1.1")


@pytest.mark.parametrize(
    "switch",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi",
    ],
    ids=["with-upgrade-headers", "bare"],
)
async def test_a_101_to_a_plain_request_is_a_502_with_warnings_and_no_traceback(
    recording_shop: StartRecordingShop,
    make_sidecar: SidecarFactory,
    caplog: pytest.LogCaptureFixture,
    switch: bytes,
) -> None:
    """A 101 to a request that did not ask to upgrade: 502, two WARNING lines (why, and the 502), nothing else.

    Before, httptools' HttpParserUpgrade escaped ``data_received`` as an ERROR with a traceback
    ("Fatal error on transport"). (The probe recorded no nginx baseline for this case.)
    """
    shop = await recording_shop(first_answer_then(switch, b""))
    sidecar = await sidecar_before(shop, make_sidecar)
    answer = await ask(sidecar, "GET", "/page")
    assert (answer.status_line, answer.body) == (
        b"HTTP/1.1 502 Bad Gateway",
        b"bad gateway: the shop did not answer\n",
    )
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        (
            "proxy.upstream",
            "WARNING",
            "shop broke the protocol: 101 Switching Protocols to a request that did not ask to upgrade",
            None,
        ),
        ("proxy.handler", "WARNING", "shop request failed: main: ResponseMalformed", None),
    ]
    await assert_next_client_is_served_on_a_new_connection(sidecar, shop, b"GET /page HTTP/1.1")


async def test_a_101_through_the_aiohttp_client_https_shops_use_is_refused_too(
    recording_shop: StartRecordingShop, aiohttp_raw_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's client (https shops) hands a 101 over, where the pool refuses it: refused all the same."""
    shop = await recording_shop(first_answer_then(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi", b""))
    settings = parse_settings(sidecar_config(shop.url, NO_API), {}).storefronts[0]
    clients = UpstreamSession(settings)
    clients.pool = None  # what an https shop is reached through
    upstream = Upstream(settings, clients)

    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        outgoing = upstream.request_headers(
            parsed_head(request), request.remote, trusted=False, host="shop.test", target=request.raw_path
        )
        try:
            answer = await upstream.open(outgoing)
        except UpstreamUnreachable:
            return web.Response(status=502, text="refused\n")
        return await upstream.relay(request, answer, response_headers(answer))

    try:
        server = await aiohttp_raw_server(forward, **SHOP_SERVER_OPTIONS)
        answer = await ask(server, "GET", "/page")
    finally:
        await clients.close()

    assert (answer.status_line, answer.body) == (b"HTTP/1.1 502 Bad Gateway", b"refused\n")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "shop broke the protocol: 101 to a request that did not ask to upgrade"
    ]


async def test_a_control_character_in_the_shops_reason_is_a_502_with_one_warning(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """httptools takes NUL, VT and DEL in a reason phrase; the client never gets them."""
    shop = await recording_shop(
        first_answer_then(b"HTTP/1.1 200 O\x00K\x0b\x7f\r\nContent-Length: 2\r\n\r\nOK", b"")
    )
    sidecar = await sidecar_before(shop, make_sidecar)
    answer = await ask(sidecar, "GET", "/page")
    assert (answer.status_line, answer.body) == (
        b"HTTP/1.1 502 Bad Gateway",
        b"bad gateway: the shop's answer broke off\n",
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == [
        ("WARNING", "shop response head refused: control character in the response head")
    ]


async def test_a_client_that_pipelines_and_never_reads_is_not_buffered_without_limit(
    recording_shop: StartRecordingShop, make_sidecar: SidecarFactory
) -> None:
    """400 pipelined GETs of a 60 kB page, nothing read: the sidecar waits for the client, as aiohttp did.

    Without a drain after the one write, each page below write()'s 64 KiB threshold stayed in the
    transport's buffer: 400 requests of 37 bytes held 21 MB in the sidecar.
    """
    import socket

    page = b"x" * 60_000

    async def script(conn: RawConnection) -> None:
        while True:
            await conn.request()
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(page) + page)

    shop = await recording_shop(script)
    sidecar = await sidecar_before(shop, make_sidecar)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", sidecar.port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"GET /page HTTP/1.1\r\nHost: shop.test\r\n\r\n" * 400)
        await writer.drain()
        await asyncio.sleep(1)
        buffered = sum(
            conn.transport.get_write_buffer_size()
            for conn in sidecar.handler.connections  # type: ignore[attr-defined]
            if conn.transport is not None
        )
        assert buffered < 1_000_000
        assert len(shop.connections[0].request_lines()) < 100
    finally:
        writer.close()
