"""The access log: one JSON line per request, formatted directly and written in batches.

The line is the one ``proxy.log.JsonFormatter`` wrote for a ``proxy.access`` record (same fields,
same order), built here without the logging machinery: no LogRecord, no filters, no handler lock,
no ``json.dumps`` of a dict. Strings go through the json module's C escaper.

Lines gather in a buffer on the event loop and leave in one batch when it passes
``FLUSH_BYTES`` or ``FLUSH_INTERVAL_S`` after its first line, and at shutdown. A pipe (stderr in
a container) is written without blocking (see :class:`LogWriter`), so a slow or stalled reader
never holds the event loop. ``O_NONBLOCK`` on stderr itself would be wrong: the flag belongs to
the open file description that stderr shares with whoever started the process, whose writes
would then fail with EAGAIN. A writer thread was tried first: under full load it waited for the
GIL (5 ms a switch) several times per batch and fell behind. While the reader stalls, at most
``MAX_PENDING_BYTES`` wait for it; further batches are dropped and counted
(``cc_sidecar_access_log_dropped_total``), as Envoy drops rather than stall its workers. The one
WARNING about it goes out once the reader takes lines again (looked at every
``FLUSH_INTERVAL_S``; written while it stalls, it would only queue behind the lines it is
about), at most once per ``DROP_WARNING_INTERVAL_S``.

Warnings and errors keep going through ``logging``, unbuffered, into the same writer when the
access log is on stderr (:class:`proxy.log.StderrHandler`): never blocking either, and so access
lines can trail them by up to ``FLUSH_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import stat
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Final, Protocol

from proxy.metrics import PlainCounter

log = logging.getLogger("proxy.access_log")

# A batch leaves once the buffer holds this much (characters, about bytes)...
FLUSH_BYTES: Final = 64 * 1024
# ... or this long after its first line, whichever comes first (an idle sidecar's lines too).
FLUSH_INTERVAL_S: Final = 1.0
# Batches waiting for a reader that does not read; past this, batches are dropped and counted.
MAX_PENDING_BYTES: Final = 1024 * 1024
# At shutdown, how long the last batches may take to leave before the process exits regardless.
CLOSE_TIMEOUT_S: Final = 5.0
# Off the event loop (start-up, the last words, another thread), how long one log record may
# wait for stderr's reader before it is dropped.
OFF_LOOP_WAIT_S: Final = 1.0
# The warning about dropped lines is written at most this often (the metric counts every one).
DROP_WARNING_INTERVAL_S: Final = 60.0
# A write of at most PIPE_BUF bytes to a pipe is never split (nor, non-blocking, half done).
_ATOMIC_WRITE_BYTES: Final = select.PIPE_BUF


class Cancellable(Protocol):
    """A timer handle: asyncio's TimerHandle, or uvloop's (which is not one; compiled code checks)."""

    def cancel(self) -> None: ...


# ".000Z" ... ".999Z": the end of a timestamp, looked up rather than formatted.
_MILLISECONDS: Final = [f".{n:03d}Z" for n in range(1000)]
# ".0", ".01" ... ".99": the end of a duration in milliseconds, as repr writes a float rounded to
# two places (json.dumps writes floats so), looked up rather than rounded and repr'd.
_HUNDREDTHS: Final = [f".{n // 10}" if n % 10 == 0 else f".{n:02d}" for n in range(100)]
# The methods nearly every request has, each escaped once.
_METHOD_FIELDS: Final = {
    method: encode_basestring(method)
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
}


def milliseconds_text(seconds: float) -> str:
    """``seconds`` in milliseconds, rounded half up to the hundredth, as JSON: ``12.5``, ``0.07``.

    The text ``repr(round(ms, 2))`` gives (ties aside), in a fifth of its time: round() to places
    goes through a decimal string, repr through another.
    """
    hundredths = int(seconds * 100_000.0 + 0.5) if seconds > 0 else 0
    whole = hundredths // 100
    return str(whole) + _HUNDREDTHS[hundredths - whole * 100]


class AccessLineFormatter:
    """Formats one request's access line; remembers the current second's timestamp.

    Built with plain f-string parts only: mypyc compiles ``{x!r}`` and ``{n:03d}`` into slow
    generic calls (a line took 7 µs compiled against 2 µs as Python), so numbers are turned into
    text with ``str``/``repr`` and the milliseconds looked up.
    """

    __slots__ = ("_peer", "_peer_field", "_prefix", "_routed", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        # Storefront name -> its escaped field: a handful of names, each escaped once.
        self._routed: dict[str, str] = {}
        # The last peer and its escaped field: most lines in a row have the same one (a
        # keep-alive client's requests, or the ingress in front of the sidecar).
        self._peer: str | None = None
        self._peer_field = "null"

    def timestamp(self, now: float) -> str:
        """As JsonFormatter writes a record's time: UTC, milliseconds, ``Z``."""
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        milliseconds = int((now - second) * 1000)
        if milliseconds < 1000:
            return self._prefix + _MILLISECONDS[milliseconds]
        return f"{self._prefix}.{milliseconds}Z"

    def line(
        self,
        now: float,
        request_id: str,
        storefront: str | None,
        method: str,
        path: str,
        status: int,
        duration_s: float,
        peer: str | None,
    ) -> str:
        """One JSON object and its newline; ``storefront`` is left out when the request had none."""
        routed = ""
        if storefront is not None:
            routed = self._routed.get(storefront, "")
            if not routed:
                routed = self._routed[storefront] = ', "storefront": ' + encode_basestring(storefront)
        if peer != self._peer:
            self._peer = peer
            self._peer_field = "null" if peer is None else encode_basestring(peer)
        method_field = _METHOD_FIELDS.get(method) or encode_basestring(method)
        status_text = str(status)
        duration_text = milliseconds_text(duration_s)
        return (
            f'{{"time": "{self.timestamp(now)}", "level": "info", "logger": "proxy.access",'
            f' "message": "request", "request_id": {encode_basestring(request_id)}{routed},'
            f' "method": {method_field}, "path": {encode_basestring(path)},'
            f' "status": {status_text}, "duration_ms": {duration_text}, "peer": {self._peer_field}}}\n'
        )


class LogWriter:
    """Writes batches to a file descriptor from the event loop, never waiting for its reader.

    A regular file takes each batch in one blocking write (the page cache takes it at once, as
    nginx writes its log). Anything else (a pipe, a terminal, a socket) is written without ever
    blocking: through a descriptor of its own opened with ``O_NONBLOCK`` (``/proc/self/fd/N``:
    a new open file description of the same pipe, so stderr's own, which whoever started the
    process shares, stays blocking), or ``MSG_DONTWAIT`` on a socket. Where that reopening is
    refused (a pipe owned by another user, as after a wrapper dropped privileges; no ``/proc``),
    a write of at most PIPE_BUF bytes goes only once a poll says the pipe has room, which a pipe
    with one writer then takes without blocking. What the reader does not take at once waits (at
    most ``max_pending`` bytes) and goes when the descriptor is writable again; a batch that
    would pass the bound is refused.

    The process's stderr has one writer, shared by the access log and the logging handler
    (:class:`proxy.log.StderrHandler`), so their lines queue in one order under one bound. Only
    the thread of the loop that submitted last touches the queue while that loop runs: another
    thread hands its lines over (``call_soon_threadsafe``). With no loop running (before it
    starts, after it ends) :meth:`write_within` waits for the reader at most a given time.
    """

    def __init__(
        self, fd: int, *, max_pending: int = MAX_PENDING_BYTES, owns_fd: bool = False, reopen: bool = True
    ) -> None:
        """``reopen`` False: a pipe is written through ``fd`` itself, as where reopening is refused."""
        self._max_pending = max_pending
        self._pending = bytearray()
        self._failed_lines = 0
        self._last_error = ""
        # The last write ended inside a line (a disk that filled mid-batch): the next line must
        # begin on a line of its own, not finish the torn one.
        self._mid_line = False
        self._waiting: asyncio.AbstractEventLoop | None = None
        # The loop whose thread writes the queue (the last to submit): other threads hand it
        # their lines while it runs, never touching the queue themselves.
        self._owner: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._socket: socket.socket | None = None
        # Asked with a poll before each write (a blocking pipe that could not be reopened).
        self._guarded: select.poll | None = None
        mode = os.fstat(fd).st_mode
        # A regular file: whole batches. Elsewhere: whole lines of at most PIPE_BUF per write
        # (never split, so a warning written at the same moment cannot land inside one).
        self._whole_batches = stat.S_ISREG(mode)
        self._fd = fd
        self._owns_fd = owns_fd
        if self._whole_batches:
            return
        if stat.S_ISSOCK(mode):
            self._socket = socket.socket(fileno=os.dup(fd))
            self._fd = self._socket.fileno()
            return
        try:
            if not reopen:
                raise PermissionError
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            # EACCES (another user's pipe) or no /proc: writes that look before they leap.
            self._guarded = select.poll()
            self._guarded.register(fd, select.POLLOUT)
            return
        if owns_fd:
            os.close(fd)
        self._fd = own
        self._owns_fd = True

    def submit(self, data: bytes, lines: int) -> bool:
        """Write one batch, or queue what the reader does not take now; False (nothing queued)
        when the queue would pass ``max_pending``."""
        if self._closed or len(self._pending) + len(data) > self._max_pending:
            return False
        self._owner = asyncio.get_running_loop()
        self._queue(data)
        if self._waiting is None:
            self._write_pending()
        return True

    def _queue(self, data: bytes) -> None:
        if data and self._mid_line and not self._pending:
            self._pending += b"\n"
        self._pending += data

    def idle(self) -> bool:
        """Nothing waits to be written: the reader has taken every batch."""
        return not self._pending

    def take_failures(self) -> tuple[int, str]:
        """Lines whose write failed since the last call (a closed pipe, a full disk), and the error."""
        failed, error = self._failed_lines, self._last_error
        self._failed_lines = 0
        return failed, error

    def write_line(self, data: bytes) -> bool:
        """Write a record's line(s) for the logging handler, never blocking the event loop.

        On the loop's thread, as :meth:`submit` (False: refused, the queue is full). From
        another thread while that loop runs, handed to it. With no loop running, after what the
        loop left queued, waiting at most ``OFF_LOOP_WAIT_S``.
        """
        if self._closed:
            return False
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        waiting = self._waiting_loop()
        if running is not None and (waiting is None or waiting is running):
            return self.submit(data, 1)
        owner = self._owner
        if owner is not None and owner.is_running():
            # Another thread while a loop writes the queue: only the loop's thread touches it.
            try:
                owner.call_soon_threadsafe(self.submit, data, 1)
            except RuntimeError:
                return False  # the loop closed just now
            return True
        return self.write_within(data, OFF_LOOP_WAIT_S)

    def write_within(self, data: bytes, timeout_s: float) -> bool:
        """Write what waits and ``data``, off the event loop, waiting at most ``timeout_s``.

        False, with what did not go out dropped and counted, if the reader took too long.
        """
        if self._waiting_loop() is not None:
            return False  # a loop runs and owns the queue: only its thread writes it
        self._queue(data)
        pending = self._pending
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while pending:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not poller.poll(remaining_ms):
                self._fail(pending.count(b"\n"), "the reader did not take them in time")
                pending.clear()
                return False
            try:
                written = self._write(bytes(pending[: self._chunk_end()]))
            except BlockingIOError:
                continue
            except OSError as exc:
                self._fail(pending.count(b"\n"), f"{type(exc).__name__}: {exc.strerror or exc}")
                pending.clear()
                return False
            self._took(written)
        return True

    async def drain(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Write what waits, for up to ``timeout_s``; True when all of it left, else it is dropped."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            if self._waiting is None:
                self._write_pending()
            await asyncio.sleep(0.01)
        self._stop_waiting()
        finished = not self._pending
        if not finished:
            self._fail(self._pending.count(b"\n"), "the reader did not take them before shutdown")
            self._pending.clear()
        return finished

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Write what waits (for up to ``timeout_s``) and close; True when all of it left."""
        finished = await self.drain(timeout_s)
        self._closed = True
        if self._socket is not None:
            self._socket.close()
        elif self._owns_fd:
            os.close(self._fd)
        return finished

    def _waiting_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop that waits for the descriptor to be writable, if it still runs."""
        waiting = self._waiting
        if waiting is not None and (waiting.is_closed() or not waiting.is_running()):
            self._waiting = None  # its loop ended, and the watch with it
            return None
        return waiting

    def _chunk_end(self) -> int:
        """Where the next write ends: the batch, or whole lines of at most PIPE_BUF bytes."""
        pending = self._pending
        end = len(pending)
        if not self._whole_batches and end > _ATOMIC_WRITE_BYTES:
            cut = pending.rfind(b"\n", 0, _ATOMIC_WRITE_BYTES)
            # A line longer than PIPE_BUF goes whole, in as many writes as it takes.
            end = cut + 1 if cut >= 0 else pending.find(b"\n") + 1 or end
        return end

    def _write_pending(self) -> None:
        pending = self._pending
        while pending:
            try:
                written = self._write(bytes(pending[: self._chunk_end()]))
            except BlockingIOError:
                self._wait_writable()
                return
            except OSError as exc:
                self._fail(pending.count(b"\n"), f"{type(exc).__name__}: {exc.strerror or exc}")
                pending.clear()
                break
            self._took(written)
        self._stop_waiting()

    def _took(self, written: int) -> None:
        """The first ``written`` bytes of the queue went out."""
        if written:
            self._mid_line = self._pending[written - 1] != 0x0A
        del self._pending[:written]

    def _write(self, chunk: bytes) -> int:
        if self._socket is not None:
            return self._socket.send(chunk, socket.MSG_DONTWAIT)
        guarded = self._guarded
        if guarded is not None:
            if not guarded.poll(0):
                raise BlockingIOError  # no room: the loop waits for it, as for a full pipe
            # Room for at least PIPE_BUF bytes: a write of that much never blocks.
            chunk = chunk[:_ATOMIC_WRITE_BYTES]
        return os.write(self._fd, chunk)

    def _fail(self, lines: int, error: str) -> None:
        self._failed_lines += lines
        self._last_error = error

    def _wait_writable(self) -> None:
        if self._waiting is None:
            self._waiting = asyncio.get_running_loop()
            self._waiting.add_writer(self._fd, self._write_pending)

    def _stop_waiting(self) -> None:
        if self._waiting is not None:
            # Typed loosely: uvloop's remove_writer returns None where asyncio's (and the stubs)
            # say bool, and mypyc checks a result against its declared type.
            remove_writer: Callable[[int], object] = self._waiting.remove_writer
            remove_writer(self._fd)
            self._waiting = None


# stderr's writers by what the descriptor is (device, inode): one per process, unless someone
# points the descriptor elsewhere (a test capturing it).
_stderr_writers: dict[tuple[int, int, int], LogWriter] = {}


def stderr_writer(fd: int) -> LogWriter:
    """The process's one writer of stderr (``fd``), shared by the log and the access log."""
    status = os.fstat(fd)
    key = (fd, status.st_dev, status.st_ino)
    writer = _stderr_writers.get(key)
    if writer is None:
        writer = _stderr_writers[key] = LogWriter(fd)
    return writer


class AccessLog:
    """The access log of one process: ``record`` on the request path; batches never block the loop."""

    def __init__(
        self,
        writer: LogWriter,
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
        self._timer: Cancellable | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Dropped lines not yet in a warning, the last error, and when the last warning went out.
        self._unreported = 0
        self._error = ""
        self._warned_at: float | None = None
        self._closed = False
        # Closed with the log, unless it is stderr's, which the logging handler writes on with.
        self._owns_writer = target != "stderr"

    @classmethod
    def open(cls, path: str | None, dropped: PlainCounter) -> AccessLog:
        """The log on stderr (``path`` None) or appended to the file at ``path`` (created if missing)."""
        if path is None:
            return cls(stderr_writer(sys.stderr.fileno()), dropped, target="stderr")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return cls(LogWriter(fd, owns_fd=True), dropped, target=path)

    def record(
        self,
        request_id: str,
        storefront: str | None,
        method: str,
        path: str,
        status: int,
        duration_s: float,
        peer: str | None,
    ) -> None:
        """Buffer one request's line; the batch leaves when full, or within the flush interval."""
        line = self._format.line(
            self._clock(), request_id, storefront, method, path, status, duration_s, peer
        )
        if self._closed:
            # A request that ended after the log closed (one cut at shutdown): written at once.
            if not self._writer.submit(line.encode("utf-8", "backslashreplace"), 1):
                self._dropped.inc(1)
            return
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
            # Looked at again once the interval is over, requests or not.
            self._look_again(self._warned_at + DROP_WARNING_INTERVAL_S - now)
            return
        if self.target == "stderr" and not caught_up:
            # Looked at again within the flush interval, requests or not: the warning goes out
            # within about that time of the reader catching up.
            self._look_again(self._flush_interval_s)
            return
        self._warn()

    def _look_again(self, delay_s: float) -> None:
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._flush_on_time)

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
        if self._owns_writer:
            finished = await self._writer.aclose(timeout_s)
        else:
            finished = await self._writer.drain(timeout_s)
        failed, error = self._writer.take_failures()
        if failed:
            self._count_dropped(failed, error)
        if finished and self._unreported:
            # The reader took everything that was queued: the last word cannot block.
            self._warn()
