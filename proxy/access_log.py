"""The access log: one JSON line per request, formatted directly and written in batches.

The line is the one ``proxy.log.JsonFormatter`` wrote for a ``proxy.access`` record (same fields,
same order), built here without the logging machinery: no LogRecord, no filters, no handler lock,
no ``json.dumps`` of a dict. Strings go through the json module's C escaper.

Lines gather in a buffer on the event loop and leave in one batch when it passes
``FLUSH_BYTES`` or ``FLUSH_INTERVAL_S`` after its first line, and at shutdown. A writer thread
makes the ``write`` calls, so a slow or stalled reader (a full stderr pipe) never blocks the
event loop. ``O_NONBLOCK`` on stderr was the alternative, and it is worse: the flag belongs to
the open file description that stderr shares with the logging handler and with whoever started
the process, whose writes would then fail with EAGAIN. While the reader stalls, at most
``MAX_PENDING_BYTES`` wait for it; further batches are dropped and counted
(``cc_sidecar_access_log_dropped_total``), as Envoy drops rather than stall its workers. The one
WARNING about it goes out once the reader takes lines again (written while it stalls, it would
block the loop on the full pipe itself), at most once per ``DROP_WARNING_INTERVAL_S``.

Warnings and errors keep going through ``logging``, unbuffered, so access lines can trail them by
up to ``FLUSH_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from json.encoder import encode_basestring

from proxy.metrics import PlainCounter

log = logging.getLogger("proxy.access_log")

# A batch leaves once the buffer holds this much (characters, about bytes)...
FLUSH_BYTES = 64 * 1024
# ... or this long after its first line, whichever comes first (an idle sidecar's lines too).
FLUSH_INTERVAL_S = 1.0
# Batches waiting for a reader that does not read; past this, batches are dropped and counted.
MAX_PENDING_BYTES = 1024 * 1024
# At shutdown, how long the last batches may take to leave before the process exits regardless.
CLOSE_TIMEOUT_S = 5.0
# The warning about dropped lines is written at most this often (the metric counts every one).
DROP_WARNING_INTERVAL_S = 60.0
# Writes to a pipe or socket go in whole lines of at most PIPE_BUF bytes (a write that size is
# never split), each under the lock of the logging handler on the same stream, so a warning can
# never land inside an access line (nor an access line inside a traceback), and a warning waits
# at most one such write. A regular file takes a batch in one write.
_ATOMIC_WRITE_BYTES = select.PIPE_BUF


class AccessLineFormatter:
    """Formats one request's access line; remembers the current second's timestamp."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def timestamp(self, now: float) -> str:
        """As JsonFormatter writes a record's time: UTC, milliseconds, ``Z``."""
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def line(
        self,
        now: float,
        request_id: str,
        storefront: str | None,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        peer: str | None,
    ) -> str:
        """One JSON object and its newline; ``storefront`` is left out when the request had none."""
        routed = "" if storefront is None else f', "storefront": {encode_basestring(storefront)}'
        peer_json = "null" if peer is None else encode_basestring(peer)
        return (
            f'{{"time": "{self.timestamp(now)}", "level": "info", "logger": "proxy.access",'
            f' "message": "request", "request_id": {encode_basestring(request_id)}{routed},'
            f' "method": {encode_basestring(method)}, "path": {encode_basestring(path)},'
            f' "status": {status}, "duration_ms": {duration_ms!r}, "peer": {peer_json}}}\n'
        )


class BatchWriter:
    """Writes batches to a file descriptor from a thread of its own, holding at most ``max_pending``."""

    def __init__(
        self,
        fd: int,
        *,
        max_pending: int = MAX_PENDING_BYTES,
        owns_fd: bool = False,
        stream_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        # Held around each write to a pipe: the lock of whatever else writes to the same stream.
        self._stream_lock: AbstractContextManager[object] = stream_lock or threading.Lock()
        self._max_pending = max_pending
        self._one_write = stat.S_ISREG(os.fstat(fd).st_mode)
        self._condition = threading.Condition()
        self._batches: collections.deque[tuple[bytes, int]] = collections.deque()
        self._pending = 0
        self._failed_lines = 0
        self._last_error = ""
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="access-log-writer", daemon=True)
        self._thread.start()

    def submit(self, data: bytes, lines: int) -> bool:
        """Queue one batch for writing; False (nothing queued) when the reader is that far behind."""
        with self._condition:
            if self._closing or self._pending + len(data) > self._max_pending:
                return False
            self._batches.append((data, lines))
            self._pending += len(data)
            self._condition.notify()
        return True

    def idle(self) -> bool:
        """Nothing waits to be written: the reader has taken every batch."""
        with self._condition:
            return self._pending == 0

    def take_failures(self) -> tuple[int, str]:
        """Lines whose write failed since the last call (a closed pipe, a full disk), and the error."""
        with self._condition:
            failed, error = self._failed_lines, self._last_error
            self._failed_lines = 0
        return failed, error

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Write what is queued (for up to ``timeout_s``) and stop; True when all of it left."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout_s)
        finished = not self._thread.is_alive()
        if finished and self._owns_fd:
            os.close(self._fd)
        return finished

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._batches and not self._closing:
                    self._condition.wait()
                if not self._batches:
                    return
                data, lines = self._batches.popleft()
            try:
                self._write(data)
            except OSError as exc:
                with self._condition:
                    self._failed_lines += lines
                    self._last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            with self._condition:
                self._pending -= len(data)

    def _write(self, data: bytes) -> None:
        """All of ``data``: in one write to a file, in whole lines of at most PIPE_BUF elsewhere."""
        if self._one_write:
            self._write_out(memoryview(data))
            return
        start = 0
        while start < len(data):
            end = len(data)
            if end - start > _ATOMIC_WRITE_BYTES:
                cut = data.rfind(b"\n", start, start + _ATOMIC_WRITE_BYTES)
                # A line longer than PIPE_BUF goes whole, in as many writes as it takes.
                end = cut + 1 if cut >= start else data.find(b"\n", start) + 1 or len(data)
            with self._stream_lock:
                self._write_out(memoryview(data)[start:end])
            start = end

    def _write_out(self, view: memoryview) -> None:
        written = 0
        while written < len(view):
            written += os.write(self._fd, view[written:])


class AccessLog:
    """The access log of one process: ``record`` on the request path, batches written off the loop."""

    def __init__(
        self,
        writer: BatchWriter,
        dropped: PlainCounter,
        *,
        target: str,
        flush_bytes: int = FLUSH_BYTES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._writer = writer
        self._dropped = dropped
        self._flush_bytes = flush_bytes
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._monotonic = monotonic
        self._format = AccessLineFormatter()
        self._lines: list[str] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Dropped lines not yet in a warning, the last error, and when the last warning went out.
        self._unreported = 0
        self._error = ""
        self._warned_at: float | None = None
        self._closed = False

    @classmethod
    def open(cls, path: str | None, dropped: PlainCounter) -> AccessLog:
        """The log on stderr (``path`` None) or appended to the file at ``path`` (created if missing)."""
        if path is None:
            writer = BatchWriter(sys.stderr.fileno(), stream_lock=_stderr_handler_lock())
            return cls(writer, dropped, target="stderr")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return cls(BatchWriter(fd, owns_fd=True), dropped, target=path)

    def record(
        self,
        request_id: str,
        storefront: str | None,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        peer: str | None,
    ) -> None:
        """Buffer one request's line; the batch leaves when full, or within the flush interval."""
        line = self._format.line(
            self._clock(), request_id, storefront, method, path, status, duration_ms, peer
        )
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered >= self._flush_bytes:
            self.flush()
        elif self._timer is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._flush_interval_s, self._flush_on_time)

    def _flush_on_time(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Hand the buffered lines to the writer as one batch (dropped and counted when it is full)."""
        # Asked before this batch joins the queue: idle now means the reader keeps up.
        caught_up = self._writer.idle()
        lines = self._lines
        if lines:
            self._lines = []
            self._buffered = 0
            data = "".join(lines).encode("utf-8", "backslashreplace")
            if not self._writer.submit(data, len(lines)):
                self._count_dropped(len(lines), "the reader is not keeping up")
        failed, error = self._writer.take_failures()
        if failed:
            self._count_dropped(failed, error)
        if self._unreported:
            self._maybe_warn(caught_up)

    def _count_dropped(self, lines: int, error: str) -> None:
        self._dropped.inc(lines)
        self._unreported += lines
        self._error = error

    def _maybe_warn(self, caught_up: bool) -> None:
        """One WARNING for the lines dropped since the last one, once it cannot block the loop.

        On stderr that is once the writer has caught up: while the pipe is full, a warning
        written there would stall the event loop until someone reads.
        """
        now = self._monotonic()
        if self._warned_at is not None and now - self._warned_at < DROP_WARNING_INTERVAL_S:
            return
        if self.target == "stderr" and not caught_up:
            return
        self._warn()

    def _warn(self) -> None:
        log.warning(
            "access log: dropped %d lines (%s)",
            self._unreported,
            self._error,
            extra={"dropped": self._unreported, "target": self.target, "_every_time": True},
        )
        self._warned_at = self._monotonic()
        self._unreported = 0

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write every buffered line and stop the writer (waiting at most ``timeout_s``)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        finished = await asyncio.get_running_loop().run_in_executor(None, self._writer.close, timeout_s)
        failed, error = self._writer.take_failures()
        if failed:
            self._count_dropped(failed, error)
        if finished and self._unreported:
            # The reader took everything that was queued: the last word cannot block.
            self._warn()


def _stderr_handler_lock() -> AbstractContextManager[object] | None:
    """The lock of the logging handler that writes to stderr (setup_logging's), if there is one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr and handler.lock:
            lock: AbstractContextManager[object] = handler.lock
            return lock
    return None
