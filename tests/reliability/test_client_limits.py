"""Clients that leave, dawdle or overreach: the connection half of issue #22, on raw sockets.

Each test is one client misbehaving as an attacker (or an impatient visitor) would, against the
real sidecar between the emulator and a fake shop; what is asserted is what the client saw on
its socket, what the shop received, the metrics and the log (no ERROR: this package's fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import socket
import struct
import time
import tracemalloc
from typing import Any, Final

import aiohttp
import pytest

from proxy.limits import ShopServer
from proxy.metrics import Metrics
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.raw_shop import RawConnection, StartRecordingShop
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.reliability.helpers import eventually

DOWNLOAD_SIZE = 16 * 1024 * 1024


def requests_counted(metrics: Metrics, status: int) -> float:
    return metrics.requests.labels("main", status).value


def abort(writer: asyncio.StreamWriter) -> None:
    """Leave as a browser tab that is closed does: a reset, nothing more read."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_client_leaving_a_streamed_download_is_a_499_logged_once_at_info(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A download abandoned after its first bytes: one INFO line without traceback, counted 499, not 500."""
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(f"GET /download/{DOWNLOAD_SIZE} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(64 * 1024), 5)
    abort(writer)

    async def counted() -> bool:
        return requests_counted(metrics, 499) == 1

    await eventually(counted)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert requests_counted(metrics, 500) == 0
    gone = [r for r in caplog.records if r.name == "proxy.handler"]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in gone] == [
        ("INFO", "client went away mid-response", None)
    ]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def limited(shop: Shop, emulator: RunningEmulator, **limits: Any) -> dict[str, Any]:
    document = sidecar_config(shop.url, emulator.url)
    document["limits"] = limits
    return document


def big_headers(count: int, name: bytes = b"X-Big") -> bytes:
    """``count`` header lines of 8,000 B each: every one within aiohttp's per-line limit."""
    return b"".join(b"%s-%d: %s\r\n" % (name, n, b"a" * 8000) for n in range(count))


def closed_for(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("cc_sidecar_connections_closed_total", {"reason": reason})
    return value or 0.0


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the sidecar sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = await asyncio.wait_for(reader.read(), seconds)
    return received, time.monotonic() - started


async def test_a_head_that_trickles_in_is_cut_at_the_head_timeout(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Slowloris: a head sent a header every 0.2 s is closed between the head timeout and twice it."""
    metrics = Metrics()
    sidecar = await make_sidecar(limited(shop, emulator, head_timeout_s=0.6), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    started = time.monotonic()
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n")

    async def trickle() -> None:
        for number in range(50):
            await asyncio.sleep(0.2)
            writer.write(b"X-Slow-%d: 1\r\n" % number)

    trickling = asyncio.create_task(trickle())
    try:
        received = await asyncio.wait_for(reader.read(), 5)
    finally:
        trickling.cancel()
    elapsed = time.monotonic() - started
    writer.close()

    assert received == b""
    assert 0.6 <= elapsed < 1.2
    assert closed_for(metrics, "head_timeout") == 1
    assert shop.state.requests == []


async def test_a_connection_that_never_sends_is_closed_at_the_head_timeout(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A new connection's first request head is due within the head timeout (nginx: client_header_timeout)."""
    sidecar = await make_sidecar(limited(shop, emulator, head_timeout_s=0.5, keepalive_timeout_s=30))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    received, elapsed = await closed_within(reader, 5)
    writer.close()

    assert received == b""
    assert 0.5 <= elapsed < 1.0


async def test_an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Between requests the keep-alive timeout applies, not the head timeout, and it closes the connection."""
    sidecar = await make_sidecar(limited(shop, emulator, head_timeout_s=0.3, keepalive_timeout_s=0.8))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    received, elapsed = await closed_within(reader, 5)
    writer.close()

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received == b""
    assert 0.8 <= elapsed < 1.6


@pytest.mark.bad_requests_logged
async def test_a_complete_head_over_the_limit_is_a_431_and_nothing_reaches_the_shop(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Five headers of 8,000 B (each within aiohttp's per-line limit), 40 KB in all: 431, closed, not forwarded."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    big = big_headers(5)
    writer.write(
        b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n"
        + big
        + b"\r\nGET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n"
    )
    received, _ = await closed_within(reader, 5)
    writer.close()

    # aiohttp answers what its parser refused in HTTP/1.0, as it does its 400s.
    assert received.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n")
    assert received.count(b"HTTP/1.") == 1
    assert closed_for(metrics, "head_too_large") == 1
    assert shop.state.requests == []


@pytest.mark.bad_requests_logged
async def test_an_incomplete_head_over_the_limit_is_a_431_before_its_end(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Row 1 of issue #22: headers of 8,000 B without the blank line are refused once 32 KB are in."""
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n")
    writer.write(big_headers(5))
    received, _ = await closed_within(reader, 5)
    writer.close()

    # aiohttp answers what its parser refused in HTTP/1.0, as it does its 400s.
    assert received.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n")
    assert shop.state.requests == []


@pytest.mark.bad_requests_logged
async def test_incomplete_heads_hold_at_most_64_kb_each(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Twenty connections each sending 200 KB of a head that never ends: under 64 KB held per connection."""
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    connections = []
    head = b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n" + big_headers(25)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            writer.write(head)
            connections.append((reader, writer))
        await asyncio.sleep(0.5)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        for _, writer in connections:
            writer.close()

    assert held < 20 * 64 * 1024


async def test_a_client_that_reads_nothing_is_cut_at_the_send_timeout(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A 16 MB download never read: the connection is cut within twice the send timeout, counted 499."""
    metrics = Metrics()
    sidecar = await make_sidecar(limited(shop, emulator, send_timeout_s=0.5), metrics=metrics)
    sock = socket.create_connection(("127.0.0.1", sidecar.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /download/{DOWNLOAD_SIZE} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    try:

        async def cut() -> bool:
            return closed_for(metrics, "send_timeout") == 1

        await eventually(cut, within_s=5)
        await eventually(lambda_async(lambda: requests_counted(metrics, 499) == 1))
    finally:
        sock.close()
    assert requests_counted(metrics, 200) == 0


def lambda_async(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


async def test_at_the_connection_limit_an_idle_connection_makes_room_for_a_visitor(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Five idle connections at max_connections 5: visitors are served, one idle one closed for them, a WARNING."""
    metrics = Metrics()
    sidecar = await make_sidecar(limited(shop, emulator, max_connections=5), metrics=metrics)
    idle = [await asyncio.open_connection("127.0.0.1", sidecar.port) for _ in range(5)]
    await asyncio.sleep(0.1)
    answers = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        answers.append(await asyncio.wait_for(reader.read(), 5))
        writer.close()
    dropped = 0
    for reader, writer in idle:
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(reader.read(), 0.2) == b"":
                dropped += 1
        writer.close()

    assert [answer.split(b"\r\n")[0] for answer in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert dropped == 1
    assert closed_for(metrics, "connection_limit") == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.limits"]
    assert warnings[0] == "connection limit reached: closing an idle connection"


async def read_one_page(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length, read to its end; its status line."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n")[0]


async def still_open(reader: asyncio.StreamReader) -> bool:
    """Whether the sidecar has neither sent anything nor closed the connection within 0.2 s."""
    try:
        await asyncio.wait_for(reader.read(1), 0.2)
    except TimeoutError:
        return True
    return False


PAGE: Final = b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n"


async def kept_alive(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that got a page and stays open between requests."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PAGE)
    assert await read_one_page(reader) == b"HTTP/1.1 200 OK"
    return reader, writer


async def newcomer_served(port: int) -> asyncio.StreamWriter:
    """A new connection at the limit gets its page (then the sidecar closes it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    assert await read_one_page(reader) == b"HTTP/1.1 200 OK"
    return writer


async def test_at_the_connection_limit_a_kept_alive_connection_goes_before_an_older_silent_one(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """max_connections 2: a silent connection, then one kept alive after a page; a newcomer closes the second."""
    metrics = Metrics()
    sidecar = await make_sidecar(limited(shop, emulator, max_connections=2), metrics=metrics)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    await asyncio.sleep(0.05)
    kept_reader, kept_writer = await kept_alive(sidecar.port)
    try:
        (await newcomer_served(sidecar.port)).close()
        assert await asyncio.wait_for(kept_reader.read(), 5) == b""
        assert await still_open(silent_reader)
        assert closed_for(metrics, "connection_limit") == 1
    finally:
        kept_writer.close()
        silent_writer.close()


async def test_at_the_connection_limit_a_kept_alive_connection_serving_again_is_not_closed(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A connection kept alive, then asked for a slow page: a newcomer at the limit closes the silent one."""
    metrics = Metrics()
    sidecar = await make_sidecar(limited(shop, emulator, max_connections=2), metrics=metrics)
    busy_reader, busy_writer = await kept_alive(sidecar.port)
    busy_writer.write(b"GET /slow?s=0.5 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    await asyncio.sleep(0.1)  # the slow page is at the shop
    try:
        (await newcomer_served(sidecar.port)).close()
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""
        assert await read_one_page(busy_reader) == b"HTTP/1.1 200 OK"
        assert closed_for(metrics, "connection_limit") == 1
    finally:
        busy_writer.close()
        silent_writer.close()


async def test_at_the_connection_limit_a_kept_alive_connection_off_the_list_still_goes_first(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A keep-alive connection the server's list lost (taken out as busy while it finished its
    response) is still closed before an older one waiting for its head."""
    sidecar = await make_sidecar(limited(shop, emulator, max_connections=2))
    waiting_reader, waiting_writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    waiting_writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n")
    await asyncio.sleep(0.05)
    kept_reader, kept_writer = await kept_alive(sidecar.port)
    assert sidecar.runner is not None
    server = sidecar.runner.server
    assert isinstance(server, ShopServer)
    server.kept_alive.clear()  # as a newcomer that found it busy would have left it
    try:
        (await newcomer_served(sidecar.port)).close()
        assert await asyncio.wait_for(kept_reader.read(), 5) == b""
        assert await still_open(waiting_reader)
    finally:
        kept_writer.close()
        waiting_writer.close()


async def test_a_client_leaving_mid_upload_is_a_499_and_the_shop_never_sees_it(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload abandoned half-way: nothing reaches the shop, one INFO line, counted 499."""
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 50000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    abort(writer)

    async def counted() -> bool:
        return requests_counted(metrics, 499) == 1

    await eventually(counted)
    assert shop.state.requests == []
    gone = [r for r in caplog.records if r.name == "proxy.handler"]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in gone] == [
        ("INFO", "client went away mid-body", None)
    ]


async def test_a_client_that_left_before_the_shop_broke_off_is_a_499_and_nothing_at_error(
    recording_shop: StartRecordingShop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """The client leaves mid-download, then the shop resets: counted 499 (the client left first), no ERROR."""
    client_left = asyncio.Event()

    async def script(connection: RawConnection) -> None:
        await connection.request()
        await connection.send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"d" * (4 * 1024 * 1024)
        )
        await client_left.wait()
        await asyncio.sleep(0.3)  # the sidecar's write to the client fails meanwhile
        abort(connection.writer)

    shop = await recording_shop(script)
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # 1 MB waits in the sidecar
    sock.connect(("127.0.0.1", sidecar.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /download HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.sleep(0.5)  # the sidecar has the shop's megabyte; the client's socket is full
    abort(writer)
    client_left.set()

    async def counted() -> bool:
        return requests_counted(metrics, 499) == 1

    await eventually(counted)
    await asyncio.wait_for(shop.connections[0].closed_by_peer.wait(), 5)
    gc.collect()  # a task whose exception nobody took would be logged (at ERROR) now
    await asyncio.sleep(0)
    assert requests_counted(metrics, 200) == 0


async def test_a_body_the_shop_answered_without_reading_gives_its_temp_space_back(
    recording_shop: StartRecordingShop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """The shop answers after the head and reads no more of a 32 MB upload: once answered, no temp byte is held."""
    checked = asyncio.Event()

    async def script(connection: RawConnection) -> None:
        await connection.request()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await checked.wait()  # reads nothing more till then: the body stays in the sidecar's spool

    shop = await recording_shop(script)
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    size = 32 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(f"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: {size}\r\n\r\n".encode())
    writer.write(b"u" * size)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await asyncio.wait_for(reader.readexactly(2), 5)
    writer.close()

    async def released() -> bool:
        return metrics.registry.get_sample_value("cc_sidecar_temp_bytes") == 0

    try:
        await eventually(released)
    finally:
        checked.set()
        await asyncio.wait_for(shop.connections[0].closed_by_peer.wait(), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.bad_requests_logged
@pytest.mark.parametrize("begun", ["in the first request's write", "while the first is served"])
async def test_a_head_begun_behind_the_previous_request_is_measured_whole(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, begun: str
) -> None:
    """24 KB of a second head written with the first request or while it is at the shop, 24 KB more
    once it is answered: a 431, and only the first request reaches the shop."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    first_request = b"GET /slow?s=0.5 HTTP/1.1\r\nHost: shop.test\r\n\r\n"
    second_begun = b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n" + big_headers(3)
    if begun == "in the first request's write":
        writer.write(first_request + second_begun)
    else:
        writer.write(first_request)
        await eventually(lambda_async(lambda: len(shop.state.requests) == 1))
        writer.write(second_begun)
    first = await asyncio.wait_for(reader.readuntil(b"finally"), 5)
    await asyncio.sleep(0.2)  # the first request answered: the connection waits for the second head
    writer.write(big_headers(3, b"X-More") + b"\r\n")
    try:
        received = await asyncio.wait_for(reader.read(), 3)
    except TimeoutError:
        received = b""  # kept open: the second request was served
    writer.close()

    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.0 431 Request Header Fields Too Large\r\n" in received
    assert closed_for(metrics, "head_too_large") == 1
    assert [request.path_qs for request in shop.state.requests] == ["/slow?s=0.5"]


@pytest.mark.bad_requests_logged
async def test_an_incomplete_head_pipelined_behind_a_request_in_flight_is_refused_past_the_limit(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """40 KB of a head that never ends, sent while the request before it is at the shop: that one is
    answered, then a 431, and the connection closes."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /slow?s=0.5 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    await eventually(lambda_async(lambda: len(shop.state.requests) == 1))
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n" + big_headers(5))
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    first, _, rest = received.partition(b"finally")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n")
    assert closed_for(metrics, "head_too_large") == 1
    assert [request.path_qs for request in shop.state.requests] == ["/slow?s=0.5"]


async def test_a_large_body_and_the_head_pipelined_after_it_are_not_counted_together(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A 100 KB body, then a 24 KB head in the same write: both requests are served."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    body = b"b" * 100_000
    writer.write(
        b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n"
        + big_headers(3)
        + b"\r\n"
    )
    first = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()

    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert closed_for(metrics, "head_too_large") == 0
    assert [request.path_qs for request in shop.state.requests] == ["/upload-sha", "/plain"]


async def test_websocket_frames_past_the_head_limit_pass(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Three 20 KB frames on one WebSocket (60 KB after its upgrade request) are each echoed."""
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    frames = [bytes([n]) * 20_000 + b"end" for n in range(3)]
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"http://127.0.0.1:{sidecar.port}/ws", protocols=("chat",)) as ws,
    ):
        for frame in frames:
            await ws.send_bytes(frame)
        echoed = [(await asyncio.wait_for(ws.receive(), 5)).data for _ in frames]

    assert echoed == [frame[::-1] for frame in frames]


@pytest.mark.bad_requests_logged
async def test_a_head_pipelined_behind_a_full_queue_of_requests_is_measured_whole(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """32 requests (aiohttp's queue, which holds back what follows) and 24 KB of a head in one
    write, 16 KB more once they are answered: 32 pages, then a 431."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n" * 32
        + b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n"
        + big_headers(3)
    )
    await eventually(lambda_async(lambda: len(shop.state.requests) == 32))
    await asyncio.sleep(0.2)  # the 32 answered: the connection waits for the rest of the head
    writer.write(big_headers(2, b"X-More") + b"\r\n")
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert received.count(b"HTTP/1.1 200 OK\r\n") == 32
    assert b"HTTP/1.0 431 Request Header Fields Too Large\r\n" in received
    assert closed_for(metrics, "head_too_large") == 1
    assert len(shop.state.requests) == 32


# A WebSocket upgrade request the sidecar declines (no Sec-WebSocket-Key): 400, kept alive.
DECLINED_UPGRADE = b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.bad_requests_logged
@pytest.mark.parametrize("ending", [b"\r\n", b""], ids=["complete", "unfinished"])
async def test_a_head_behind_a_declined_upgrade_is_measured(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, ending: bytes
) -> None:
    """A 48 KB head, complete or not, written with an upgrade request that is declined: the upgrade
    is answered 400, the head 431, and the shop gets neither."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(DECLINED_UPGRADE + b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n" + big_headers(6) + ending)
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert received.count(b"HTTP/1.") == 2
    assert b"HTTP/1.0 431 Request Header Fields Too Large\r\n" in received
    assert closed_for(metrics, "head_too_large") == 1
    assert shop.state.requests == []


def head_of_size(size: int) -> bytes:
    """A request head of exactly ``size`` bytes, its headers written "name:value" (no whitespace)."""
    head = b"GET /plain HTTP/1.1\r\nHost:shop.test\r\n" + b"".join(
        b"X%03d:%s\r\n" % (n, b"v" * 240) for n in range(100)
    )
    filler = size - len(head) - len(b"Z:\r\n\r\n")
    return head + b"Z:" + b"v" * filler + b"\r\n\r\n"


@pytest.mark.bad_requests_logged
@pytest.mark.parametrize(
    ("size", "status"), [(32768, b"200 OK"), (32769, b"431 Request Header Fields Too Large")]
)
async def test_a_pipelined_head_is_measured_to_the_byte(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, size: int, status: bytes
) -> None:
    """A head of exactly max_head_bytes pipelined behind a request is served; one byte more is a 431."""
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n" + head_of_size(size))
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(int(first.split(b"Content-Length: ")[1].split(b"\r\n")[0])), 5)
    second = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    writer.close()

    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.split(b" ", 1)[1] == status + b"\r\n"


async def test_body_bytes_read_right_after_their_head_are_not_taken_for_a_head(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """uvloop reads a socket up to 32 times per wake-up: a head with 100 KB of its body, then 200 KB
    more, handed to the protocol back to back before the request runs, are one upload, not a 431."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    assert sidecar.runner is not None
    server = sidecar.runner.server
    await eventually(lambda_async(lambda: len(server.connections) == 1))
    (protocol,) = server.connections
    body = b"b" * 300_000
    head = b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % len(body)
    # As libuv hands them over: two reads, nothing run between them.
    protocol.data_received(head + body[:100_000])
    protocol.data_received(body[100_000:])
    response = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    writer.close()

    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(response.partition(b"\r\n\r\n")[2]) == {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
    }
    assert closed_for(metrics, "head_too_large") == 0


async def test_an_upload_queued_behind_a_declined_upgrade_is_served_whole(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """An upgrade request that is declined and a POST's head in one write, its 200 KB body after
    (10 KB at a time): the upgrade is answered 400 and the upload 200, whole, with no 431."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    body = b"b" * 200_000
    writer.write(
        DECLINED_UPGRADE
        + b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    declined = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    for at in range(0, len(body), 10_000):
        writer.write(body[at : at + 10_000])
        await writer.drain()
    received = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    writer.close()

    assert declined.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    upload = received[received.index(b"HTTP/1.1 200 OK\r\n") :]
    assert json.loads(upload.partition(b"\r\n\r\n")[2]) == {
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
    }
    assert closed_for(metrics, "head_too_large") == 0


@pytest.mark.bad_requests_logged
async def test_a_head_behind_twice_aiohttps_queue_of_requests_is_measured(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """70 requests and a complete 40 KB head in one write: aiohttp parses 32 at a time, the rest
    later from what it held (no packet); 70 pages, then a 431."""
    metrics = Metrics()
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url), metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n\r\n" * 70
        + b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n"
        + big_headers(5)
        + b"\r\n"
    )
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert received.count(b"HTTP/1.1 200 OK\r\n") == 70
    assert b"HTTP/1.0 431 Request Header Fields Too Large\r\n" in received
    assert closed_for(metrics, "head_too_large") == 1
    assert len(shop.state.requests) == 70
