"""Clients that leave, dawdle or overreach: the connection half of issue #22, on raw sockets.

Each test is one client misbehaving as an attacker (or an impatient visitor) would, against the
real sidecar between the emulator and a fake shop; what is asserted is what the client saw on
its socket, what the shop received, the metrics and the log (no ERROR: this package's fixture).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from proxy.metrics import Metrics
from tests.fixtures.emulator import RunningEmulator
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
