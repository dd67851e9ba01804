"""The smuggling findings against a real server: gunicorn (sync and gthread workers, CGI-style header map).

The recording shop of test_smuggling.py shows the bytes; this shows what a real server executes
from them, and with which identity header its application reads.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer

from tests.fixtures.gunicorn import running_gunicorn
from tests.fixtures.shop import SidecarFactory, sidecar_config
from tests.integration.test_smuggling import DEAD_API, SMUGGLED, exchange, status_line

pytest.importorskip("gunicorn")


@dataclass
class Gunicorn:
    url: str
    record: Path

    def executed(self) -> list[dict[str, Any]]:
        """Every request the application ran, in order."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture(params=["sync", "gthread"])
async def gunicorn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gunicorn]:
    """gunicorn on a free loopback port, reading ``_`` headers as ``-`` ones (``--header-map dangerous``)."""
    record = tmp_path / "executed.jsonl"
    options = ("--worker-class", request.param, "--workers", "1", "--header-map", "dangerous")
    async with running_gunicorn(record, *options) as url:
        yield Gunicorn(url, record)


async def sidecar_for(gunicorn: Gunicorn, make_sidecar: SidecarFactory) -> BaseTestServer:
    return await make_sidecar(
        sidecar_config(
            gunicorn.url,
            DEAD_API,
            hosts=["g.test"],
            user={"header": "X-Shop-User"},
            trusted_networks=["10.0.0.0/8"],
        )
    )


async def test_gunicorn_executes_one_request_for_a_gzip_upload(
    gunicorn: Gunicorn, make_sidecar: SidecarFactory
) -> None:
    """The probe's HIGH finding: gunicorn executed a second request as ``victim-42``; now it runs the upload alone, body as sent."""
    sidecar = await sidecar_for(gunicorn, make_sidecar)
    body = gzip.compress(b"A" * 132 + SMUGGLED)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await exchange(sidecar, head + body)
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [executed] = gunicorn.executed()
    assert executed["path"] == "/upload"
    assert executed["shop_user"] is None
    assert executed["content_encoding"] == "gzip"
    assert executed["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_gunicorn_never_reads_an_underscored_identity_or_forwarded_header(
    gunicorn: Gunicorn, make_sidecar: SidecarFactory
) -> None:
    """``X_Shop_User`` and ``X_Forwarded_For`` would be HTTP_X_SHOP_USER and HTTP_X_FORWARDED_FOR to the app: none arrives."""
    sidecar = await sidecar_for(gunicorn, make_sidecar)
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\nX_Shop_User: victim-42\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [executed] = gunicorn.executed()
    assert executed["shop_user"] is None
    assert executed["forwarded_for"] == "127.0.0.1"
    assert executed["host"] == "g.test"
