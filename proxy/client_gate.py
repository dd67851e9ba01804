"""One client's editor pages and token requests are worked on a few at a time; the rest wait their turn.

A flood from one address (500 connections asking for editor pages, each a first visit with a
fresh session cookie) costs Customer's Canvas nothing past the budget (:mod:`proxy.budget`), but
every one of its pages is still routed, sent to the shop, given an element and written, all on
the one event loop. Another customer's first page needs four steps of its own on that loop (the
shop, then Get, Create and GetToken), and each waited its turn behind the flood's hundreds:
seconds instead of half of one. So at most ``budget.client_pages_at_once`` of one client's editor
pages and ``/.cc-sidecar/`` requests are worked on at once; the others wait, first come first
served, costing nothing while they wait. A client is its address as the budget names it (through
``trusted_networks``).

nginx's counterpart, ``limit_conn``, refuses the excess with a 503 at once; here it waits up to
``budget.client_wait_s`` first (then the 503, :class:`~proxy.errors.ClientBusy`), so a shop whose
customers all arrive from one address it does not trust (an ingress whose X-Forwarded-For is not
believed) is slowed when more pages than the limit load at once, and refused only past the wait,
as it would be under a flood. Pages other than editor pages never wait here.
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.errors import ClientBusy
from proxy.metrics import Metrics


class ClientGate:
    """At most ``limit`` requests of one client in flight; more wait in arrival order."""

    __slots__ = ("_in_flight", "_limit", "_queued", "_wait_s", "_waiting")

    def __init__(self, limit: int, wait_s: float, metrics: Metrics) -> None:
        self._limit = limit
        self._wait_s = wait_s
        self._in_flight: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._queued = metrics.client_queued

    def try_enter(self, client: str) -> bool:
        """Take a turn at once if one is free and nobody of ``client`` waits (no coroutine made)."""
        in_flight = self._in_flight.get(client, 0)
        if in_flight < self._limit and client not in self._waiting:
            self._in_flight[client] = in_flight + 1
            return True
        return False

    async def enter(self, client: str) -> None:
        """Return once this request of ``client`` may be worked on; :meth:`leave` when it is done.

        Raises :class:`~proxy.errors.ClientBusy` when its turn has not come within ``wait_s``.
        Cancelled (or out of time) while waiting, the request takes no turn (and passes on one
        handed to it at that moment).
        """
        if self.try_enter(client):
            return
        self._queued.inc()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(turn)
        try:
            async with asyncio.timeout(self._wait_s):
                try:
                    await turn
                except asyncio.CancelledError:
                    if turn.done() and not turn.cancelled():
                        self.leave(client)  # the turn was handed over as it was cancelled: pass it on
                    else:
                        self._forget(client, turn)
                    raise
            return
        except TimeoutError:
            pass
        # Outside the except block: no TimeoutError context (compiled, ``from None`` keeps it).
        raise ClientBusy(f"no turn within {self._wait_s:g} s")

    def leave(self, client: str) -> None:
        """One request of ``client`` is done: its turn goes to the first one waiting, if any."""
        waiting = self._waiting.get(client)
        while waiting:
            turn = waiting.popleft()
            if not turn.done():
                if not waiting:
                    del self._waiting[client]
                turn.set_result(None)  # the turn passes on: in flight stays the same
                return
        self._waiting.pop(client, None)
        in_flight = self._in_flight[client] - 1
        if in_flight:
            self._in_flight[client] = in_flight
        else:
            del self._in_flight[client]

    def in_flight(self, client: str) -> int:
        """Requests of ``client`` being worked on now."""
        return self._in_flight.get(client, 0)

    def _forget(self, client: str, turn: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(client)
        if waiting is None:
            return
        try:
            waiting.remove(turn)
        except ValueError:
            return
        if not waiting:
            del self._waiting[client]
