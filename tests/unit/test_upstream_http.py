"""The pooled HTTP/1.1 client against real aiohttp servers and raw asyncio servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import StreamReader, web
from aiohttp.test_utils import TestServer

from proxy.upstream_http import (
    _HIGH_WATER,
    ConnectionBroken,
    HttpPool,
    HttpResponse,
    ResponseMalformed,
)
from tests.fixtures.raw_shop import RawConnection, RecordingShop, StartRecordingShop
from tests.fixtures.raw_shop import Script as ConnectionScript

READ_TIMEOUT_S = 0.5


def head(method: str, path: str, host: str = "shop", *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_all(response: HttpResponse) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    response.release()
    return b"".join(parts)


def open_body() -> StreamReader:
    """A request body as aiohttp's server hands it over, before anything arrived."""

    class _Protocol:
        _reading_paused = False
        connected = True

        def pause_reading(self, **_: Any) -> None: ...

        def resume_reading(self, **_: Any) -> None: ...

    return StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]


def body_of(data: bytes) -> StreamReader:
    """A request body as aiohttp's server hands it over, fed in small pieces."""
    reader = open_body()
    for start in range(0, len(data), 10_000):
        reader.feed_data(data[start : start + 10_000])
    reader.feed_eof()
    return reader


@pytest.fixture
async def shop(aiohttp_server: Any) -> TestServer:
    """A well-behaved aiohttp shop that reports the peer port (to see connection reuse)."""

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1] if request.transport else 0
        return web.Response(
            body=body or b"hello",
            headers={
                "X-Peer-Port": str(peer),
                "X-Method": request.method,
                "X-Chunked": str(request.headers.get("Transfer-Encoding", "")),
                "X-Length": request.headers.get("Content-Length", ""),
            },
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for number in range(5):
            await response.write(f"part {number}\n".encode())
        await response.write_eof()
        return response

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query["status"]), headers={"ETag": '"x"'})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/empty", empty)
    app.router.add_get("/slow", slow)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., HttpPool]]:
    pools: list[HttpPool] = []

    def make(port: int, **options: Any) -> HttpPool:
        options.setdefault("connect_timeout", 1.0)
        options.setdefault("read_timeout", READ_TIMEOUT_S)
        pool = HttpPool("127.0.0.1", port, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    """A raw TCP server running ``script`` per connection; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- well-behaved shops ---------------------------------------------------------------------------


async def test_get_reads_status_headers_body_and_reuses_the_connection(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    pool = make_pool(shop.port)
    ports = []
    for _ in range(3):
        response = await pool.request("GET", head("GET", "/echo"), None, None)
        assert (response.status, response.reason) == (200, "OK")
        headers = dict(response.raw_headers)
        ports.append(headers["X-Peer-Port"])
        assert headers["X-Method"] == "GET"
        assert await read_all(response) == b"hello"
    assert len(set(ports)) == 1  # one kept-alive connection served all three


async def test_content_length_body_is_streamed_as_is(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    pool = make_pool(shop.port)
    data = bytes(range(256)) * 4000
    request = head("POST", "/echo", "shop", f"Content-Length: {len(data)}")
    response = await pool.request("POST", request, body_of(data), len(data))
    assert dict(response.raw_headers)["X-Length"] == str(len(data))
    assert await read_all(response) == data


async def test_body_without_length_is_sent_chunked(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    pool = make_pool(shop.port)
    data = b"x" * 100_000
    request = head("PUT", "/echo", "shop", "Transfer-Encoding: chunked")
    response = await pool.request("PUT", request, body_of(data), None)
    assert dict(response.raw_headers)["X-Chunked"] == "chunked"
    assert await read_all(response) == data
    again = await pool.request("GET", head("GET", "/echo"), None, None)
    assert await read_all(again) == b"hello"


async def test_chunked_response_is_decoded(shop: TestServer, make_pool: Callable[..., HttpPool]) -> None:
    pool = make_pool(shop.port)
    response = await pool.request("GET", head("GET", "/chunked"), None, None)
    assert await read_all(response) == b"".join(f"part {n}\n".encode() for n in range(5))
    assert len(pool._idle) == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_have_no_body(
    shop: TestServer, make_pool: Callable[..., HttpPool], status: int
) -> None:
    pool = make_pool(shop.port)
    response = await pool.request("GET", head("GET", f"/empty?status={status}"), None, None)
    assert response.status == status
    assert await read_all(response) == b""
    assert len(pool._idle) == 1


async def test_head_has_no_body_though_content_length_says_so(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    pool = make_pool(shop.port)
    response = await pool.request("HEAD", head("HEAD", "/echo"), None, None)
    assert dict(response.raw_headers)["Content-Length"] == "5"
    assert await read_all(response) == b""
    after = await pool.request("GET", head("GET", "/echo"), None, None)
    assert await read_all(after) == b"hello"
    assert len(pool._idle) == 1


async def test_read_buffered_takes_what_arrived_and_never_waits(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    rest = asyncio.Event()

    async def in_two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nabc")
        await writer.drain()
        await rest.wait()
        writer.write(b"defg")
        await writer.drain()
        await reader.read()

    pool = make_pool(await raw_server(in_two_parts))
    response = await pool.request("GET", head("GET", "/"), None, None)

    assert response.read_buffered() == b"abc"
    assert response.read_buffered() == b""
    assert not response.body_complete()
    rest.set()
    assert await response.read() == b"defg"
    assert response.body_complete()
    assert response.read_buffered() == b""
    response.release()


async def test_unread_response_closes_its_connection(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await reader.read()  # until the client closes

    pool = make_pool(await raw_server(big))
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert await response.read() == b"x" * 1000
    response.release()
    assert pool._idle == []


async def test_idle_connections_are_bounded(shop: TestServer, make_pool: Callable[..., HttpPool]) -> None:
    pool = make_pool(shop.port, max_idle=2)

    async def one() -> bytes:
        response = await pool.request("GET", head("GET", "/slow?s=0.1"), None, None)
        return await read_all(response)

    assert await asyncio.gather(*(one() for _ in range(5))) == [b"late"] * 5
    assert len(pool._idle) == 2


async def test_large_body_is_flow_controlled(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """A body far larger than the buffer: reading pauses, nothing piles up, every byte arrives."""
    size = 32 * 1024 * 1024

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"y" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    pool = make_pool(await raw_server(huge))
    response = await pool.request("GET", head("GET", "/"), None, None)
    await asyncio.sleep(0.3)  # the shop writes as fast as it may; nobody reads
    assert response._buffered < _HIGH_WATER + 512 * 1024
    received = 0
    most = 0
    while chunk := await response.read():
        received += len(chunk)
        most = max(most, len(chunk))
    response.release()
    assert received == size
    assert most < _HIGH_WATER + 512 * 1024


async def test_interim_response_is_skipped(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Real: 1\r\n\r\nok")
        await writer.drain()
        await reader.read()

    pool = make_pool(await raw_server(hints))
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert response.status == 200
    assert response.raw_headers == [("Content-Length", "2"), ("X-Real", "1")]
    assert await read_all(response) == b"ok"


async def test_close_delimited_body_ends_at_close(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    pool = make_pool(await raw_server(legacy))
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert await read_all(response) == b"until the end"
    assert pool._idle == []


async def test_shop_closing_an_idle_connection_is_survived(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """The shop closes each connection after one answer without saying so: the next request works."""

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    pool = make_pool(await raw_server(once))
    for _ in range(3):
        response = await pool.request("GET", head("GET", "/"), None, None)
        assert await read_all(response) == b"ok"
        await asyncio.sleep(0.05)


# -- failures ------------------------------------------------------------------------------------


async def test_refused_connection_is_an_os_error(make_pool: Callable[..., HttpPool]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(port)
    with pytest.raises(ConnectionRefusedError):
        await pool.request("GET", head("GET", "/"), None, None)


async def test_an_address_that_refuses_passes_the_request_to_the_next_one(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    """The shop's name resolved to two addresses, the first refusing: the page comes from the second."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refusing = sock.getsockname()[1]
    pool = make_pool(shop.port)
    # As the last resolve left them (kept for a minute): the refusing address first.
    pool._addresses = [(socket.AF_INET, ("127.0.0.1", refusing)), (socket.AF_INET, ("127.0.0.1", shop.port))]
    pool._addresses_until = float("inf")
    response = await pool.request("GET", head("GET", "/echo"), None, None)
    assert (response.status, await read_all(response)) == (200, b"hello")


async def test_no_headers_within_the_timeout(shop: TestServer, make_pool: Callable[..., HttpPool]) -> None:
    pool = make_pool(shop.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("GET", head("GET", "/slow?s=2"), None, None)
    # At most one tick of the read timer (a tenth of the timeout) late.
    assert READ_TIMEOUT_S * 0.9 <= loop.time() - started < READ_TIMEOUT_S * 1.5


async def test_a_slow_answer_on_a_reused_connection_is_not_sent_again(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """A header timeout on a kept-alive connection raises once; the request reached the shop once."""
    seen: list[bytes] = []

    async def keep_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        seen.append(await read_head(reader))
        await asyncio.sleep(READ_TIMEOUT_S * 4)

    pool = make_pool(await raw_server(keep_then_stall))
    assert await read_all(await pool.request("GET", head("GET", "/"), None, None)) == b"ok"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("POST", head("POST", "/cart/clear", "shop", "Content-Length: 0"), None, None)
    assert loop.time() - started < READ_TIMEOUT_S * 1.9
    assert [line.split(b" ", 2)[:2] for line in seen] == [[b"GET", b"/"], [b"POST", b"/cart/clear"]]


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_only_safe_methods_are_retried_when_a_reused_connection_dies(
    raw_server: Callable[[Script], Awaitable[int]],
    make_pool: Callable[..., HttpPool],
    method: str,
    retried: bool,
) -> None:
    """A kept-alive connection closed on the second request: GET goes again on a new one, POST fails."""
    seen: list[bytes] = []

    async def answer_once_then_drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        seen.append(await read_head(reader))  # then close without answering

    pool = make_pool(await raw_server(answer_once_then_drop))
    assert await read_all(await pool.request("GET", head("GET", "/"), None, None)) == b"ok"
    second = head(method, "/again", "shop", "Content-Length: 0")
    if retried:
        assert await read_all(await pool.request(method, second, None, None)) == b"ok"
        assert [h.split(b" ", 1)[0] for h in seen] == [b"GET", b"GET", b"GET"]
    else:
        with pytest.raises((ConnectionBroken, OSError)):
            await pool.request(method, second, None, None)
        assert [h.split(b" ", 1)[0] for h in seen] == [b"GET", b"POST"]


async def test_stalled_body_times_out(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(3)

    pool = make_pool(await raw_server(stall))
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert await response.read() == b"hello"
    with pytest.raises(TimeoutError):
        await response.read()
    response.release()
    assert pool._idle == []


async def test_a_slow_upload_keeps_the_wait_for_headers_alive(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    """Body chunks going out count as progress: an upload longer than the timeout still gets its answer."""
    body = open_body()
    chunks = [b"a" * 1000] * 5

    async def trickle() -> None:
        for chunk in chunks:
            await asyncio.sleep(READ_TIMEOUT_S * 0.3)
            body.feed_data(chunk)
        body.feed_eof()

    pool = make_pool(shop.port)
    feeding = asyncio.create_task(trickle())
    request = head("POST", "/echo", "shop", "Transfer-Encoding: chunked")
    response = await pool.request("POST", request, body, None)
    await feeding
    assert await read_all(response) == b"".join(chunks)


async def test_a_body_that_keeps_coming_is_not_cut_off(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """The timeout is per wait without progress, not for the whole body."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        for byte in b"hello":
            await asyncio.sleep(READ_TIMEOUT_S * 0.4)
            writer.write(bytes([byte]))
            await writer.drain()

    pool = make_pool(await raw_server(trickle))
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert await read_all(response) == b"hello"


async def responses_left_to_the_collector(scenario: Callable[[], Awaitable[None]]) -> list[HttpResponse]:
    """The HttpResponses that only the cyclic collector would free after ``scenario`` ran."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await scenario()
        gc.collect()
        return [obj for obj in gc.garbage if isinstance(obj, HttpResponse)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_released_response_leaves_no_cycle(
    shop: TestServer, make_pool: Callable[..., HttpPool]
) -> None:
    """Responses are freed by reference counting: the cyclic collector finds none of them."""
    pool = make_pool(shop.port)

    async def three_pages() -> None:
        for _ in range(3):
            assert await read_all(await pool.request("GET", head("GET", "/echo"), None, None)) == b"hello"

    assert await responses_left_to_the_collector(three_pages) == []


async def test_a_broken_off_response_leaves_no_cycle(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """The error a broken body raised (its traceback holds the response) is let go at release."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")

    pool = make_pool(await raw_server(cut))

    async def broken_page() -> None:
        response = await pool.request("GET", head("GET", "/"), None, None)
        assert await response.read() == b"partial"
        with pytest.raises(ConnectionBroken):
            await response.read()
        response.release()

    assert await responses_left_to_the_collector(broken_page) == []


async def test_a_wait_in_flight_still_times_out_after_the_pool_closes(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    """Closing a pool drops its idle connections, not the timeout of a request still waiting."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(READ_TIMEOUT_S * 6)

    pool = make_pool(await raw_server(never_answer))
    waiting = asyncio.create_task(pool.request("GET", head("GET", "/"), None, None))
    await asyncio.sleep(READ_TIMEOUT_S / 5)
    await pool.close()
    done, _ = await asyncio.wait({waiting}, timeout=READ_TIMEOUT_S * 3)
    assert done == {waiting}
    assert isinstance(waiting.exception(), TimeoutError)


def test_a_pool_that_outlives_its_loop_still_times_out() -> None:
    """The read timer re-arms on the loop now in use, though one is still pending on the old one."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered = threading.Event()

    def serve() -> None:
        # First connection: one answer, kept open. Second: read and never answer.
        for number in range(2):
            conn, _ = listener.accept()
            conn.recv(65536)
            if number == 0:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                answered.set()
            else:
                threading.Event().wait(READ_TIMEOUT_S * 6)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = HttpPool("127.0.0.1", port, connect_timeout=1.0, read_timeout=READ_TIMEOUT_S)

    async def first() -> bytes:
        return await read_all(await pool.request("GET", head("GET", "/"), None, None))

    async def second() -> BaseException | None:
        waiting = asyncio.create_task(pool.request("GET", head("GET", "/"), None, None))
        done, _ = await asyncio.wait({waiting}, timeout=READ_TIMEOUT_S * 3)
        if not done:
            waiting.cancel()
            return None
        return waiting.exception()

    try:
        assert asyncio.run(first()) == b"ok"
        assert isinstance(asyncio.run(second()), TimeoutError)
    finally:
        listener.close()


async def test_an_idle_pool_keeps_no_timer(shop: TestServer, make_pool: Callable[..., HttpPool]) -> None:
    """The read timer runs only while something waits: an idle sidecar is never woken by it."""
    pool = make_pool(shop.port)
    assert await read_all(await pool.request("GET", head("GET", "/echo"), None, None)) == b"hello"
    await asyncio.sleep(READ_TIMEOUT_S / 10 * 2.5)
    assert pool._read_timer._handle is None


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_connection_lost_mid_body(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool], how: str
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        if how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    pool = make_pool(await raw_server(cut))
    response = await pool.request("GET", head("GET", "/"), None, None)
    with pytest.raises(ConnectionBroken):
        await read_all(response)
    response.release()


async def test_connection_closed_before_headers(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    pool = make_pool(await raw_server(hang_up))
    with pytest.raises(ConnectionBroken):
        await pool.request("GET", head("GET", "/"), None, None)


async def test_garbage_is_malformed(
    raw_server: Callable[[Script], Awaitable[int]], make_pool: Callable[..., HttpPool]
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    pool = make_pool(await raw_server(garbage))
    with pytest.raises(ResponseMalformed):
        await pool.request("GET", head("GET", "/"), None, None)


# -- a response ends where its framing ends --------------------------------------------------------
#
# nginx (proxy_pass, the baseline) returns the first response cleanly and drops the connection when
# the shop sends more than its framing allows; this client does the same, and also drops a connection
# the shop talks on while it is idle (nginx serves those bytes to the next client).

OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SURPLUS = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsurplus!"


def answer_then(first: bytes, surplus: bytes, *, split: bool = False) -> ConnectionScript:
    """Answer the first request with ``first`` and ``surplus`` (one write, or two 50 ms apart); the rest with OK_2."""

    async def script(conn: RawConnection) -> None:
        await conn.request()
        if conn.number > 0:
            await conn.send(OK_2)
            return
        if split:
            await conn.send(first)
            await asyncio.sleep(0.05)
            await conn.send(surplus)
        else:
            await conn.send(first + surplus)

    return script


async def assert_next_request_gets_a_fresh_connection(pool: HttpPool, shop: RecordingShop) -> None:
    """The connection with the surplus was closed, not pooled: the next request opens another."""
    await asyncio.wait_for(shop.connections[0].closed_by_peer.wait(), timeout=1)
    assert pool._idle == []
    assert await read_all(await pool.request("GET", head("GET", "/next"), None, None)) == b"ok"
    assert [conn.request_lines() for conn in shop.connections] == [
        [shop.connections[0].request_lines()[0]],
        [b"GET /next HTTP/1.1"],
    ]


@pytest.mark.parametrize("split", [False, True], ids=["same-packet", "next-packet"])
async def test_bytes_past_content_length_close_the_connection(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool], split: bool
) -> None:
    """Content-Length: 2 then another response: the client gets the first alone, the connection is closed."""
    shop = await recording_shop(answer_then(OK_2, SURPLUS, split=split))
    pool = make_pool(shop.port)
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert (response.status, response.reason, response.raw_headers) == (200, "OK", [("Content-Length", "2")])
    assert await read_all(response) == b"ok"
    await assert_next_request_gets_a_fresh_connection(pool, shop)


async def test_bytes_past_the_last_chunk_close_the_connection(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool]
) -> None:
    """A chunked body's last chunk ends the response; a response after it in the same packet is dropped."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    shop = await recording_shop(answer_then(chunked, SURPLUS))
    pool = make_pool(shop.port)
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert (response.reason, response.raw_headers) == ("OK", [("Transfer-Encoding", "chunked")])
    assert await read_all(response) == b"ok"
    await assert_next_request_gets_a_fresh_connection(pool, shop)


@pytest.mark.parametrize(
    ("status_line", "status"), [(b"204 No Content", 204), (b"304 Not Modified", 304)], ids=["204", "304"]
)
async def test_a_body_after_a_status_without_one_closes_the_connection(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool], status_line: bytes, status: int
) -> None:
    """A 204 or 304 ends at its head: bytes after it are not its body; the connection is closed."""
    shop = await recording_shop(answer_then(b"HTTP/1.1 " + status_line + b"\r\n\r\n", SURPLUS))
    pool = make_pool(shop.port)
    response = await pool.request("GET", head("GET", "/"), None, None)
    assert (response.status, response.reason, response.raw_headers) == (
        status,
        status_line.split(b" ", 1)[1].decode(),
        [],
    )
    assert await read_all(response) == b""
    await assert_next_request_gets_a_fresh_connection(pool, shop)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + SURPLUS,
    ],
    ids=["content-length", "chunked", "empty-chunked", "next-response"],
)
async def test_a_body_after_a_head_answer_closes_the_connection(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool], answer: bytes
) -> None:
    """An answer to HEAD ends at its head: any body bytes after it (even an empty chunked body) close the connection."""
    shop = await recording_shop(answer_then(answer, b""))
    pool = make_pool(shop.port)
    response = await pool.request("HEAD", head("HEAD", "/"), None, None)
    assert (response.status, response.reason) == (200, "OK")
    assert await read_all(response) == b""
    await assert_next_request_gets_a_fresh_connection(pool, shop)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["content-length", "chunked", "304-chunked"],
)
async def test_a_bodyless_head_answer_keeps_its_connection(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool], answer: bytes
) -> None:
    """The control for the test above: an answer to HEAD that stops at its head leaves the connection pooled."""

    async def script(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(answer)
        await conn.request()
        await conn.send(OK_2)

    shop = await recording_shop(script)
    pool = make_pool(shop.port)
    assert await read_all(await pool.request("HEAD", head("HEAD", "/"), None, None)) == b""
    assert await read_all(await pool.request("GET", head("GET", "/next"), None, None)) == b"ok"
    assert [conn.request_lines() for conn in shop.connections] == [
        [b"HEAD / HTTP/1.1", b"GET /next HTTP/1.1"]
    ]


async def test_bytes_on_an_idle_connection_never_reach_the_next_request(
    recording_shop: StartRecordingShop, make_pool: Callable[..., HttpPool], caplog: pytest.LogCaptureFixture
) -> None:
    """A response the shop sends on an idle pooled connection closes it; the next request gets its own answer."""
    first_answered = asyncio.Event()

    async def script(conn: RawConnection) -> None:
        await conn.request()
        await conn.send(OK_2 if conn.number == 0 else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        if conn.number == 0:
            await first_answered.wait()
            await conn.send(SURPLUS)

    shop = await recording_shop(script)
    pool = make_pool(shop.port)
    assert await read_all(await pool.request("GET", head("GET", "/"), None, None)) == b"ok"
    assert len(pool._idle) == 1
    first_answered.set()
    await asyncio.wait_for(shop.connections[0].closed_by_peer.wait(), timeout=1)
    assert pool._idle == []
    assert await read_all(await pool.request("GET", head("GET", "/next"), None, None)) == b"fresh"
    assert [conn.request_lines() for conn in shop.connections] == [
        [b"GET / HTTP/1.1"],
        [b"GET /next HTTP/1.1"],
    ]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "proxy.upstream"] == [
        ("WARNING", "shop sent bytes on an idle connection: closed it")
    ]


def test_bytes_the_loop_has_not_read_yet_never_reach_the_next_request() -> None:
    """A late response still in the socket's buffer when the connection is reused: seen, and the connection dropped.

    The loop is kept busy (blocked) while the shop's late bytes arrive, as on a loaded sidecar,
    so only a look at the socket itself can see them; nginx serves them to the next client.
    The shop runs in a thread here, to send while the loop is blocked.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        for number in range(2):
            conn, _ = listener.accept()
            with conn:
                received.append(conn.recv(65536))
                if number == 0:
                    conn.sendall(OK_2)
                    threading.Event().wait(0.05)
                    conn.sendall(SURPLUS)
                    conn.settimeout(2)
                    # Until the client closes; with the late bytes unread, its close is a reset.
                    with contextlib.suppress(ConnectionResetError):
                        while more := conn.recv(65536):
                            received[0] += more
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def two_requests() -> list[bytes]:
        pool = HttpPool("127.0.0.1", port, connect_timeout=1.0, read_timeout=READ_TIMEOUT_S)
        try:
            first = await read_all(await pool.request("GET", head("GET", "/"), None, None))
            time.sleep(0.3)  # the loop is busy: the late bytes land unread
            second = await read_all(await pool.request("GET", head("GET", "/next"), None, None))
            return [first, second]
        finally:
            await pool.close()

    try:
        assert asyncio.run(two_requests()) == [b"ok", b"fresh"]
        thread.join(timeout=3)
        assert [data.split(b"\r\n", 1)[0] for data in received] == [b"GET / HTTP/1.1", b"GET /next HTTP/1.1"]
    finally:
        listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi",
    ],
    ids=["with-upgrade-headers", "bare"],
)
async def test_a_101_to_a_request_that_did_not_ask_to_upgrade_is_malformed(
    recording_shop: StartRecordingShop,
    make_pool: Callable[..., HttpPool],
    caplog: pytest.LogCaptureFixture,
    answer: bytes,
) -> None:
    """A 101 the client never asked for fails the request with one WARNING, no traceback; the connection is closed."""
    shop = await recording_shop(answer_then(answer, b""))
    pool = make_pool(shop.port)
    with pytest.raises(ResponseMalformed, match=r"^101 Switching Protocols to a request that did not ask"):
        await pool.request("GET", head("GET", "/"), None, None)
    await assert_next_request_gets_a_fresh_connection(pool, shop)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        (
            "proxy.upstream",
            "WARNING",
            "shop broke the protocol: 101 Switching Protocols to a request that did not ask to upgrade",
            None,
        )
    ]


LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {"asyncio": None}
with contextlib.suppress(ImportError):
    import uvloop

    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


@pytest.mark.parametrize("after", ["nothing", "bytes", "end-of-file"])
@pytest.mark.parametrize("loop_name", sorted(LOOP_FACTORIES))
def test_an_idle_connection_is_looked_at_before_reuse(
    loop_name: str, after: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The look before a reuse (a poll that does not wait, then a peek only if it reports anything).

    A quiet connection is reused; one the shop sent bytes on (a warning) or closed is closed, on
    either event loop. The loop is blocked meanwhile, so only the socket itself can tell.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered = threading.Event()
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(OK_2)
            answered.wait(2)
            if after == "bytes":
                conn.sendall(SURPLUS)
            elif after == "end-of-file":
                conn.shutdown(socket.SHUT_WR)
            done.wait(2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def look() -> tuple[bool, bool]:
        pool = HttpPool("127.0.0.1", port, connect_timeout=1.0, read_timeout=READ_TIMEOUT_S)
        try:
            assert await read_all(await pool.request("GET", head("GET", "/"), None, None)) == b"ok"
            [conn] = pool._idle
            answered.set()
            time.sleep(0.1)  # the loop is busy: whatever the shop did lands unread
            return conn.spoke_while_idle(), conn.closed
        finally:
            done.set()
            await pool.close()

    try:
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as runner:
            spoke, closed = runner.run(look())
        assert (spoke, closed) == ((False, False) if after == "nothing" else (True, True))
        warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.upstream"]
        assert warnings == (["shop sent bytes on an idle connection: closed it"] if after == "bytes" else [])
        thread.join(timeout=3)
    finally:
        listener.close()
