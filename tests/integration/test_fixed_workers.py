"""A shop with a fixed number of workers (gunicorn sync, two workers) is never held by slow clients.

Row 3 of issue #22: 24 slow POST bodies or 24 slow readers held all 16 workers of such a shop and
real visitors got nothing. Here twice as many slow clients as the shop has workers do the same
through the sidecar, on raw sockets, while a visitor asks for a page: the visitor is served in
well under a second, and the request bodies the shop ran are the clients' own bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer

from proxy.metrics import Metrics
from tests.fixtures.gunicorn import running_gunicorn
from tests.fixtures.process import free_port, start_sidecar, wait_ready
from tests.fixtures.recording import RecordingUpstream
from tests.fixtures.shop import SidecarFactory, sidecar_config
from tests.integration.test_smuggling import DEAD_API, exchange, status_line

pytest.importorskip("gunicorn")

WORKERS = 2
SLOW_CLIENTS = 2 * WORKERS
DOWNLOAD_SIZE = 16 * 1024 * 1024
# A visitor's page through an idle sidecar and shop takes milliseconds; this is the slack for a
# shared, loaded test machine, far below the minutes a held worker would make it wait.
VISITOR_WITHIN_S = 3.0


class FixedWorkerShop:
    def __init__(self, url: str, record: Path) -> None:
        self.url = url
        self.record = record

    def executed(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
async def fixed_worker_shop(tmp_path: Path) -> AsyncIterator[FixedWorkerShop]:
    """gunicorn with two sync workers: each serves one request at a time, body and response included."""
    record = tmp_path / "executed.jsonl"
    options = ("--worker-class", "sync", "--workers", str(WORKERS), "--timeout", "120")
    async with running_gunicorn(record, *options) as url:
        yield FixedWorkerShop(url, record)


async def sidecar_for(
    shop: FixedWorkerShop, make_sidecar: SidecarFactory, metrics: Metrics | None = None, **sections: Any
) -> BaseTestServer:
    document = sidecar_config(shop.url, DEAD_API, hosts=["g.test"])
    document["storefronts"][0]["upstream_timeout_s"] = 30
    document.update(sections)
    return await make_sidecar(document, metrics=metrics)


async def visitor_served(sidecar: BaseTestServer) -> float:
    """A visitor's GET: asserts a 200 and returns how long it took."""
    started = time.monotonic()
    answer = await asyncio.wait_for(
        exchange(sidecar, b"GET /visitor HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"), 30
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    return time.monotonic() - started


async def test_slow_request_bodies_never_hold_the_shops_workers(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """Four POSTs sending 10 of their 100 bytes, then nothing: the shop never sees them, a visitor is served."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar)
    slow = []
    for _ in range(SLOW_CLIENTS):
        _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: g.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        slow.append(writer)
    await asyncio.sleep(0.3)
    try:
        elapsed = await visitor_served(sidecar)
    finally:
        for writer in slow:
            writer.close()

    assert elapsed < VISITOR_WITHIN_S
    assert [request["path"] for request in fixed_worker_shop.executed()] == ["/visitor"]


async def test_slow_readers_never_hold_the_shops_workers(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """Four clients asking for 16 MB and reading nothing: the shop's workers are free, a visitor is served."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar)
    slow = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", sidecar.port))
        sock.sendall(f"GET /download/{DOWNLOAD_SIZE} HTTP/1.1\r\nHost: g.test\r\n\r\n".encode())
        slow.append(sock)
    await asyncio.sleep(1.0)
    try:
        elapsed = await visitor_served(sidecar)
    finally:
        for sock in slow:
            sock.close()

    assert elapsed < VISITOR_WITHIN_S


async def test_a_slow_reader_gets_every_byte_the_shop_sent(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    """A download held for a client that starts reading late (spilled to temp_dir) arrives whole and in order."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    sidecar = await sidecar_for(
        fixed_worker_shop,
        make_sidecar,
        buffering={"response_memory_bytes": 65536, "temp_dir": str(spool_dir)},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port, limit=2**20)
    writer.write(
        f"GET /download/{DOWNLOAD_SIZE} HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n".encode()
    )
    await asyncio.sleep(1.0)
    # The shop is done with it while the client has read nothing.
    elapsed = await visitor_served(sidecar)
    everything = await asyncio.wait_for(reader.read(), 30)
    writer.close()

    head, _, body = everything.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"d" * DOWNLOAD_SIZE
    assert elapsed < VISITOR_WITHIN_S
    assert list(spool_dir.iterdir()) == []  # temp files are never named


async def test_a_body_spilled_to_a_temp_file_reaches_the_shop_byte_for_byte(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """A 1 MB upload past body_memory_bytes: the shop runs it once, with its Content-Length and bytes."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar, buffering={"body_memory_bytes": 1024})
    body = hashlib.sha256(b"upload").digest() * (1024 * 1024 // 32)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = await exchange(sidecar, head.encode() + body)

    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [executed] = fixed_worker_shop.executed()
    assert (executed["body_length"], executed["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


async def test_a_chunked_upload_reaches_the_shop_byte_for_byte(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """A chunked body, read in full first, runs once with the same bytes."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar)
    chunks = [b"a" * 5000, b"b" * 3, b"c" * 70000]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    head = b"POST /upload HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    answer = await exchange(sidecar, head + framed)

    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [executed] = fixed_worker_shop.executed()
    assert executed["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_a_body_that_stops_coming_is_a_408_at_the_body_timeout(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """10 of 100 bytes, then silence: 408 and the connection closed between the timeout and twice it."""
    metrics = Metrics()
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar, metrics, limits={"body_timeout_s": 0.6})
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: g.test\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 5)
    elapsed = time.monotonic() - started
    writer.close()

    assert status_line(answer) == b"HTTP/1.1 408 Request Timeout"
    assert 0.6 <= elapsed < 1.2
    assert fixed_worker_shop.executed() == []
    assert (
        metrics.registry.get_sample_value("cc_sidecar_connections_closed_total", {"reason": "body_timeout"})
        == 1
    )


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2001\r\n\r\n" + b"x" * 2001,
        b"Transfer-Encoding: chunked\r\n\r\n" + b"7d0\r\n" + b"x" * 2000 + b"\r\n2\r\nxx\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_over_max_body_bytes_is_a_413_and_never_reaches_the_shop(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory, framing: bytes
) -> None:
    """2,001 bytes with max_body_bytes 2,000, announced or chunked: 413, closed, nothing run."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar, buffering={"max_body_bytes": 2000})
    answer = await exchange(sidecar, b"POST /upload HTTP/1.1\r\nHost: g.test\r\n" + framing)

    assert status_line(answer) == b"HTTP/1.1 413 Request Entity Too Large"
    assert fixed_worker_shop.executed() == []


OPEN_FILES = 256
SLOWLORIS = 300
VISITORS = 20


@contextlib.asynccontextmanager
async def sidecar_process(
    shop: FixedWorkerShop, tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[int, int]]:
    """``cc-sidecar run`` at a 256 open-files limit (soft and hard): its shop and admin ports."""
    port, admin = free_port(), free_port()
    document = sidecar_config(shop.url, DEAD_API, hosts=["g.test"])
    document.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", **sections)
    process = await start_sidecar(
        tmp_path,
        document,
        open_files=OPEN_FILES,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
        yield port, admin
    finally:
        process.terminate()
        await process.wait()


async def visit(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /visitor HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n")
        return status_line(await asyncio.wait_for(reader.read(), VISITOR_WITHIN_S))
    except (TimeoutError, ConnectionError):
        return b"no answer"
    finally:
        writer.close()


@pytest.mark.parametrize(
    "attack",
    [
        b"GET / HTTP/1.1\r\nHost: g.test\r\nX-Slow: ",
        b"GET / HTTP/1.1\r\nHost: g.test\r\n"
        + b"".join(b"X-Big-%d: %s\r\n" % (n, b"a" * 8000) for n in range(3)),
    ],
    ids=["slowloris", "large-incomplete-heads"],
)
async def test_visitors_are_served_while_more_connections_than_descriptors_hold_heads_open(
    fixed_worker_shop: FixedWorkerShop, tmp_path: Path, attack: bytes
) -> None:
    """Row 2 of issue #22: 300 half-sent heads at a 256 open-files limit; 20 visitors after them all served.

    The automatic connection limit (half the open files) closes the oldest half-sent head for
    each new connection, so the sidecar never runs out of descriptors and a visitor gets in.
    """
    async with sidecar_process(fixed_worker_shop, tmp_path) as (port, admin):
        held = []
        for _ in range(SLOWLORIS):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(attack)
                held.append(writer)
        await asyncio.sleep(0.5)
        answers = [await visit(port) for _ in range(VISITORS)]
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{admin}/metrics") as response,
        ):
            metrics = await response.text()
        for writer in held:
            writer.close()

    assert answers == [b"HTTP/1.1 200 OK"] * VISITORS
    assert 'cc_sidecar_connections_closed_total{reason="connection_limit"}' in metrics


async def test_a_body_announced_too_large_is_refused_before_100_continue(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """Expect: 100-continue with a Content-Length over max_body_bytes: 413 at once, no 100 Continue."""
    sidecar = await sidecar_for(fixed_worker_shop, make_sidecar, buffering={"max_body_bytes": 2000})
    head = b"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    answer = await exchange(sidecar, head)

    assert status_line(answer) == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"100 Continue" not in answer
    assert fixed_worker_shop.executed() == []


@pytest.mark.parametrize(("path", "streamed"), [("/stream/upload", True), ("/upload", False)])
async def test_only_unbuffered_paths_send_a_body_on_before_it_is_all_in(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory, path: str, streamed: bool
) -> None:
    """10 of 100 body bytes sent: a path in unbuffered_paths has them at the shop already, any other path nothing."""
    document = sidecar_config(recording_upstream.url, DEAD_API, hosts=["g.test"])
    document["buffering"] = {"unbuffered_paths": ["/stream/*"]}
    sidecar = await make_sidecar(document)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: g.test\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10)
    await asyncio.sleep(0.5)
    seen_early = recording_upstream.raw
    writer.write(b"y" * 90)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()

    assert status_line(answer) == b"HTTP/1.1 200 OK"
    if streamed:
        assert seen_early.startswith(f"POST {path} HTTP/1.1\r\n".encode())
        assert seen_early.endswith(b"\r\n\r\n" + b"x" * 10)
    else:
        assert seen_early == b""
    [request] = recording_upstream.requests
    assert request.body == b"x" * 10 + b"y" * 90
    assert request.header("Content-Length") == [b"100"]


# -- the temp space: every spool together within buffering.max_temp_bytes ------------------------

# Above the shop's largest read (what arrived since the last one, up to the pool's high water), so
# a download's spool goes to disk before a chunk finds no room.
TEMP_SPACE = 1024 * 1024


def temp_bytes(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("cc_sidecar_temp_bytes")


def temp_refused(metrics: Metrics, body: str) -> float | None:
    return metrics.registry.get_sample_value("cc_sidecar_temp_refused_total", {"body": body})


async def test_slow_readers_share_the_temp_space_and_get_every_byte(
    fixed_worker_shop: FixedWorkerShop, make_sidecar: SidecarFactory
) -> None:
    """Two 16 MB downloads read late with 1 MiB of temp space: it is used, never passed, and both arrive whole.

    Each download's spool rolls over to disk past its 16 KiB of memory, until the space has no
    room for its next chunk: from there the shop is read at its client's pace.
    """
    metrics = Metrics()
    sidecar = await sidecar_for(
        fixed_worker_shop,
        make_sidecar,
        metrics,
        buffering={"response_memory_bytes": 16 * 1024, "max_temp_bytes": TEMP_SPACE},
    )
    seen: list[float | None] = []

    async def watch() -> None:
        while True:
            seen.append(temp_bytes(metrics))
            await asyncio.sleep(0.002)

    watching = asyncio.create_task(watch())
    clients = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", sidecar.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        writer.write(
            f"GET /download/{DOWNLOAD_SIZE} HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n".encode()
        )
        clients.append((reader, writer))
    await asyncio.sleep(1.0)
    try:
        answers = await asyncio.gather(*(asyncio.wait_for(reader.read(), 60) for reader, _ in clients))
    finally:
        watching.cancel()
        for _, writer in clients:
            writer.close()

    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body == b"d" * DOWNLOAD_SIZE
    assert 0 < max(value or 0 for value in seen) <= TEMP_SPACE
    assert temp_refused(metrics, "response") == 2
    assert temp_bytes(metrics) == 0


async def sidecar_holding_temp_space(
    shop: RecordingUpstream, make_sidecar: SidecarFactory, metrics: Metrics
) -> tuple[BaseTestServer, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A sidecar with 1 MiB of temp space, 1,000,000 bytes of it held by a chunked upload to /first
    still coming (its connection is returned: writing the last chunk finishes it)."""
    document = sidecar_config(shop.url, DEAD_API, hosts=["g.test"])
    document["buffering"] = {"body_memory_bytes": 1024, "max_temp_bytes": TEMP_SPACE}
    sidecar = await make_sidecar(document, metrics=metrics)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(
        b"POST /first HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"f4240\r\n"
        + b"x" * 1_000_000
        + b"\r\n"
    )
    deadline = time.monotonic() + 5
    while temp_bytes(metrics) != 1_000_000:
        assert time.monotonic() < deadline, "the first upload never reached its temp file"
        await asyncio.sleep(0.02)
    return sidecar, (reader, writer)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 60000\r\n\r\n" + b"y" * 60000,
        b"Transfer-Encoding: chunked\r\n\r\n" + b"ea60\r\n" + b"y" * 60000 + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_past_the_free_temp_space_is_a_503_and_never_reaches_the_shop(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory, framing: bytes
) -> None:
    """1,000,000 of 1 MiB held by an upload still coming: a 60,000-byte body is a 503 with Retry-After, not forwarded."""
    metrics = Metrics()
    sidecar, (reader, writer) = await sidecar_holding_temp_space(recording_upstream, make_sidecar, metrics)
    answer = await exchange(sidecar, b"POST /second HTTP/1.1\r\nHost: g.test\r\n" + framing)
    writer.write(b"0\r\n\r\n")
    first = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    head = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Retry-After: 10" in head
    assert temp_refused(metrics, "request") == 1
    assert status_line(first) == b"HTTP/1.1 200 OK"
    assert [request.target for request in recording_upstream.requests] == [b"/first"]


async def test_a_body_announced_past_the_free_temp_space_is_a_503_before_100_continue(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory
) -> None:
    """Expect: 100-continue for 60,000 bytes with 48,576 free: 503 with Retry-After at once, never asked for."""
    metrics = Metrics()
    sidecar, (_, writer) = await sidecar_holding_temp_space(recording_upstream, make_sidecar, metrics)
    head = b"POST /second HTTP/1.1\r\nHost: g.test\r\nContent-Length: 60000\r\nExpect: 100-continue\r\n\r\n"
    answer = await exchange(sidecar, head)
    writer.close()

    assert status_line(answer) == b"HTTP/1.1 503 Service Unavailable"
    assert b"\r\nRetry-After: 10\r\n" in answer
    assert b"100 Continue" not in answer
    assert recording_upstream.raw == b""
