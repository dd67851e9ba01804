"""Visitors' latency while an attacker holds a proxy: issue #22's rows 1-3, in `make bench`.

Each attack is a number of connections the attacker keeps open, as slowloris tools do: every
``TICK_S`` each live one sends its trickle, and one the proxy closed is opened again about a tick
later:

- ``big-heads``: 60 connections, each a request line and 127 headers of 8,000 B (about 1 MB),
  never the blank line that ends the head, then silent.
- ``slowloris``: 1,100 connections, each a request line and a header, then one more header line
  a tick, never the blank line.
- ``idle-keepalive``: 1,100 connections that each get the page once and stay open between
  requests, and 300 that connect and send nothing.
- ``slow-post``: 24 POSTs to ``/upload`` (the shop reads the body) announcing 100,000 bytes and
  sending 10 B a tick.
- ``slow-read``: 24 GETs of a 16 MB download on connections with a 4 KiB receive buffer that
  never read (never reopened: a proxy cuts them only after its send timeout, 60 s).

Meanwhile ``VISITORS`` visitors fetch a page on a new connection each, one after another, for the
given time; a visit that is not a 200 within ``VISIT_TIMEOUT_S`` is not served. ``bench/run.py``
runs every attack against nginx and cc-sidecar, each at a 1024 open-files limit in front of the
same shop (16 gunicorn sync workers). On its own, against any port:

    python bench/attacks.py MODE PORT [PATH [SECONDS]]

``visit`` and ``latency_summary`` are shared with ``bench/flood.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
VISITORS = 5
VISIT_TIMEOUT_S = 5.0
TICK_S = 2.0
# Attacking connections opened at once, and how long one may take to open (its page included).
OPENING_AT_ONCE = 100
OPEN_TIMEOUT_S = 5.0
# After the attack's connections are open, before the visitors start.
SETTLE_S = 1.0
DOWNLOAD_BYTES = 16 * 1024 * 1024
SLOW_READER_BUFFER = 4096


@dataclass(frozen=True)
class Group:
    """Attacking connections of one kind: how many, what each sends at first and each tick."""

    connections: int
    opening: bytes
    trickle: bytes = b""
    # Read the proxy's answer to the opening (a page) before going idle.
    reads_page: bool = False
    # Read what the proxy sends later (a refusal, its close) and reopen once it closed. A slow
    # reader reads nothing and is never reopened.
    watched: bool = True
    receive_buffer: int | None = None


# Each attack, as bench/run.py's report names it.
ATTACKS = {
    "big-heads": "60 connections of 127 x 8,000 B headers without the blank line",
    "slowloris": "1,100 slowloris connections",
    "idle-keepalive": "1,100 idle keep-alive + 300 silent connections",
    "slow-post": "24 slow POST bodies (10 B every 2 s)",
    "slow-read": "24 slow readers of a 16 MB download",
}


def groups(mode: str, path: str) -> tuple[Group, ...]:
    """The attack ``mode``'s connections (see the module docstring); ``path`` is the shop's page."""
    start = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if mode == "big-heads":
        return (Group(60, start + b"".join(b"X-Big-%03d: %s\r\n" % (n, b"a" * 8000) for n in range(127))),)
    if mode == "slowloris":
        return (Group(1100, start + b"X-Slow: 1\r\n", trickle=b"X-Slow: 1\r\n"),)
    if mode == "idle-keepalive":
        page = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        return (Group(1100, page, reads_page=True), Group(300, b""))
    if mode == "slow-post":
        head = b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
        return (Group(24, head + b"x" * 10, trickle=b"x" * 10),)
    if mode == "slow-read":
        download = f"GET /download/{DOWNLOAD_BYTES} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        return (Group(24, download, watched=False, receive_buffer=SLOW_READER_BUFFER),)
    raise ValueError(f"unknown attack {mode!r}; known: {', '.join(ATTACKS)}")


def _raise_open_files_limit() -> None:
    """This process holds 1,400 sockets and its visitors' besides: the soft limit goes to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _connect(
    port: int, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if receive_buffer is None:
        return await asyncio.open_connection(HOST, port)
    sock = socket.socket()
    try:
        # Before connecting, so the window the proxy is offered is this small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        # The stream stops reading from the socket once twice this much is buffered.
        return await asyncio.open_connection(sock=sock, limit=receive_buffer)
    except BaseException:
        sock.close()
        raise


async def _read_page(reader: asyncio.StreamReader) -> None:
    """One answer with a Content-Length, read to its end (ValueError for anything else)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    if not head.startswith(b"HTTP/1.1 200 ") or len(lengths) != 1:
        raise ValueError("not a 200 with a Content-Length")
    await reader.readexactly(int(lengths[0].partition(b":")[2]))


class Attacker:
    """Keeps every group's connections open (see the module docstring) and counts what happened.

    Each connection is a task of its own: opened, watched until the proxy closes it, opened again
    after about a tick (0.5 to 1.5 ticks, so the reopening does not come in waves).
    """

    def __init__(self, port: int, attack: Sequence[Group]) -> None:
        self._port = port
        self._groups = attack
        self._slots: list[list[asyncio.StreamWriter | None]] = [[None] * g.connections for g in attack]
        self._tasks: list[asyncio.Task[None]] = []
        self._opening = asyncio.Semaphore(OPENING_AT_ONCE)
        self._first_tries = sum(g.connections for g in attack)
        self._all_tried = asyncio.Event()
        self._random = random.Random(22)
        self.opened = 0
        self.open_failed = 0
        self.closed_by_proxy = 0
        # The first line the proxy sent on connections it closed ("closed without an answer": none).
        self.answers: Counter[str] = Counter()

    def open_now(self) -> int:
        return sum(
            writer is not None and not writer.is_closing() for slots in self._slots for writer in slots
        )

    async def start(self) -> None:
        """Open every connection; returns once each has been tried once."""
        self._tasks = [
            asyncio.create_task(self._keep(number, slot))
            for number, group in enumerate(self._groups)
            for slot in range(group.connections)
        ]
        await self._all_tried.wait()

    async def trickle(self) -> None:
        """Every tick, each live connection of a group with a trickle sends it."""
        while True:
            await asyncio.sleep(TICK_S)
            for group, slots in zip(self._groups, self._slots, strict=True):
                if group.trickle:
                    for writer in slots:
                        if writer is not None and not writer.is_closing():
                            writer.write(group.trickle)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for slots in self._slots:
            for writer in slots:
                if writer is not None:
                    writer.close()

    async def _keep(self, number: int, slot: int) -> None:
        group = self._groups[number]
        first = True
        while True:
            opened = await self._open(group)
            if first:
                first = False
                self._first_tries -= 1
                if self._first_tries == 0:
                    self._all_tried.set()
            if opened is not None:
                reader, writer = opened
                self._slots[number][slot] = writer
                if not group.watched:
                    return  # held until the attack stops
                await self._watch(reader, writer)
                self._slots[number][slot] = None
            await asyncio.sleep(TICK_S * self._random.uniform(0.5, 1.5))

    async def _open(self, group: Group) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        writer: asyncio.StreamWriter | None = None
        async with self._opening:
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    reader, writer = await _connect(self._port, group.receive_buffer)
                    writer.write(group.opening)
                    if group.reads_page:
                        await _read_page(reader)
            except (
                TimeoutError,
                OSError,
                ValueError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ):
                self.open_failed += 1
                if writer is not None:
                    writer.close()
                return None
        self.opened += 1
        return reader, writer

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Waits for the proxy to close the connection; notes what it answered."""
        first = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                first = first or chunk
        self.closed_by_proxy += 1
        self.answers[
            first.split(b"\r\n", 1)[0][:12].decode(errors="replace") or "closed without an answer"
        ] += 1
        writer.close()


async def visit(port: int, request: bytes, timeout_s: float = VISIT_TIMEOUT_S) -> tuple[float, bytes] | None:
    """``request`` on a new connection, read until the proxy closes it (the request must say
    ``Connection: close``): seconds and the whole answer, or None without its end in time."""
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request)
            answer = await reader.read(-1)
    except (TimeoutError, OSError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - started, answer


def latency_summary(latencies: Sequence[float], failed: int) -> dict[str, Any]:
    """Share served and p50/p99 in ms of those served (None when none was)."""
    served = len(latencies)
    ordered = sorted(latencies)

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 2)

    return {
        "visits": served + failed,
        "served": served,
        "served_fraction": round(served / max(1, served + failed), 4),
        "p50_ms": ms(statistics.median(ordered) if ordered else None),
        "p99_ms": ms(ordered[min(served - 1, int(served * 0.99))] if ordered else None),
    }


async def visitors(port: int, path: str, seconds: float) -> dict[str, Any]:
    """``VISITORS`` visitors, each fetching ``path`` on a new connection after another for ``seconds``."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def visitor() -> None:
        nonlocal failed
        while time.monotonic() < deadline:
            found = await visit(port, request)
            if found is not None and found[1].startswith(b"HTTP/1.1 200 "):
                latencies.append(found[0])
            else:
                failed += 1
                if found is not None:
                    # A refusal at once (a closed connection): not a retry loop at full speed.
                    await asyncio.sleep(max(0.0, 0.1 - found[0]))

    await asyncio.gather(*(visitor() for _ in range(VISITORS)))
    return latency_summary(latencies, failed)


async def visitors_under_attack(mode: str, port: int, path: str, *, seconds: float) -> dict[str, Any]:
    """Attack 127.0.0.1:``port`` with ``mode``; the visitors' share served and latency meanwhile."""
    _raise_open_files_limit()
    attacker = Attacker(port, groups(mode, path))
    started = time.monotonic()
    trickling = asyncio.create_task(attacker.trickle())
    try:
        await attacker.start()
        opened_s = time.monotonic() - started
        open_at_start = attacker.open_now()
        await asyncio.sleep(SETTLE_S)
        found = await visitors(port, path, seconds)
    finally:
        trickling.cancel()
        open_at_end = attacker.open_now()
        attacker.stop()
    return {
        **found,
        "attack": {
            "mode": mode,
            "connections": sum(group.connections for group in groups(mode, path)),
            "open_at_start": open_at_start,
            "seconds_to_open": round(opened_s, 2),
            "open_at_end": open_at_end,
            "opened": attacker.opened,
            "open_failed": attacker.open_failed,
            "closed_by_proxy": attacker.closed_by_proxy,
            "answers": dict(attacker.answers.most_common()),
        },
        "seconds": seconds,
    }


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ATTACKS:
        sys.exit(f"usage: python bench/attacks.py {{{','.join(ATTACKS)}}} PORT [PATH [SECONDS]]")
    mode, port = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/"
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    print(json.dumps(asyncio.run(visitors_under_attack(mode, port, path, seconds=seconds)), indent=2))
