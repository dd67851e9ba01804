"""Logging: aiohttp's refusals of malformed requests become one short WARNING line each; a warning
that repeats is written once per interval per cause, with the count of the ones left out; and a
stderr nobody reads never holds the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from proxy.access_log import stderr_writer
from proxy.log import (
    REPEATED_WARNING_INTERVAL_S,
    JsonFormatter,
    MalformedRequestFilter,
    RepeatedWarningFilter,
    StderrHandler,
    setup_logging,
)
from tests.fixtures.emulator import ManualClock


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


def warning(
    name: str, msg: str, *args: object, level: int = logging.WARNING, **extra: object
) -> logging.LogRecord:
    built = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    built.__dict__.update(extra)
    return built


def test_a_repeated_warning_is_written_once_per_interval_with_the_count_left_out() -> None:
    """30 warnings of one cause within a minute: the first is written; the next one after it says 29 more."""
    clock = ManualClock()
    repeats = RepeatedWarningFilter(clock=clock)
    written = []
    for number in range(30):
        written.append(
            repeats.filter(warning("proxy.handler", "shop request failed: %s", f"refused #{number}"))
        )
        clock.advance(1)
    assert written == [True] + [False] * 29
    clock.advance(REPEATED_WARNING_INTERVAL_S - 30)
    later = warning("proxy.handler", "shop request failed: %s", "refused again")
    assert repeats.filter(later) is True
    assert (later.getMessage(), later.suppressed) == (
        "shop request failed: refused again (29 more like this in the 60 s before)",
        29,
    )


def test_causes_are_limited_separately() -> None:
    """Another message template, or the same one of another logger, is another cause: written at once."""
    repeats = RepeatedWarningFilter(clock=ManualClock())
    assert repeats.filter(warning("proxy.handler", "shop request failed: %s", "a")) is True
    assert repeats.filter(warning("proxy.handler", "no customer token: %s", "b")) is True
    assert repeats.filter(warning("proxy.identity", "shop request failed: %s", "c")) is True
    assert repeats.filter(warning("proxy.handler", "shop request failed: %s", "d")) is False


@pytest.mark.parametrize(
    "built",
    [
        warning("proxy.handler", "boom", level=logging.ERROR),
        warning("proxy.handler", "hello", level=logging.INFO),
        warning("proxy.storefront_api", "circuit open", _every_time=True),
    ],
    ids=["error", "info", "marked every time"],
)
def test_errors_other_levels_and_marked_warnings_are_never_held_back(built: logging.LogRecord) -> None:
    """ERROR and INFO records, and warnings marked _every_time, pass however often they come."""
    repeats = RepeatedWarningFilter(clock=ManualClock())
    assert [repeats.filter(built) for _ in range(3)] == [True, True, True]


def test_setup_logging_limits_repeated_warnings(json_log: io.StringIO) -> None:
    """The stderr handler of setup_logging writes one line for three identical warnings in a row."""
    logger = logging.getLogger("proxy.handler")
    for _ in range(3):
        logger.warning("shop request failed: %s", "connection refused")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["shop request failed: connection refused"]


StderrPipe = tuple[logging.Logger, StderrHandler, int, int]


@pytest.fixture
def stderr_pipe() -> Iterator[StderrPipe]:
    """A logger whose StderrHandler writes to a pipe (as to stderr): the logger, the handler, the
    pipe's read end (non-blocking) and its write end."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = open(write_end, "w", closefd=False)  # noqa: SIM115 (closed below)
    handler = StderrHandler()
    handler.setStream(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.stderr_pipe.{write_end}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, handler, read_end, write_end
    finally:
        logger.removeHandler(handler)
        stream.close()
        os.close(read_end)
        os.close(write_end)


def read_available(fd: int) -> bytes:
    with contextlib.suppress(BlockingIOError):
        return os.read(fd, 1 << 16)
    return b""


async def test_the_stderr_handler_never_waits_for_a_stalled_reader_and_says_what_it_dropped(
    stderr_pipe: StderrPipe,
) -> None:
    """stderr is a pipe nobody reads: 2,000 warnings of 1 KB each return at once, those past the
    pipe and the writer's 1 MiB queue are dropped; once the reader is back, the next warning
    goes out behind a line saying how many were dropped, and written + dropped = logged."""
    logger, handler, read_end, write_end = stderr_pipe
    slowest = 0.0
    for number in range(2000):
        started = time.perf_counter()
        logger.warning("%d %s", number, "x" * 1000)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05
    dropped = handler.dropped
    assert dropped > 0
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data += read_available(read_end)
        await asyncio.sleep(0.01)
        if stderr_writer(write_end).idle():
            break
    logger.warning("the reader is back")
    await asyncio.sleep(0.05)
    data += read_available(read_end)
    entries = [json.loads(line) for line in data.splitlines()]
    numbered = [entry for entry in entries if entry["message"].endswith("x" * 1000)]
    assert len(numbered) + dropped == 2000
    assert [entry["message"] for entry in entries[-2:]] == [
        f"dropped {dropped} log lines: stderr was not read",
        "the reader is back",
    ]
    assert handler.dropped == 0


async def test_records_from_another_thread_go_through_the_loop_whole_and_once(
    stderr_pipe: StderrPipe,
) -> None:
    """A thread logs 2,000 records while the loop writes access batches to the same stderr pipe
    (a reader keeping up): every line of both arrives once and whole."""
    logger, _, read_end, write_end = stderr_pipe
    writer = stderr_writer(write_end)

    def log_from_a_thread() -> None:
        for number in range(2000):
            logger.warning("thread %d", number)

    # The loop writes first (the sidecar's own lines on its loop come before any thread's).
    assert writer.submit(b'{"message": "loop start"}\n', 1)
    thread = asyncio.get_running_loop().run_in_executor(None, log_from_a_thread)
    data = b""
    for number in range(2000):
        assert writer.submit(b'{"message": "loop %d"}\n' % number, 1)
        if number % 50 == 0:
            await asyncio.sleep(0)
        data += read_available(read_end)
    await thread
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (writer.idle() and data.count(b"\n") >= 4001):
        await asyncio.sleep(0.01)
        data += read_available(read_end)
    messages = [json.loads(line)["message"] for line in data.splitlines()]
    expected = ["loop start"] + [f"loop {n}" for n in range(2000)] + [f"thread {n}" for n in range(2000)]
    assert sorted(messages) == sorted(expected)
