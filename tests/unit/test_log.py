"""Logging: aiohttp's refusals of malformed requests become one short WARNING line each."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from proxy.log import MalformedRequestFilter, setup_logging


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """setup_logging's handler, writing to a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging()
    buffer = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_oversized_request_line_is_one_warning_without_traceback(
    aiohttp_server: Any, json_log: io.StringIO
) -> None:
    """A 20 KB request line against a real server logs one JSON WARNING line, no traceback."""
    app = web.Application()
    app.router.add_get("/", ok)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as client, client.get(server.make_url("/" + "a" * 20_000)) as response:
        assert response.status == 400
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    server_lines = [line for line in lines if line["logger"] == "aiohttp.server"]
    reason = "Got more than 8190 bytes when reading: bytearray(b'/" + "a" * 68 + "..."
    assert server_lines == [
        {
            "time": server_lines[0]["time"],
            "level": "warning",
            "logger": "aiohttp.server",
            "message": f"rejected a malformed request: LineTooLong: {reason}",
            "peer": "127.0.0.1",
        }
    ]


def record(name: str, exc: BaseException) -> logging.LogRecord:
    """An ERROR record with ``exc`` as its exc_info, as logger.exception makes it."""
    try:
        raise exc
    except BaseException:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, "Unhandled exception", (), sys.exc_info())


def test_bad_message_record_becomes_a_warning_with_the_first_line_of_its_reason() -> None:
    """A BadHttpMessage record of aiohttp.server: WARNING, class and first line of the reason, no exc_info."""
    built = record("aiohttp.server", BadHttpMessage("Invalid method encountered:\n\n  b'X Y'\n    ^"))
    assert MalformedRequestFilter().filter(built) is True
    assert (built.levelname, built.getMessage(), built.exc_info) == (
        "WARNING",
        "rejected a malformed request: BadHttpMessage: Invalid method encountered:",
        None,
    )


@pytest.mark.parametrize(
    ("name", "exc"),
    [("aiohttp.server", ValueError("a bug")), ("proxy.handler", BadHttpMessage("not aiohttp's"))],
)
def test_other_records_pass_unchanged(name: str, exc: BaseException) -> None:
    """A record of another logger, or of aiohttp.server for another exception, keeps its level and traceback."""
    built = record(name, exc)
    assert MalformedRequestFilter().filter(built) is True
    assert built.exc_info is not None
    assert (built.levelname, built.getMessage(), built.exc_info[1]) == ("ERROR", "Unhandled exception", exc)
