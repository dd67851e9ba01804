"""Structured logging: one JSON object per line on stderr, warnings of libraries included.

Request-scoped fields (request id, storefront) travel in one context variable, so every line
written while serving a request carries them without passing a logger around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp.http_exceptions import HttpProcessingError

from proxy.access_log import OFF_LOOP_WAIT_S, stderr_writer
from proxy.compiled import python_class

# A client's X-Request-Id is kept when it looks like one; anything else gets a fresh id.
MAX_REQUEST_ID: Final = 128


class RequestContext:
    """What each log line written while serving one request says about it.

    The request id is settled only when a line is written (most requests write none): the
    client's X-Request-Id if it looks like one, else a fresh id, the same for every line.
    """

    __slots__ = ("_id", "storefront")

    def __init__(self, given_id: str | None = None, storefront: str | None = None) -> None:
        self._id = given_id
        self.storefront = storefront

    @property
    def request_id(self) -> str:
        given = self._id
        if not given or len(given) > MAX_REQUEST_ID or not given.isascii():
            self._id = given = _fresh_ids.fresh()
        return given


class _RequestIds:
    """Unique, not secret: a random per-process prefix and a counter (cheaper than random bytes)."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4) + "-"
        self._count = 0

    def fresh(self) -> str:
        # Decimal: mypyc turns str() of an int into one fast call, format(n, "x") into a generic
        # one (a quarter of a µs per access line, with the generator this replaced).
        self._count += 1
        return self._prefix + str(self._count)


_fresh_ids = _RequestIds()
request_context: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "request_context", default=None
)

# Attributes every LogRecord has; anything else passed via ``extra=`` is emitted as a field.
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)


# A malformed request's reason is cut to this many characters (LineTooLong quotes the whole line).
MAX_REASON_CHARS: Final = 120


class MalformedRequestFilter(logging.Filter):
    """Turn aiohttp's traceback for each request its parser refused into one short WARNING.

    aiohttp logs every malformed or oversized request (BadHttpMessage, LineTooLong...) at ERROR,
    with a traceback, on ``aiohttp.server``; a scanner would flood the log with them. Such a
    record becomes ``rejected a malformed request: <class>: <reason>`` (the reason's first line,
    cut short), at WARNING (never raised above the record's own level), without the traceback;
    the peer goes in the ``peer`` field. Every other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name != "aiohttp.server" or not isinstance(exc, HttpProcessingError):
            return True
        reason = (exc.message.strip().splitlines() or [""])[0]
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "..."
        if record.msg == "Error handling request from %s" and isinstance(record.args, tuple) and record.args:
            record.peer = str(record.args[0])
        record.msg = "rejected a malformed request: %s: %s"
        record.args = (type(exc).__name__, reason)
        record.levelno = min(record.levelno, logging.WARNING)
        record.levelname = logging.getLevelName(record.levelno)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


# A warning of one cause is written at most once per this many seconds; the repeats in between
# are counted and the count goes out with the next one written.
REPEATED_WARNING_INTERVAL_S: Final = 60.0
# Causes remembered at once; a message formatted in advance (a cause per value) cannot grow
# the table without bound.
_MAX_WARNING_CAUSES: Final = 1024


class RepeatedWarningFilter(logging.Filter):
    """Let a WARNING of one cause through at most once per ``interval_s``; count the others.

    A cause is the logger and the message template (``record.msg`` before its arguments), so
    "shop request failed: %s" while the shop is down is one cause however many requests see it.
    The first warning of a cause is written at once; repeats within the interval are dropped and
    counted; the first one after the interval is written with ``suppressed`` (the count) and a
    note in its message. Records logged with ``extra={"_every_time": True}`` (the breaker's
    outage began / ended, each once per outage) and every other level pass unchanged.
    """

    def __init__(
        self, interval_s: float = REPEATED_WARNING_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        # cause -> (when its last line was written, repeats dropped since)
        self._causes: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or getattr(record, "_every_time", False):
            return True
        cause = (record.name, str(record.msg))
        now = self._clock()
        written_at, dropped = self._causes.get(cause, (None, 0))
        if written_at is not None and now - written_at < self._interval_s:
            self._causes[cause] = (written_at, dropped + 1)
            return False
        if len(self._causes) >= _MAX_WARNING_CAUSES and cause not in self._causes:
            self._causes.clear()
        self._causes[cause] = (now, 0)
        if dropped and written_at is not None:
            since_s = now - written_at
            record.msg = f"{record.getMessage()} ({dropped} more like this in the {since_s:.0f} s before)"
            record.args = None
            record.suppressed = dropped
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = request_context.get()
        if context is not None:
            entry["request_id"] = context.request_id
            if context.storefront is not None:
                entry["storefront"] = context.storefront
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


# A Python class (with compiled methods): as a C extension type extending logging's handler, the
# compiled build crashed in logging.shutdown at exit.
@python_class
class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to stderr at once, through the process's one stderr writer.

    Never blocking the event loop on a reader that stalls: a warning a client can cause (a
    malformed request) would otherwise hold every request while stderr's pipe is full (the
    access log fills it first). On the loop a record queues behind what waits, within the
    writer's bound; off it (start-up, the last words, another thread) it waits for the reader at
    most ``OFF_LOOP_WAIT_S``. Records that could not go are counted, and the next one that goes
    is preceded by a line saying how many. A stream without a descriptor of its own (a test's
    buffer) is written as logging's StreamHandler would.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            super().emit(record)
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        if self.dropped:
            notice = logging.makeLogRecord(
                {
                    "name": "proxy.log",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": "dropped %d log lines: stderr was not read",
                    "args": (self.dropped,),
                    "dropped": self.dropped,
                }
            )
            data = (self.format(notice) + "\n").encode() + data
        try:
            written = stderr_writer(fd).write_line(data)
        except Exception:
            self.handleError(record)
            return
        if written:
            self.dropped = 0
        else:
            self.dropped += 1


def flush_logging(timeout_s: float = OFF_LOOP_WAIT_S) -> None:
    """After the event loop ended: the log lines it left queued go, within ``timeout_s``."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        stderr_writer(sys.stderr.fileno()).write_within(b"", timeout_s)


def setup_logging(level: str = "INFO") -> None:
    """Send every logger (and ``warnings``) to stderr as JSON lines."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MalformedRequestFilter())
    # After the malformed-request filter, so a scanner's refused requests are one cause too.
    handler.addFilter(RepeatedWarningFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
