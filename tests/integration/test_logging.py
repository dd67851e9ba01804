"""Log lines written while serving a request carry that request's id and storefront."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer

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
