"""The in-process store: what one process alone needs (the default ``token_store.backend``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from cachetools import LRUCache

from proxy.store import Claim, StoreKey

# Entries held at most; the least recently used go first (an entry is a session's memory of the
# shop's response header, or a claim: well under 1 KB each).
MEMORY_STORE_SIZE = 200_000


class MemoryStore:
    """Expiring entries in an LRU map of this process; claims are entries holding their owner."""

    shared = False

    def __init__(self, size: int = MEMORY_STORE_SIZE, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: LRUCache[StoreKey, tuple[bytes, float]] = LRUCache(maxsize=size)
        self._clock = clock

    async def get(self, key: StoreKey) -> bytes | None:
        return self._live(key)

    async def put(self, key: StoreKey, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (value, self._clock() + ttl_s)

    async def delete(self, key: StoreKey) -> None:
        self._entries.pop(key, None)

    async def claim(self, key: StoreKey, ttl_s: float) -> Claim | None:
        if self._live(key) is not None:
            return None
        claim = Claim(key, secrets.token_hex(16))
        self._entries[key] = (claim.owner.encode(), self._clock() + ttl_s)
        return claim

    async def release(self, claim: Claim) -> None:
        if self._live(claim.key) == claim.owner.encode():
            del self._entries[claim.key]

    async def spend(self, key: StoreKey, interval_s: float, burst: int) -> float:
        now = self._clock()
        held = self._live(key)
        due = max(float(held), now) if held is not None else now
        # How far the bucket is past its burst, written so that a new one (due == now) is exactly
        # 0 whatever the clock reads: (now + i) - b * i - now can round to 1e-12 and refuse it.
        wait = (due - now) - (burst - 1) * interval_s
        if wait > 0:
            return wait
        self._entries[key] = (repr(due + interval_s).encode(), due + interval_s)
        return 0.0

    async def aclose(self) -> None:
        self._entries.clear()

    def _live(self, key: StoreKey) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        return value
