"""Log lines written while serving a request carry that request's id and storefront; the access
log writes one line per request, within its flush interval, and none when it is off."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer

from proxy.access_log import FLUSH_INTERVAL_S
from proxy.log import JsonFormatter
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config


@pytest.fixture
def handler_log() -> Iterator[io.StringIO]:
    """Formatted lines of the proxy.handler logger, formatted as they are emitted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("proxy.handler")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def sidecar(shop: Shop, make_sidecar: SidecarFactory) -> BaseTestServer:
    """A sidecar that believes X-Shop-User from loopback; its API is unreachable (never asked here)."""
    return await make_sidecar(
        sidecar_config(
            shop.url, "http://127.0.0.1:9", trusted_networks=["127.0.0.1/32"], user={"header": "X-Shop-User"}
        )
    )


async def test_a_warning_during_a_request_names_its_request_and_storefront(
    sidecar: BaseTestServer, handler_log: io.StringIO
) -> None:
    """An invalid identity header is logged with the client's X-Request-Id and the storefront."""
    headers = {"X-Shop-User": "has space", "X-Request-Id": "req-123"}
    async with (
        aiohttp.ClientSession() as client,
        client.get(sidecar.make_url("/plain"), headers=headers) as response,
    ):
        assert response.status == 200
    [line] = handler_log.getvalue().splitlines()
    entry = json.loads(line)
    assert (
        entry["message"]
        == "ignored an invalid customer id: customer id has characters outside printable ASCII"
    )
    assert (entry["level"], entry["request_id"], entry["storefront"], entry["source"]) == (
        "warning",
        "req-123",
        "main",
        "header",
    )


async def test_an_invalid_id_is_logged_on_every_request_that_brings_it(
    sidecar: BaseTestServer, handler_log: io.StringIO
) -> None:
    """Valid ids are remembered between requests; an invalid one is judged, and logged, each time."""
    async with aiohttp.ClientSession() as client:
        for request_id in ("first", "second"):
            headers = {"X-Shop-User": "anon-taken", "X-Request-Id": request_id}
            async with client.get(sidecar.make_url("/plain"), headers=headers) as response:
                assert response.status == 200
    entries = [json.loads(line) for line in handler_log.getvalue().splitlines()]
    assert [(entry["request_id"], entry["message"]) for entry in entries] == [
        (request_id, "ignored an invalid customer id: customer id starts with the reserved prefix 'anon-'")
        for request_id in ("first", "second")
    ]


async def test_every_request_gets_its_line_within_the_flush_interval_while_idle(
    shop: Shop, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    """Three requests, then none: their three lines, in today's fields and order, reach the file
    within FLUSH_INTERVAL_S, while the sidecar keeps running."""
    access_log = tmp_path / "access.log"
    document = sidecar_config(shop.url, "http://127.0.0.1:9")
    document.update(access_log=True, access_log_path=str(access_log))
    sidecar = await make_sidecar(document)
    async with aiohttp.ClientSession() as client:
        for number, path in enumerate(("/plain", "/notfound/x", "/plain?q=1")):
            headers = {"X-Request-Id": f"idle-{number}"}
            async with client.get(sidecar.make_url(path), headers=headers) as response:
                await response.read()
    answered = time.monotonic()
    while access_log.read_text().count("\n") < 3:
        assert time.monotonic() - answered < FLUSH_INTERVAL_S + 0.5, "lines not written within the interval"
        await asyncio.sleep(0.02)
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    fields = ["time", "level", "logger", "message", "request_id", "storefront", "method", "path"]
    assert [list(entry) for entry in entries] == [[*fields, "status", "duration_ms", "peer"]] * 3
    assert [
        {key: value for key, value in entry.items() if key not in ("time", "duration_ms")}
        for entry in entries
    ] == [
        {
            "level": "info",
            "logger": "proxy.access",
            "message": "request",
            "request_id": f"idle-{number}",
            "storefront": "main",
            "method": "GET",
            "path": path,
            "status": status,
            "peer": "127.0.0.1",
        }
        for number, (path, status) in enumerate((("/plain", 200), ("/notfound/x", 404), ("/plain", 200)))
    ]
    assert all(isinstance(entry["duration_ms"], float) for entry in entries)


async def test_access_log_false_writes_no_line(
    shop: Shop, make_sidecar: SidecarFactory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """access_log: false: past the flush interval, no file and no access line on stderr."""
    access_log = tmp_path / "access.log"
    document = sidecar_config(shop.url, "http://127.0.0.1:9")
    document.update(access_log=False, access_log_path=str(access_log))
    sidecar = await make_sidecar(document)
    async with aiohttp.ClientSession() as client, client.get(sidecar.make_url("/plain")) as response:
        assert response.status == 200
    await asyncio.sleep(FLUSH_INTERVAL_S + 0.2)
    assert not access_log.exists()
    assert "proxy.access" not in capfd.readouterr().err
