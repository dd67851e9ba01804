"""The access log of the real process: a stderr nobody reads never stalls requests (nor do the
warnings written meanwhile) nor shutdown, SIGTERM under load loses no line, and a file it cannot
open stops start-up by name."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp

from proxy.access_log import CLOSE_TIMEOUT_S, MAX_PENDING_BYTES, OFF_LOOP_WAIT_S
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.process import free_port, start_sidecar, wait_ready
from tests.fixtures.shop import Shop, sidecar_config

# A 3.5 KB path makes each line about 3.8 KB: the pipe (64 KB) and the writer's queue fill quickly,
# and each line still goes in one write (up to PIPE_BUF), which no warning can split.
LONG_PATH = "/" + "x" * 3500
STALLED_REQUESTS = 600
# No request may take this long while the log's reader stalls (each takes milliseconds; the
# margin is for a busy machine). The old logging path blocked the loop on the full pipe for good.
STALL_BOUND_S = 1.0


def sidecar_document(
    shop: Shop, port: int, admin: int, api_url: str = "http://127.0.0.1:9"
) -> dict[str, object]:
    document = sidecar_config(shop.url, api_url, upstream_timeout_s=10)
    document.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", access_log=True)
    return document


async def start_writing_stderr_to_a_file(
    tmp_path: Path, document: dict[str, object]
) -> tuple[asyncio.subprocess.Process, Path]:
    """The sidecar process with its stderr in a file, and the file."""
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = await start_sidecar(tmp_path, document, stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    return process, stderr_path


def dropped_total(metrics: str) -> int:
    [value] = re.findall(r"^cc_sidecar_access_log_dropped_total (\S+)$", metrics, re.MULTILINE)
    return int(float(value))


def read_to_end(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_stderr_nobody_reads_never_stalls_requests_and_drops_are_counted(
    tmp_path: Path, shop: Shop, emulator: RunningEmulator
) -> None:
    """stderr is a pipe nobody reads: 600 requests with 3.5 KB paths each answer within 1 s, the
    lines past the pipe and the 1 MiB queue are counted as dropped, and once someone reads,
    written + dropped = requests, one WARNING says so, and SIGTERM still exits 0.

    The API is up (the emulator): a warning written while nobody reads would block the loop,
    as every write to a full pipe does; that is logging's, and not what is measured here.
    """
    port, admin = free_port(), free_port()
    read_end, write_end = os.pipe()
    document = sidecar_document(shop, port, admin, emulator.url)
    process = await start_sidecar(tmp_path, document, stdout=asyncio.subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    reading: asyncio.Future[bytes] | None = None
    try:
        timeout = aiohttp.ClientTimeout(total=STALL_BOUND_S * 5)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")

            async def timed() -> float:
                started = time.monotonic()
                async with client.get(f"http://127.0.0.1:{port}{LONG_PATH}") as response:
                    assert response.status == 200
                    await response.read()
                return time.monotonic() - started

            durations: list[float] = []
            for _ in range(STALLED_REQUESTS // 20):
                durations += await asyncio.gather(*(timed() for _ in range(20)))
            await asyncio.sleep(1.2)  # the last batch's flush interval
            async with client.get(f"http://127.0.0.1:{admin}/metrics") as response:
                dropped = dropped_total(await response.text())
        assert max(durations) < STALL_BOUND_S
        # At most the pipe and the queue held lines: the rest were dropped.
        assert dropped >= STALLED_REQUESTS - (MAX_PENDING_BYTES + (1 << 16)) // len(LONG_PATH)

        reading = asyncio.get_running_loop().run_in_executor(None, read_to_end, read_end)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
        lines = (await asyncio.wait_for(reading, timeout=15)).decode().splitlines()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if reading is None:
            os.close(read_end)
    os.close(read_end)
    entries = [json.loads(line) for line in lines]
    written = sum(1 for entry in entries if entry["logger"] == "proxy.access")
    assert written + dropped == STALLED_REQUESTS
    [warning] = [entry for entry in entries if entry["logger"] == "proxy.access_log"]
    assert (warning["level"], warning["dropped"]) == ("warning", dropped)


async def test_sigterm_under_load_loses_no_access_line(tmp_path: Path, shop: Shop) -> None:
    """16 clients request without pause; SIGTERM mid-load: every answered request has its line
    (most still in the buffer when the signal came), and the process exits 0."""
    port, admin = free_port(), free_port()
    process, stderr_path = await start_writing_stderr_to_a_file(tmp_path, sidecar_document(shop, port, admin))
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            answered = 0
            stop = asyncio.Event()

            async def keep_requesting() -> None:
                nonlocal answered
                while not stop.is_set():
                    try:
                        async with client.get(f"http://127.0.0.1:{port}/plain") as response:
                            await response.read()
                            assert response.status == 200
                            answered += 1
                    except aiohttp.ClientError:
                        return  # the listener has closed

            clients = [asyncio.create_task(keep_requesting()) for _ in range(16)]
            await asyncio.sleep(1.5)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    entries = [json.loads(line) for line in stderr_path.read_text().splitlines()]
    access = [entry for entry in entries if entry["logger"] == "proxy.access"]
    assert answered > 100
    assert (len(access), {entry["status"] for entry in access}) == (answered, {200})
    assert entries[-1]["message"] == "stopped"  # the access lines come before the last word


async def test_an_access_log_file_that_cannot_be_opened_stops_start_up_naming_the_key(
    tmp_path: Path, shop: Shop
) -> None:
    """access_log_path in a directory that does not exist: exit 2, one error naming access_log_path."""
    missing = tmp_path / "no-such-dir" / "access.log"
    document = sidecar_document(shop, free_port(), free_port())
    document["access_log_path"] = str(missing)
    process = await start_sidecar(tmp_path, document, stdout=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(process.wait(), timeout=15) == 2
    assert process.stderr is not None
    entries = [json.loads(line) for line in (await process.stderr.read()).decode().splitlines()]
    assert [(entry["level"], entry["message"]) for entry in entries] == [
        ("error", f"access_log_path: cannot open {missing}: No such file or directory")
    ]


async def fill_the_pipe(client: aiohttp.ClientSession, port: int, requests: int = 400) -> None:
    """Requests whose 3.8 KB lines fill a pipe nobody reads (64 KB) and the writer's queue (1 MiB)."""
    for _ in range(requests // 20):
        await asyncio.gather(*(answered(client, f"http://127.0.0.1:{port}{LONG_PATH}") for _ in range(20)))
    await asyncio.sleep(1.2)  # the last batch's flush interval


async def answered(client: aiohttp.ClientSession, url: str) -> float:
    """Seconds until ``url`` answered 200, read to its end."""
    started = time.monotonic()
    async with client.get(url) as response:
        assert response.status == 200
        await response.read()
    return time.monotonic() - started


async def test_a_warning_a_client_causes_while_nobody_reads_stderr_never_stalls_requests(
    tmp_path: Path, shop: Shop
) -> None:
    """stderr's pipe is full of access lines and nobody reads it; a client sends a malformed request,
    whose refusal is a WARNING: the requests after it, and /healthz, still answer within 1 s."""
    port, admin = free_port(), free_port()
    read_end, write_end = os.pipe()
    process = await start_sidecar(
        tmp_path, sidecar_document(shop, port, admin), stdout=asyncio.subprocess.DEVNULL, stderr=write_end
    )
    os.close(write_end)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STALL_BOUND_S * 5)) as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            await fill_the_pipe(client, port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /\x01bad HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            assert b" 400 Bad Request" in await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            durations = [await answered(client, f"http://127.0.0.1:{port}/plain") for _ in range(20)]
            durations.append(await answered(client, f"http://127.0.0.1:{admin}/healthz"))
        assert max(durations) < STALL_BOUND_S
    finally:
        process.kill()
        await process.wait()
        os.close(read_end)


async def test_sigterm_while_nobody_reads_stderr_exits_within_its_bounds(tmp_path: Path, shop: Shop) -> None:
    """stderr's pipe is full and nobody reads it: SIGTERM makes the process exit 0 within the
    grace (1 s), the last lines' 5 s and the last words' 1 s, with no reader ever."""
    port, admin = free_port(), free_port()
    read_end, write_end = os.pipe()
    document = sidecar_document(shop, port, admin)
    document["shutdown_grace_s"] = 1
    process = await start_sidecar(tmp_path, document, stdout=asyncio.subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STALL_BOUND_S * 5)) as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            await fill_the_pipe(client, port)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
        assert time.monotonic() - signalled < 1 + CLOSE_TIMEOUT_S + OFF_LOOP_WAIT_S + 2
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(read_end)


async def test_requests_aiohttp_refuses_itself_have_their_access_lines(tmp_path: Path, shop: Shop) -> None:
    """A request line with a control byte (400) and a head over limits.max_head_bytes (431) never
    reach the handler: each still has its line, method and path "-", as nginx logs its 400s."""
    port, admin = free_port(), free_port()
    process, stderr_path = await start_writing_stderr_to_a_file(tmp_path, sidecar_document(shop, port, admin))
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            # Five headers of 8,000 B, each within aiohttp's per-line limit: 40 KB, over 32 KB.
            big = b"".join(b"X-Big-%d: %s\r\n" % (n, b"a" * 8000) for n in range(5))
            heads = (
                b"GET /\x01bad HTTP/1.1\r\nHost: shop.test\r\n",
                b"GET /plain HTTP/1.1\r\nHost: shop.test\r\n" + big,
            )
            for head in heads:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + b"\r\n")
                await asyncio.wait_for(reader.read(), 5)
                writer.close()
            await answered(client, f"http://127.0.0.1:{port}/plain")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    entries = [json.loads(line) for line in stderr_path.read_text().splitlines()]
    access = [
        (entry["method"], entry["path"], entry["status"], entry["peer"])
        for entry in entries
        if entry["logger"] == "proxy.access"
    ]
    assert access == [
        ("-", "-", 400, "127.0.0.1"),
        ("-", "-", 431, "127.0.0.1"),
        ("GET", "/plain", 200, "127.0.0.1"),
    ]
