"""Visitors' latency while 1,000 slowloris connections hold a proxy (a `make bench` row; issue #22).

Each slowloris connection sends a request line and a header, then one more header line every
few seconds, never the blank line that ends the head. Meanwhile a few visitors fetch a page on
a new connection each, one after another, for the given time; each visit that does not answer
200 within ``VISIT_TIMEOUT_S`` counts as not served. Both proxies are measured the same way, by
``bench/run.py`` (nginx first, then cc-sidecar), or on their own:

    python bench/slowloris.py PORT [PATH [SECONDS]]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import statistics
import sys
import time
from typing import Any

SLOWLORIS_CONNECTIONS = 1000
VISITORS = 5
VISIT_TIMEOUT_S = 5.0
TRICKLE_EVERY_S = 2.0


def _raise_open_files_limit() -> None:
    """This process holds 1,000 sockets and its visitors' besides: the soft limit goes to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _visit(port: int, request: bytes) -> float | None:
    """One visitor's page on a new connection: seconds to the whole answer, None if not a 200 in time."""
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(VISIT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await reader.read()
    except (TimeoutError, OSError):
        return None
    finally:
        if writer is not None:
            writer.close()
    if not answer.startswith(b"HTTP/1.1 200 "):
        return None
    return time.perf_counter() - started


async def legit_under_slowloris(
    port: int, path: str = "/", *, seconds: float = 5.0, connections: int = SLOWLORIS_CONNECTIONS
) -> dict[str, Any]:
    """Hold ``connections`` slowloris connections on 127.0.0.1:``port``; visitors' p50/p99 meanwhile."""
    _raise_open_files_limit()
    held: list[asyncio.StreamWriter] = []
    for _ in range(connections):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-0: 1\r\n")
            held.append(writer)

    async def trickle() -> None:
        for number in range(1, 1_000_000):
            await asyncio.sleep(TRICKLE_EVERY_S)
            for writer in held:
                if not writer.is_closing():
                    writer.write(b"X-Slow-%d: 1\r\n" % number)

    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def visitor() -> None:
        nonlocal failed
        while time.monotonic() < deadline:
            took = await _visit(port, request)
            if took is None:
                failed += 1
            else:
                latencies.append(took)

    trickling = asyncio.create_task(trickle())
    try:
        await asyncio.gather(*(visitor() for _ in range(VISITORS)))
    finally:
        trickling.cancel()
        still_open = sum(not writer.is_closing() for writer in held)
        for writer in held:
            writer.close()
    served = len(latencies)
    ordered = sorted(latencies) or [float("nan")]
    return {
        "slowloris_opened": len(held),
        "slowloris_still_open": still_open,
        "visits": served + failed,
        "served": served,
        "served_fraction": round(served / max(1, served + failed), 4),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


if __name__ == "__main__":
    port, path, seconds = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "/", sys.argv[3:4]
    found = asyncio.run(legit_under_slowloris(port, path, seconds=float(seconds[0]) if seconds else 5.0))
    print(json.dumps(found, indent=2))
