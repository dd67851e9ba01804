"""Helpers shared by the reliability tests: timed requests, element parsing, free ports."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from yarl import URL

ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
USER_HEADER = "X-Shop-User"
# How much longer than its timeout a request may take on a noisy machine.
SLACK_S = 1.5


@dataclass
class Answer:
    """A response read in full (or as far as the connection carried it)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    elapsed_s: float
    # The connection was cut mid-body (headers had been sent).
    cut: bool = False


def raw_url(server: TestServer, path: str) -> URL:
    """The server's URL with ``path`` exactly as given (percent-encoding and dots kept)."""
    return URL(str(server.make_url("")).rstrip("/") + path, encoded=True)


async def fetch(
    server: TestServer,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    decompress: bool = True,
) -> Answer:
    """One request on a fresh connection, timed; a body cut short is reported, not raised."""
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(auto_decompress=decompress) as client,
        client.request(method, raw_url(server, path), headers=headers, allow_redirects=False) as response,
    ):
        cut = False
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            body, cut = b"", True
        return Answer(response.status, response.headers, body, time.perf_counter() - started, cut)


def elements(body: bytes) -> list[dict[str, Any]]:
    """Every token element in a page, parsed."""
    return [json.loads(found) for found in ELEMENT.findall(body)]


def element_of(body: bytes) -> dict[str, Any]:
    """The one token element of a page."""
    found = elements(body)
    assert len(found) == 1, f"expected exactly one element, found {len(found)}"
    return found[0]


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float = 5.0) -> None:
    """Poll ``check`` until it holds; for real-time waits no clock can be moved for (the breaker)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def serve_on(app: web.Application, port: int) -> web.AppRunner:
    """Serve ``app`` on a given loopback port (to bring a stopped server back where it was)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner
