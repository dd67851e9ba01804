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

All temp files together hold at most ``max_temp_bytes`` (:class:`TempSpace`), so that slow
clients never fill the disk (in Kubernetes, an emptyDir past its sizeLimit gets the pod evicted).
A spool is charged for what it keeps on disk, never for its memory, and the charge goes back when
it is emptied or closed. Past the budget a request body is refused before the shop request opens
(:class:`~proxy.errors.TempSpaceFull`, 503; one larger than the whole budget, 413), and a response
held for a slow client holds no more: the shop is read at the client's pace, as past
``max_response_buffer_bytes``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable

from aiohttp import web
from prometheus_client import Counter, Gauge

from proxy.config.model import BufferingSettings
from proxy.errors import BodyTimeout, BodyTooLarge, ClientGone, ConfigError, TempSpaceFull
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


class TempSpace:
    """Where spools keep what is past their memory, and how much all of them may keep there at once.

    One per process (``buffering.temp_dir``, ``buffering.max_temp_bytes``). :meth:`take` charges
    bytes about to go to disk, or refuses them past the limit; :meth:`give_back` returns them.
    ``held`` is exported as ``cc_sidecar_temp_bytes``.
    """

    __slots__ = ("_gauge", "directory", "held", "limit")

    def __init__(self, limit: int, directory: str | None, gauge: Gauge) -> None:
        self.limit = limit
        self.directory = directory
        self.held = 0
        self._gauge = gauge

    @property
    def available(self) -> int:
        return self.limit - self.held

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes; False (nothing charged) when they would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        self._gauge.set(self.held)
        return True

    def give_back(self, size: int) -> None:
        self.held -= size
        self._gauge.set(self.held)


class Spool:
    """Bytes written at one pace and read at another: in memory up to a size, then in a temp file.

    The temp file is charged to ``space`` for every byte it holds (on rolling over, the memory's
    share goes to it too); a write it has no room for is refused. ``memory_bytes`` None: memory
    only, never a file (a stream's spool, one chunk at a time).
    """

    __slots__ = ("_charged", "_file", "_memory_bytes", "_on_disk", "_read", "_space", "_written")

    def __init__(self, memory_bytes: int | None = None, space: TempSpace | None = None) -> None:
        self._memory_bytes = memory_bytes
        self._space = space
        self._file = self._new_file()
        self._on_disk = False
        self._charged = 0
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

    def reserve(self, size: int) -> bool:
        """Charge now for a body of ``size`` bytes to come, so that no write up to it is refused.

        False (nothing charged) when it would go to disk and there is no room for it.
        """
        memory_bytes = self._memory_bytes
        if memory_bytes is None or size <= memory_bytes:
            return True
        return self._charge(size)

    def write(self, data: bytes) -> bool:
        """Add ``data``; False, with nothing written, when it would go to disk past the budget."""
        end = self._written + len(data)
        if not self._on_disk:
            memory_bytes = self._memory_bytes
            if memory_bytes is not None and end > memory_bytes:
                if not self._charge(end):
                    return False
                self._file.rollover()
                self._on_disk = True
        elif not self._charge(end):
            return False
        self._file.seek(self._written)
        self._file.write(data)
        self._written = end
        return True

    def read(self, size: int = _CHUNK) -> bytes:
        """Up to ``size`` of the bytes not read yet (b"" when there are none)."""
        if self._read == self._written:
            return b""
        self._file.seek(self._read)
        data = self._file.read(min(size, self._written - self._read))
        self._read += len(data)
        if self._read == self._written:
            # All taken: start over in memory, so a client that keeps up never grows the spool,
            # and its disk share goes back at once.
            if self._on_disk:
                self._file.close()
                self._file = self._new_file()
                self._on_disk = False
            else:
                self._file.seek(0)
                self._file.truncate()
            self._written = self._read = 0
            self._release()
        return data

    def close(self) -> None:
        self._file.close()
        self._release()

    def _new_file(self) -> tempfile.SpooledTemporaryFile[bytes]:
        # max_size 0: it never rolls over by itself; write() does it, once the budget allows.
        space = self._space
        return tempfile.SpooledTemporaryFile(max_size=0, dir=space.directory if space is not None else None)

    def _charge(self, size: int) -> bool:
        """Have ``size`` bytes charged in all (a reservation may cover them already)."""
        more = size - self._charged
        if more <= 0:
            return True
        space = self._space
        if space is None or not space.take(more):
            return False
        self._charged = size
        return True

    def _release(self) -> None:
        space = self._space
        if self._charged and space is not None:
            space.give_back(self._charged)
            self._charged = 0


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
        self._bodies_refused = metrics.temp_refused.labels("request")
        self._responses_refused = metrics.temp_refused.labels("response")
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = settings.max_body_bytes
        # A body past its memory share goes to disk whole: one larger than all the temp space could
        # never be taken, so it is too large (413), not one to try again later (503). A body that
        # streams to the shop is never spooled: only max_body_bytes holds for it.
        self.max_spooled_bytes = min(
            settings.max_body_bytes, max(settings.body_memory_bytes, settings.max_temp_bytes)
        )
        self.max_held = settings.max_response_buffer_bytes
        self.space = TempSpace(settings.max_temp_bytes, settings.temp_dir, metrics.temp_bytes)
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
        """Refuse a body by the request's Content-Length before any of it is read.

        :class:`BodyTooLarge` past ``max_body_bytes`` (or, unless it streams, past all the temp
        space), :class:`TempSpaceFull` when it would go to disk and the temp files have no room
        for it now.
        """
        announced = request.content_length
        if announced is None:
            return
        if announced > self.max_body_bytes:
            raise BodyTooLarge(f"{announced} bytes announced")
        if not self.streams(request.path):
            self._check_spoolable(announced)

    def _check_spoolable(self, announced: int) -> None:
        if announced > self.max_spooled_bytes:
            raise BodyTooLarge(
                f"{announced} bytes announced, over the {self.max_spooled_bytes} of temp space"
            )
        if announced > self._settings.body_memory_bytes and announced > self.space.available:
            self._bodies_refused.inc()
            raise TempSpaceFull(f"{announced} bytes announced, {self.space.available} free in temp files")

    async def read_body(self, request: web.BaseRequest) -> BufferedBody | None:
        """The request's whole body, or None when it has none.

        Raises :class:`BodyTooLarge` (413) past ``max_body_bytes`` or all the temp space (at once
        when the client's Content-Length says so), :class:`TempSpaceFull` (503) when it would take
        the temp files past ``max_temp_bytes`` (at once when announced: a body announced is
        charged whole before it is read, so it is never refused halfway), :class:`BodyTimeout`
        (408) when the client sends nothing for ``body_timeout_s``, and :class:`ClientGone` when
        it leaves mid-body.
        """
        if not request.body_exists:
            return None
        announced = request.content_length
        if announced is not None:
            if announced > self.max_body_bytes:
                raise BodyTooLarge(f"{announced} bytes announced")
            self._check_spoolable(announced)
        spool = Spool(self._settings.body_memory_bytes, self.space)
        if announced is not None:
            # Room was found just now, with no await since: the reservation is taken.
            spool.reserve(announced)
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
                if spool.size + len(chunk) > self.max_spooled_bytes:
                    raise BodyTooLarge(f"over {self.max_spooled_bytes} bytes")
                if not spool.write(chunk):
                    self._bodies_refused.inc()
                    raise TempSpaceFull(f"past {spool.size} bytes, {self.space.available} free in temp files")
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

    def feed(
        self, response: web.StreamResponse, transport: asyncio.BaseTransport | None = None
    ) -> ResponseFeed:
        """A feed that holds what the client (on ``transport``) has not taken yet (memory, then a
        temp file)."""
        return ResponseFeed(
            response,
            Spool(self._settings.response_memory_bytes, self.space),
            self.max_held,
            self._responses_refused,
            transport,
        )


class ResponseFeed:
    """Writes a streamed response to the client as fast as it reads; the shop is read at its own pace.

    :meth:`write` puts a chunk in the spool and returns at once while less than ``max_held``
    bytes wait for the client; a task writes them on as the client takes them (aiohttp's write
    waits while the client's socket is full). The shop's connection, and its worker, are free
    once the shop is done. With ``max_held`` 0 (a stream) each write waits for the client.

    A chunk the spool has no temp space for (counted in ``refused``) waits until the client has
    taken all that is held; from then on the feed holds nothing more (``max_held`` 0, memory only).
    """

    __slots__ = (
        "_done",
        "_max_held",
        "_refused",
        "_response",
        "_room",
        "_sender",
        "_spool",
        "_transport",
        "_wake",
    )

    def __init__(
        self,
        response: web.StreamResponse,
        spool: Spool,
        max_held: int,
        refused: Counter | None = None,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self._response = response
        # The client's connection: while its socket takes a chunk without reaching its high-water
        # mark, the chunk goes straight there (no spool, no task); holding starts when it does not.
        self._transport = transport if isinstance(transport, asyncio.WriteTransport) else None
        self._spool = spool
        self._max_held = max_held
        self._refused = refused
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
            if self._max_held > 0 and self._client_takes(len(chunk)):
                # A client that keeps up (most): written at once, and the write never waits.
                await to_client(self._response.write(chunk))
                return
            sender = self._sender = asyncio.create_task(self._send())
        elif sender.done():
            sender.result()  # the client went away: ClientGone
        await self._hold(chunk, sender)
        self._wake.set()
        if self._spool.pending > self._max_held:
            # Held as much as allowed: from here the shop waits for the client, as nginx's does.
            self._room.clear()
            await self._wait_for_room(sender)

    async def finish(self, last: bytes) -> None:
        """Pass on the last bytes, wait until the client has everything, and end the response."""
        if last:
            await self._hold(last, self._sender)
        self._done = True
        if self._sender is not None:
            self._wake.set()
            await self._sender
        await to_client(self._response.write_eof(self._spool.read(self._spool.pending)))

    async def _hold(self, chunk: bytes, sender: asyncio.Task[None] | None) -> None:
        """Put ``chunk`` in the spool; with no temp space for it, first wait for the client to take it all."""
        if self._spool.write(chunk):
            return
        if self._refused is not None:
            self._refused.inc()
        # No room on disk: nothing more is held for this client. What is held goes first, then each
        # chunk waits for the client (the path past max_held), in memory: nothing more is charged.
        self._max_held = 0
        if sender is not None and self._spool.pending:
            self._room.clear()
            await self._wait_for_room(sender)
        self._spool.close()
        self._spool = Spool()
        self._spool.write(chunk)

    def _client_takes(self, size: int) -> bool:
        """Whether the client's socket buffer stays under its high-water mark with ``size`` more
        (aiohttp's write then returns without waiting for the client)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        return transport.get_write_buffer_size() + size <= transport.get_write_buffer_limits()[1]

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
