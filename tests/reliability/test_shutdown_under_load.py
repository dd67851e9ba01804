"""Graceful shutdown of the real process under load: nothing in flight is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp

from tests.fixtures.process import free_port, start_sidecar, wait_ready
from tests.fixtures.shop import Shop, sidecar_config

IN_FLIGHT = 200
SHOP_SECONDS = 1.0


async def test_sigterm_with_200_requests_in_flight_loses_none_and_exits_0(tmp_path: Path, shop: Shop) -> None:
    """200 requests to a 1 s shop page, SIGTERM once the shop has them all: all 200 answer 200, exit 0."""
    port, admin = free_port(), free_port()
    document = sidecar_config(shop.url, "http://127.0.0.1:9", upstream_timeout_s=10)
    document.update(
        listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", shutdown_grace_s=10, access_log=True
    )
    process = await start_sidecar(tmp_path, document, stdout=asyncio.subprocess.DEVNULL)
    assert process.stderr is not None
    # Read stderr as it comes: 200 access-log lines would fill the pipe and stall the process.
    stderr = asyncio.create_task(process.stderr.read())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")

            async def one(number: int) -> tuple[int, str]:
                async with client.get(
                    f"http://127.0.0.1:{port}/slow?s={SHOP_SECONDS}&n={number}"
                ) as response:
                    return response.status, await response.text()

            requests = [asyncio.create_task(one(number)) for number in range(IN_FLIGHT)]
            deadline = time.monotonic() + 10
            while len(shop.state.requests) < IN_FLIGHT:
                assert time.monotonic() < deadline, f"only {len(shop.state.requests)} reached the shop"
                await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answers = await asyncio.gather(*requests)
            drained_s = time.monotonic() - signalled

        assert answers == [(200, "finally")] * IN_FLIGHT
        assert drained_s < SHOP_SECONDS + 1.5
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = (await stderr).decode().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e for e in entries if e.get("level") in ("ERROR", "CRITICAL", "error", "critical")] == []
    assert (
        sum(1 for e in entries if e.get("logger") == "proxy.access" and e.get("status") == 200) == IN_FLIGHT
    )
