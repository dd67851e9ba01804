"""What one client, and a storefront as a whole, may cost Customer's Canvas (contract, "Abuse").

Each new StorefrontUser and each merge is charged twice before any API work starts: to the
client (its address as resolved through ``trusted_networks``, see :func:`client_address`) and to
the storefront. Both are token buckets (``budget.client_per_minute`` with
``budget.client_burst``; ``budget.storefront_per_s``, its burst one second's worth), kept in the
token store: with Redis every replica charges the same buckets, on Redis' clock. While the shared
store is unavailable each replica counts for itself (fail-open: a page never waits for Redis).

A customer the token service already knows (cached, or known to exist) is never charged; the
charge is made only where API work for a customer not yet known would start. Over budget the
caller gets :class:`~proxy.errors.OverBudget` with the time to wait; it is counted in
``cc_sidecar_budget_exceeded_total{storefront,scope}`` and logged as a WARNING, which the log
writes at most once a minute.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Iterable

from proxy.config.model import BudgetSettings
from proxy.errors import OverBudget, StoreUnavailable
from proxy.metrics import Metrics
from proxy.routing import TrustedNetworks
from proxy.store import StoreKey, TokenStore
from proxy.store.memory import MemoryStore

log = logging.getLogger("proxy.budget")

# An IPv6 client is charged by its /64: one host is usually given a whole /64, so charging single
# addresses would give one client 2**64 budgets.
IPV6_CLIENT_PREFIX = 64


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: TrustedNetworks) -> str:
    """Who to charge: the peer, or, from a trusted peer, the nearest X-Forwarded-For hop not trusted.

    X-Forwarded-For is read from the right (the hop nearest the sidecar) past every trusted
    address; a hop that is not an address ends the walk at the last good one, so a client cannot
    choose whom it is charged as by writing into the header's left end. IPv6 clients are named by
    their /64 (:data:`IPV6_CLIENT_PREFIX`).
    """
    address = _address(peer)
    if address is None:
        return peer or "-"
    if trusted.contains(peer):
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            found = _address(hop)
            if found is None:
                break
            address = found
            if not trusted.contains(str(found)):
                break
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Budget:
    """Charges new StorefrontUsers and merges to a client and a storefront; see the module docstring."""

    def __init__(self, settings: BudgetSettings, store: TokenStore, metrics: Metrics) -> None:
        self._client_interval_s = 60.0 / settings.client_per_minute
        self._client_burst = settings.client_burst
        self._storefront_interval_s = 1.0 / settings.storefront_per_s
        self._storefront_burst = max(1, math.ceil(settings.storefront_per_s))
        self._store = store
        # Where buckets are counted while a shared store cannot answer: this process alone.
        self._local = store if not store.shared else MemoryStore()
        self._exceeded = metrics.budget_exceeded

    async def charge(self, storefront: str, client: str) -> None:
        """Charge one new user or merge; raise :class:`OverBudget` (nothing charged) past either budget.

        The client's bucket is asked first, so a client over its own budget never spends the
        storefront's.
        """
        wait = await self._spend(StoreKey("budget_client", f"{storefront}\0{client}"), client=True)
        if wait > 0:
            self._over(storefront, "client", wait)
        wait = await self._spend(StoreKey("budget_storefront", storefront), client=False)
        if wait > 0:
            self._over(storefront, "storefront", wait)

    async def _spend(self, key: StoreKey, *, client: bool) -> float:
        interval_s = self._client_interval_s if client else self._storefront_interval_s
        burst = self._client_burst if client else self._storefront_burst
        try:
            return await self._store.spend(key, interval_s, burst)
        except StoreUnavailable:
            return await self._local.spend(key, interval_s, burst)

    def _over(self, storefront: str, scope: str, wait: float) -> None:
        self._exceeded.labels(storefront, scope).inc()
        log.warning(
            "new StorefrontUsers and merges over the %s budget: editor pages go without a token for now",
            scope,
            extra={"scope": scope, "retry_after_s": round(wait, 1)},
        )
        raise OverBudget(scope, wait)
