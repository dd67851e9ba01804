"""Where state that must outlive one request lives: this process, or Redis shared by replicas.

One small interface, :class:`TokenStore`, with two implementations (modelled on oauth2-proxy's
session stores): :class:`~proxy.store.memory.MemoryStore` (the default, one process) and
:class:`~proxy.store.redis.RedisStore` (replicas with one ``secret`` and one Redis act as one
sidecar). ``tokens`` and ``identity`` ask the store and do not know which one they have.

The interface is a key-value map whose every entry expires, plus claims (a lock with a lease):

- :meth:`TokenStore.get` / :meth:`TokenStore.put` / :meth:`TokenStore.delete` hold opaque bytes
  for a :class:`StoreKey` until a TTL;
- :meth:`TokenStore.claim` takes a key only if nobody holds it (``SET NX PX``) and returns a
  :class:`Claim`; :meth:`TokenStore.release` frees it only while that claim still holds it, so a
  holder whose lease ran out never frees the next holder's claim. A holder that dies frees its
  claim by expiry.

A :class:`StoreKey` names what it indexes in the clear (``("customer", "1\\x007\\x00alice")``);
a shared store never writes that name, only an HMAC of it, and encrypts every value.

A shared store raises :class:`~proxy.errors.StoreUnavailable` when it cannot answer in time; the
caller then does what it would do with the memory store (local cache, local single-flight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


class StoreKey(NamedTuple):
    """What an entry is (``kind``: customer, lock, merge, session) and what it indexes (``name``)."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A key held by one caller until released or until its lease runs out."""

    key: StoreKey
    owner: str  # random, made by the store; who holds the key

    def __repr__(self) -> str:
        # The key's name indexes a customer or a session: never printed.
        return f"Claim(kind={self.key.kind!r})"


class TokenStore(Protocol):
    """Expiring bytes by key, and claims; see the module docstring."""

    # Whether other processes see what this store holds. A store only this process sees would
    # only repeat what the token service's own cache holds, so the service skips it then.
    shared: bool

    async def get(self, key: StoreKey) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        ...

    async def put(self, key: StoreKey, value: bytes, ttl_s: float) -> None:
        """Hold ``value`` under ``key`` for ``ttl_s`` seconds (replacing what was there)."""
        ...

    async def delete(self, key: StoreKey) -> None:
        """Drop ``key``, if present."""
        ...

    async def claim(self, key: StoreKey, ttl_s: float) -> Claim | None:
        """Take ``key`` for ``ttl_s`` seconds if nobody holds it; None when someone does."""
        ...

    async def release(self, claim: Claim) -> None:
        """Free the claimed key, only if ``claim`` still holds it."""
        ...

    async def spend(self, key: StoreKey, interval_s: float, burst: int) -> float:
        """Take one unit from the token bucket ``key`` (one unit back every ``interval_s``, at most
        ``burst`` held); 0 when taken, else the seconds until one will be there (nothing taken).

        The bucket is kept as its theoretical arrival time (GCRA), one number that expires when
        the bucket is full again.
        """
        ...

    async def aclose(self) -> None:
        """Close connections (at shutdown)."""
        ...
