"""A logged-in session merges at most one guest (contract, "Identity").

A browser that logs in carries one guest cookie, the one it was given before; only tampering
brings a second. Without a limit, one login could swap harvested guest cookies into its session
and have each merged (a MergeAnonymous per cookie). :class:`MergedSessions` remembers, in the
token store (so every replica sees it), which guest each logged-in session merges: that guest's
requests go on to the merge (they share one), any other guest cookie in the session is cleared
without a merge.

A session is the shop's session cookie when the request has one (its key, never the id itself),
else the logged-in customer: a shop whose customers are named by a trusted gateway without a
session cookie of its own then merges one guest per customer per :data:`MERGED_SESSION_TTL_S`.
A merge that failed (or was deferred by the budget) frees the session, so a later request
retries it. When the shared store is unavailable this replica's own memory decides.
"""

from __future__ import annotations

from cachetools import TTLCache

from proxy.errors import StoreUnavailable
from proxy.store import StoreKey, TokenStore

# How long a session's merge is remembered: longer than a shop session usually lives.
MERGED_SESSION_TTL_S = 24 * 3600.0
# Sessions remembered by this replica while the shared store is unavailable.
_LOCAL_SESSIONS = 100_000


def session_of(storefront_id: int, session_key: str | None, customer_id: str) -> str:
    """What names a logged-in session: its session key, else the customer (see the module docstring)."""
    if session_key is not None:
        return f"session\0{session_key}"
    return f"customer\0{storefront_id}\0{customer_id}"


class MergedSessions:
    """Which guest each logged-in session merges; see the module docstring."""

    def __init__(self, store: TokenStore, ttl_s: float = MERGED_SESSION_TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._local: TTLCache[str, str] = TTLCache(maxsize=_LOCAL_SESSIONS, ttl=ttl_s)

    async def admit(self, session: str, guest_id: str) -> bool:
        """Whether this guest may be merged in this session: the first one to come, or the same again.

        The first guest claims the session atomically (two guests arriving at once on two
        replicas: one wins); the claim then names the guest, so the same guest's concurrent
        requests join its merge.
        """
        try:
            claim = await self._store.claim(StoreKey("merge_session", session), self._ttl_s)
            if claim is not None:
                self._local[session] = guest_id
                guest_key = StoreKey("merge_session_guest", session)
                await self._store.put(guest_key, guest_id.encode(), self._ttl_s)
                return True
            merging = await self._store.get(StoreKey("merge_session_guest", session))
        except StoreUnavailable:
            first = self._local.setdefault(session, guest_id)
            return first == guest_id
        return merging is not None and merging.decode() == guest_id

    async def failed(self, session: str) -> None:
        """The session's merge did not happen (failed, deferred): a later request may merge again."""
        self._local.pop(session, None)
        try:
            await self._store.delete(StoreKey("merge_session_guest", session))
            await self._store.delete(StoreKey("merge_session", session))
        except StoreUnavailable:
            return
