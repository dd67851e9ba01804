"""Bodies held by the sidecar, so that a slow client never holds one of the shop's workers.

A shop with a fixed number of workers (PHP-FPM, Apache prefork, gunicorn sync) gives a request a
worker from its first byte to its last. A client that sends its body 10 bytes at a time, or
reads its download as slowly, would hold that worker for as long as it likes; two dozen such
clients hold them all. nginx's answer, and this module's (each a ``buffering:`` key):

- a request body is read in full before the shop request opens (:meth:`Buffering.read_body`):
  in memory up to ``body_memory_bytes``, the rest in a temp file, refused past
  ``max_body_bytes`` (413) and when a read waits over ``limits.body_timeout_s`` (408). The shop
  then gets it at once, byte for byte, under the client's own framing (docs/security.md);
- a response body is taken from the shop at the shop's pace (:class:`ResponseFeed`): what the
  client has not taken yet waits in memory up to ``response_memory_bytes``, then in a temp file,
  up to ``max_response_buffer_bytes``, past which the shop is read at the client's pace.

Streams stay streams: a WebSocket never comes here, and responses of the content types in
``unbuffered_content_types`` (``text/event-stream``) or to paths in ``unbuffered_paths`` are
written as they come, their request bodies streamed to the shop as they arrive.

Temp files are made in ``temp_dir`` and unlinked at once (the OS frees them when closed, a crash
included). Writing them blocks the event loop as nginx's writes block its worker: a page-cache
write of a 64 KiB chunk, not a wait on the client.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable
from typing import IO

from aiohttp import web

from proxy.config.model import BufferingSettings
from proxy.errors import BodyTimeout, BodyTooLarge, ClientGone, ConfigError
from proxy.metrics import Metrics
from proxy.routing import PathMatcher

# Read from a spool at most this much per write to the client (the shop is read so too).
_CHUNK = 64 * 1024


def check_temp_dir(directory: str | None) -> None:
    """Make and drop one temp file where bodies will spill, so a directory that cannot take them
    fails the start (exit 2, naming ``buffering.temp_dir``), not the first large upload."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        where = directory if directory is not None else "the default temp dir ($TMPDIR, /tmp)"
        raise ConfigError(
            [f"buffering.temp_dir: cannot make a temp file in {where}: {exc.strerror}"]
        ) from exc


class Spool:
    """Bytes written at one pace and read at another: in memory up to a size, then in a temp file."""

    __slots__ = ("_file", "_read", "_written")

    def __init__(self, memory_bytes: int, directory: str | None) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory_bytes, dir=directory)  # noqa: SIM115
        self._written = 0
        self._read = 0

    @property
    def size(self) -> int:
        """Bytes written in all."""
        return self._written

    @property
    def pending(self) -> int:
        """Bytes written and not read yet."""
        return self._written - self._read

    def write(self, data: bytes) -> None:
        self._file.seek(self._written)
        self._file.write(data)
        self._written += len(data)

    def read(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` of the bytes not read yet (b"" when there are none)."""
        if self._read == self._written:
            if self._written:
                # All taken: start over, so a client that keeps up never grows the spool.
                self._file.seek(0)
                self._file.truncate()
                self._written = self._read = 0
            return b""
        self._file.seek(self._read)
        data = self._file.read(min(size, self._written - self._read))
        self._read += len(data)
        return data

    def close(self) -> None:
        self._file.close()


class BufferedBody:
    """A request body read in full, handed to the shop's client as it reads a stream."""

    __slots__ = ("_spool",)

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    @property
    def size(self) -> int:
        return self._spool.size

    async def readany(self) -> bytes:
        """The next bytes (b"" at the end); the spool is closed once they are all read."""
        data = self._spool.read()
        if not data:
            self._spool.close()
        return data

    def __aiter__(self) -> BufferedBody:
        return self

    async def __anext__(self) -> bytes:
        data = await self.readany()
        if not data:
            raise StopAsyncIteration
        return data

    def close(self) -> None:
        self._spool.close()


class Buffering:
    """What :mod:`proxy.buffering` needs per request, built once from the settings."""

    def __init__(self, settings: BufferingSettings, body_timeout_s: float, metrics: Metrics) -> None:
        self._settings = settings
        self._body_timeouts = metrics.connections_closed.labels("body_timeout")
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = settings.max_body_bytes
        self.max_held = settings.max_response_buffer_bytes
        self.temp_dir = settings.temp_dir
        self._unbuffered_paths = PathMatcher(settings.unbuffered_paths) if settings.unbuffered_paths else None
        self._stream_types = frozenset(kind.strip().lower() for kind in settings.unbuffered_content_types)

    def streams(self, path: str) -> bool:
        """Whether an operator named this path for bodies that stream both ways."""
        return self._unbuffered_paths is not None and self._unbuffered_paths.matches(path)

    def streams_response(self, content_type: str | None) -> bool:
        """Whether a response of this content type goes out as it comes (server-sent events)."""
        if content_type is None:
            return False
        return content_type.partition(";")[0].strip().lower() in self._stream_types

    def check_announced(self, request: web.BaseRequest) -> None:
        """Raise :class:`BodyTooLarge` if the request's Content-Length is over ``max_body_bytes``."""
        announced = request.content_length
        if announced is not None and announced > self.max_body_bytes:
            raise BodyTooLarge(f"{announced} bytes announced")

    async def read_body(self, request: web.BaseRequest) -> BufferedBody | None:
        """The request's whole body, or None when it has none.

        Raises :class:`BodyTooLarge` (413) past ``max_body_bytes`` (at once when the client's
        Content-Length says so), :class:`BodyTimeout` (408) when the client sends nothing for
        ``body_timeout_s``, and :class:`ClientGone` when it leaves mid-body.
        """
        if not request.body_exists:
            return None
        self.check_announced(request)
        spool = Spool(self._settings.body_memory_bytes, self.temp_dir)
        content = request.content
        try:
            while True:
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        chunk = await content.readany()
                except TimeoutError:
                    self._body_timeouts.inc()
                    raise BodyTimeout(f"nothing for {self.body_timeout_s:g} s") from None
                if not chunk:
                    break
                if spool.size + len(chunk) > self.max_body_bytes:
                    raise BodyTooLarge(f"over {self.max_body_bytes} bytes")
                spool.write(chunk)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            spool.close()
            raise ClientGone("mid-body") from exc
        except BaseException:
            spool.close()
            raise
        if not content.is_eof():
            # aiohttp ends a body it could not finish (the connection lost) as an empty read.
            spool.close()
            raise ClientGone("mid-body")
        return BufferedBody(spool)

    def feed(self, response: web.StreamResponse) -> ResponseFeed:
        """A feed that holds what the client has not taken yet (memory, then a temp file)."""
        return ResponseFeed(
            response, Spool(self._settings.response_memory_bytes, self.temp_dir), self.max_held
        )


class ResponseFeed:
    """Writes a streamed response to the client as fast as it reads; the shop is read at its own pace.

    :meth:`write` puts a chunk in the spool and returns at once while less than ``max_held``
    bytes wait for the client; a task writes them on as the client takes them (aiohttp's write
    waits while the client's socket is full). The shop's connection, and its worker, are free
    once the shop is done. With ``max_held`` 0 (a stream) each write waits for the client.
    """

    __slots__ = ("_done", "_max_held", "_response", "_room", "_sender", "_spool", "_wake")

    def __init__(self, response: web.StreamResponse, spool: Spool, max_held: int) -> None:
        self._response = response
        self._spool = spool
        self._max_held = max_held
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._done = False
        self._sender: asyncio.Task[None] | None = None

    async def write(self, chunk: bytes) -> None:
        """Pass ``chunk`` on; wait only while more than ``max_held`` bytes wait for the client."""
        if not chunk:
            return
        sender = self._sender
        if sender is None:
            sender = self._sender = asyncio.create_task(self._send())
        elif sender.done():
            sender.result()  # the client went away: ClientGone
        self._spool.write(chunk)
        self._wake.set()
        if self._spool.pending > self._max_held:
            # Held as much as allowed: from here the shop waits for the client, as nginx's does.
            self._room.clear()
            await self._wait_for_room(sender)

    async def finish(self, last: bytes) -> None:
        """Pass on the last bytes, wait until the client has everything, and end the response."""
        if last:
            self._spool.write(last)
        self._done = True
        if self._sender is not None:
            self._wake.set()
            await self._sender
        await to_client(self._response.write_eof(self._spool.read(self._spool.pending)))

    @property
    def client_gone(self) -> bool:
        """Whether the client left while its bytes were being written."""
        sender = self._sender
        return (
            sender is not None
            and sender.done()
            and not sender.cancelled()
            and isinstance(sender.exception(), ClientGone)
        )

    def close(self) -> None:
        """Stop sending (the request ended another way) and let go of the spool."""
        sender = self._sender
        if sender is not None:
            if not sender.done():
                sender.cancel()
            elif not sender.cancelled():
                # Its ClientGone, if any, is moot now (the shop failed first, say): taken, so
                # asyncio does not log it as an exception nobody retrieved.
                sender.exception()
        self._spool.close()

    async def _wait_for_room(self, sender: asyncio.Task[None]) -> None:
        waiting = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait((waiting, sender), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if sender.done():
            sender.result()

    async def _send(self) -> None:
        """Write the spool to the client as it takes it."""
        while True:
            data = self._spool.read()
            if data:
                await to_client(self._response.write(data))
                if self._spool.pending <= self._max_held:
                    self._room.set()
                continue
            self._room.set()
            if self._done:
                return
            self._wake.clear()
            await self._wake.wait()


async def to_client(write: Awaitable[object]) -> None:
    """Await a write to the client; its connection lost is :class:`ClientGone`, not the shop's failure.

    aiohttp fails a write to a client that left with ConnectionResetError,
    ClientConnectionResetError, or (a drain pending when the connection went) a plain
    ``ConnectionError("Connection lost")``: all of them ConnectionError.
    """
    try:
        await write
    except ConnectionError as exc:
        raise ClientGone("mid-response") from exc
