"""The access log: today's JSON line, formatted directly; batches written within the flush
interval without blocking the event loop, and dropped (counted, warned about once) while the
reader stalls."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from proxy.access_log import AccessLineFormatter, AccessLog, LogWriter, milliseconds_text
from proxy.log import JsonFormatter, RequestContext, request_context
from proxy.metrics import Metrics, PlainCounter
from tests.fixtures.emulator import ManualClock

# Any text, lone surrogates and control characters included (a decoded path can hold them).
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=60)


def todays_line(
    now: float,
    request_id: str,
    storefront: str | None,
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    peer: str | None,
) -> str:
    """The line the logging path wrote before: a proxy.access record through JsonFormatter."""
    record = logging.LogRecord("proxy.access", logging.INFO, __file__, 1, "request", (), None)
    record.created = now
    record.msecs = int((now - int(now)) * 1000) + 0.0
    record.__dict__.update(method=method, path=path, status=status, duration_ms=duration_ms, peer=peer)
    token = request_context.set(RequestContext(request_id, storefront))
    try:
        return JsonFormatter().format(record) + "\n"
    finally:
        request_context.reset(token)


@given(
    now=st.floats(min_value=0, max_value=4e9),
    request_id=st.text(st.characters(max_codepoint=127), min_size=1, max_size=128),
    storefront=st.none() | ANY_TEXT,
    method=ANY_TEXT,
    path=ANY_TEXT,
    status=st.integers(100, 599),
    duration_s=st.floats(min_value=0, max_value=1e3),
    peer=st.none() | ANY_TEXT,
)
@example(1_800_000_000.9996, 'a"\\\n\x00', "main", "GET", '/"</script>\u2028\udc80', 200, 0.001, "::1")
def test_the_line_is_the_one_the_logging_path_wrote(
    now: float,
    request_id: str,
    storefront: str | None,
    method: str,
    path: str,
    status: int,
    duration_s: float,
    peer: str | None,
) -> None:
    """For any values, the direct line is character for character JsonFormatter's, and one JSON object.

    JsonFormatter was given the duration in milliseconds rounded half up to the hundredth.
    """
    line = AccessLineFormatter().line(now, request_id, storefront, method, path, status, duration_s, peer)
    duration_ms = math.floor(duration_s * 100_000.0 + 0.5) / 100
    assert line == todays_line(now, request_id, storefront, method, path, status, duration_ms, peer)
    decoded = json.loads(line.encode("utf-8", "backslashreplace"))
    assert (decoded["path"], decoded["peer"], decoded.get("storefront")) == (path, peer, storefront)


@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["GET", "HEAD", "POST", "PROPFIND"]) | ANY_TEXT, st.none() | ANY_TEXT),
        max_size=8,
    )
)
@example([("GET", "10.0.0.1"), ("GET", "10.0.0.1"), ("GET", None), ("HEAD", "10.0.0.2"), ("GET", '"')])
def test_lines_in_a_row_are_each_the_one_the_logging_path_wrote(
    requests: list[tuple[str, str | None]],
) -> None:
    """One formatter's lines, peers and methods repeated or not, are each JsonFormatter's."""
    formatter = AccessLineFormatter()
    for method, peer in requests:
        line = formatter.line(1_800_000_000.5, "req-1", "main", method, "/p", 200, 0.001, peer)
        assert line == todays_line(1_800_000_000.5, "req-1", "main", method, "/p", 200, 1.0, peer)


def test_the_fields_in_order() -> None:
    """A routed request's line: time, level, logger, message, request id, storefront, then the request."""
    line = AccessLineFormatter().line(
        1_800_000_000.25, "req-1", "main", "GET", "/plain", 200, 0.0015, "127.0.0.1"
    )
    assert line == (
        '{"time": "2027-01-15T08:00:00.250Z", "level": "info", "logger": "proxy.access", "message": "request",'
        ' "request_id": "req-1", "storefront": "main", "method": "GET", "path": "/plain", "status": 200,'
        ' "duration_ms": 1.5, "peer": "127.0.0.1"}\n'
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0"),
        (0.000004, "0.0"),
        (0.000005001, "0.01"),
        (0.00007, "0.07"),
        (0.0015, "1.5"),
        (0.0125, "12.5"),
        (0.123456, "123.46"),
        (1.0, "1000.0"),
        (3600.999999, "3601000.0"),
        (-0.001, "0.0"),
    ],
)
def test_a_duration_is_written_in_milliseconds_to_the_hundredth(seconds: float, text: str) -> None:
    """Seconds in, milliseconds out, two places at most, one at least, as JSON writes the float."""
    assert milliseconds_text(seconds) == text


@given(st.floats(min_value=0, max_value=1e5))
def test_a_duration_reads_as_the_rounded_float_did(seconds: float) -> None:
    """Off a tie, the text is what repr(round(ms, 2)) gave, and JSON reads it as that float."""
    scaled = seconds * 100_000.0
    assume(abs(scaled - math.floor(scaled) - 0.5) > 1e-6)
    text = milliseconds_text(seconds)
    assert text == repr(round(seconds * 1000, 2))
    assert json.loads(text) == round(seconds * 1000, 2)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """(read end, write end) of a pipe; the read end non-blocking, so a test can see it empty."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        yield read_end, write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def read_available(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def read_until(fd: int, lines: int, within_s: float) -> bytes:
    deadline = time.monotonic() + within_s
    data = b""
    while data.count(b"\n") < lines and time.monotonic() < deadline:
        data += read_available(fd)
        await asyncio.sleep(0.01)
    return data


def one(log: AccessLog, number: int, path: str = "/p") -> None:
    log.record(f"r-{number}", "main", "GET", path, 200, 0.0005, "127.0.0.1")


async def test_an_idle_batch_leaves_within_the_flush_interval(pipe: tuple[int, int]) -> None:
    """Three lines, then nothing: none is written at once, all three within the interval (0.3 s)."""
    read_end, write_end = pipe
    log = AccessLog(LogWriter(write_end), PlainCounter("d", "d"), target="pipe", flush_interval_s=0.3)
    started = time.monotonic()
    for number in range(3):
        one(log, number)
    assert read_available(read_end) == b""
    data = await read_until(read_end, 3, within_s=2)
    assert 0.25 < time.monotonic() - started < 0.9  # the interval, and a busy machine's delay
    assert [json.loads(line)["request_id"] for line in data.splitlines()] == ["r-0", "r-1", "r-2"]
    await log.aclose()


async def test_a_full_buffer_leaves_at_once(pipe: tuple[int, int]) -> None:
    """Past flush_bytes the batch is written without waiting for the (here one-minute) interval."""
    read_end, write_end = pipe
    log = AccessLog(
        LogWriter(write_end), PlainCounter("d", "d"), target="pipe", flush_bytes=1000, flush_interval_s=60
    )
    for number in range(10):  # about 200 characters each
        one(log, number)
    data = await read_until(read_end, 5, within_s=2)
    assert data.count(b"\n") >= 5
    await log.aclose()


async def test_close_writes_every_buffered_line(pipe: tuple[int, int]) -> None:
    """Lines still in the buffer at shutdown are written by aclose, none lost, in order."""
    read_end, write_end = pipe
    log = AccessLog(LogWriter(write_end), PlainCounter("d", "d"), target="pipe", flush_interval_s=60)
    for number in range(100):
        one(log, number)
    await log.aclose()
    lines = read_available(read_end).splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r-{n}" for n in range(100)]


async def test_a_stalled_reader_never_blocks_record_and_drops_are_counted_then_warned_once(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads the pipe: record stays fast, lines past the 64 KB pipe and 64 KB queue are
    counted as dropped; once the reader drains it, one WARNING says how many, and written +
    dropped = recorded."""
    read_end, write_end = pipe
    metrics = Metrics()
    clock = ManualClock()
    log = AccessLog(
        LogWriter(write_end, max_pending=64 * 1024),
        metrics.access_log_dropped,
        target="stderr",
        flush_bytes=8 * 1024,
        monotonic=clock,
    )
    path = "/" + "x" * 1000
    slowest = 0.0
    for number in range(2000):  # about 2.2 MB
        started = time.perf_counter()
        one(log, number, path)
        slowest = max(slowest, time.perf_counter() - started)
        if number % 100 == 0:
            await asyncio.sleep(0)  # let the writer thread run
    dropped = metrics.access_log_dropped.total()
    assert slowest < 0.05
    assert dropped > 0
    assert [r for r in caplog.records if r.name == "proxy.access_log"] == []  # the pipe is still full

    written = 0
    deadline = time.monotonic() + 10
    while not log._writer.idle() and time.monotonic() < deadline:
        written += read_available(read_end).count(b"\n")
        await asyncio.sleep(0.01)
    one(log, 2000, path)
    log.flush()
    [warning] = [r for r in caplog.records if r.name == "proxy.access_log"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == f"access log: dropped {int(dropped)} lines (the reader is not keeping up)"
    await log.aclose()
    written += read_available(read_end).count(b"\n")
    assert written + dropped == 2001


async def test_a_closed_reader_counts_the_lines_as_dropped() -> None:
    """The pipe's reader is gone (EPIPE): the batch is counted as dropped, nothing raises."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    metrics = Metrics()
    log = AccessLog(LogWriter(write_end, owns_fd=True), metrics.access_log_dropped, target="pipe")
    for number in range(5):
        one(log, number)
    await log.aclose()
    assert metrics.access_log_dropped.total() == 5


async def test_the_pipe_stays_blocking_for_everyone_else(pipe: tuple[int, int]) -> None:
    """The writer writes through a non-blocking descriptor of its own: the one it was given (stderr,
    shared with the logging handler and the parent) stays blocking."""
    _, write_end = pipe
    log = AccessLog(LogWriter(write_end), PlainCounter("d", "d"), target="pipe")
    one(log, 1)
    log.flush()
    assert os.get_blocking(write_end) is True
    await log.aclose()


async def test_a_pipe_that_cannot_be_reopened_is_written_without_blocking_too(pipe: tuple[int, int]) -> None:
    """Where the pipe cannot be reopened non-blocking (another user's, as after a wrapper dropped
    privileges), each write waits for a poll to find room: record stays fast while nobody reads,
    and once someone does, written + dropped = recorded, every line whole."""
    read_end, write_end = pipe
    metrics = Metrics()
    writer = LogWriter(write_end, max_pending=64 * 1024, reopen=False)
    log = AccessLog(writer, metrics.access_log_dropped, target="pipe", flush_bytes=8 * 1024)
    path = "/" + "x" * 1000
    slowest = 0.0
    for number in range(2000):  # about 2.2 MB: 33 times the pipe
        started = time.perf_counter()
        one(log, number, path)
        slowest = max(slowest, time.perf_counter() - started)
        if number % 100 == 0:
            await asyncio.sleep(0)
    dropped = int(metrics.access_log_dropped.total())
    assert slowest < 0.05
    assert dropped > 0
    data = b""
    deadline = time.monotonic() + 10
    while not writer.idle() and time.monotonic() < deadline:
        data += read_available(read_end)
        await asyncio.sleep(0.01)
    await log.aclose()
    data += read_available(read_end)
    assert [json.loads(line)["path"] for line in data.splitlines()] == [path] * (2000 - dropped)


async def test_the_drop_warning_goes_out_once_the_reader_is_back_without_another_request(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Lines were dropped while nobody read; the reader drains the pipe and no request follows:
    the WARNING still goes out, within about the flush interval (0.2 s here)."""
    read_end, write_end = pipe
    metrics = Metrics()
    writer = LogWriter(write_end, max_pending=16 * 1024)
    log = AccessLog(
        writer, metrics.access_log_dropped, target="stderr", flush_bytes=4 * 1024, flush_interval_s=0.2
    )
    for number in range(400):  # about 440 KB: past the pipe and the queue
        one(log, number, "/" + "x" * 1000)
    assert metrics.access_log_dropped.total() > 0
    await asyncio.sleep(0.5)  # the last batch's flush came and went while nobody read
    assert [r for r in caplog.records if r.name == "proxy.access_log"] == []
    deadline = time.monotonic() + 10
    while not writer.idle() and time.monotonic() < deadline:
        read_available(read_end)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    [warning] = [r for r in caplog.records if r.name == "proxy.access_log"]
    assert warning.getMessage() == (
        f"access log: dropped {int(metrics.access_log_dropped.total())} lines (the reader is not keeping up)"
    )
    await log.aclose()


FULL_DISK_PROGRAM = """
import asyncio, os, resource, signal, sys
from proxy.access_log import LogWriter

async def main(path):
    writer = LogWriter(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), owns_fd=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the disk is full after 1,000 bytes
    writer.submit(b"".join(b'{"n": %d, "pad": "%s"}\\n' % (n, b"x" * 380) for n in range(3)), 3)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    writer.submit(b'{"n": 3}\\n{"n": 4}\\n', 2)
    print(writer.take_failures()[0])
    await writer.aclose()

asyncio.run(main(sys.argv[1]))
"""


def test_a_disk_that_fills_mid_batch_never_joins_two_lines(tmp_path: Path) -> None:
    """The file's size limit cuts a batch inside its third line: that line is dropped and counted,
    and the next batch begins on a line of its own, every later line whole."""
    path = tmp_path / "access.log"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_PROGRAM, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # the torn third line
    lines = path.read_bytes().split(b"\n")
    assert [json.loads(line)["n"] for line in lines[:2]] == [0, 1]
    assert not lines[2].endswith(b"}")  # what the full disk took of the third
    assert [json.loads(line)["n"] for line in lines[3:-1]] == [3, 4]
    assert lines[-1] == b""


async def test_a_line_recorded_after_close_is_written_at_once(pipe: tuple[int, int]) -> None:
    """A request that ends after the log closed (cut at shutdown) still has its line: on stderr,
    which the logging handler writes on with, it goes at once."""
    read_end, write_end = pipe
    log = AccessLog(LogWriter(write_end), PlainCounter("d", "d"), target="stderr", flush_interval_s=60)
    await log.aclose()
    one(log, 1)
    assert [json.loads(line)["request_id"] for line in read_available(read_end).splitlines()] == ["r-1"]
