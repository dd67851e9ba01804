"""proxy.budget: new StorefrontUsers and merges charged to the client and to the storefront."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator

import pytest

from proxy.budget import Budget, client_address
from proxy.config.model import BudgetSettings, RedisSettings
from proxy.errors import OverBudget
from proxy.metrics import Metrics
from proxy.routing import TrustedNetworks
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.fixtures.emulator import ManualClock
from tests.fixtures.redis import RedisProcess

INGRESS = TrustedNetworks([ipaddress.ip_network("10.0.0.0/8")])


async def admitted(budget: Budget, times: int, client: str = "192.0.2.1", storefront: str = "main") -> int:
    """How many of ``times`` charges the budget took."""
    taken = 0
    for _ in range(times):
        try:
            await budget.charge(storefront, client)
        except OverBudget:
            continue
        taken += 1
    return taken


def test_an_untrusted_peer_is_charged_as_itself_whatever_it_forwards() -> None:
    """X-Forwarded-For from a peer outside trusted_networks is ignored."""
    assert client_address("203.0.113.9", ["198.51.100.1"], INGRESS) == "203.0.113.9"


def test_a_trusted_peer_names_the_nearest_untrusted_hop() -> None:
    """From the ingress, the rightmost X-Forwarded-For hop outside trusted_networks is the client;
    what the client wrote to the left of it changes nothing."""
    assert client_address("10.0.0.2", ["1.1.1.1, 203.0.113.7, 10.0.0.5"], INGRESS) == "203.0.113.7"
    assert client_address("10.0.0.2", ["1.1.1.1", "203.0.113.7"], INGRESS) == "203.0.113.7"


def test_a_garbage_hop_ends_the_walk_at_the_last_address() -> None:
    """A hop that is not an address: the last good one (here the ingress's own peer) is charged."""
    assert client_address("10.0.0.2", ["203.0.113.7, not-an-ip"], INGRESS) == "10.0.0.2"


def test_ipv6_clients_are_charged_by_their_64() -> None:
    """Two addresses of one /64 are one client; an IPv4-mapped address is its IPv4 address."""
    first = client_address("2001:db8:1:2::1", [], INGRESS)
    assert first == client_address("2001:db8:1:2:ffff::9", [], INGRESS) == "2001:db8:1:2::/64"
    assert client_address("::ffff:192.0.2.5", [], INGRESS) == "192.0.2.5"


async def test_defaults_take_20_of_200_then_20_a_minute(manual_clock: ManualClock) -> None:
    """Defaults: of 200 charges at once one client gets 20; a minute later 20 more, no more."""
    budget = Budget(BudgetSettings(), MemoryStore(clock=manual_clock), Metrics())
    assert await admitted(budget, 200) == 20
    manual_clock.advance(60)
    assert await admitted(budget, 200) == 20


async def test_the_storefront_ceiling_holds_across_clients(manual_clock: ManualClock) -> None:
    """100 clients each charging once within one second: the storefront takes 20 (its per-second
    ceiling), another storefront is not affected."""
    budget = Budget(BudgetSettings(), MemoryStore(clock=manual_clock), Metrics())
    taken = 0
    for n in range(100):
        taken += await admitted(budget, 1, client=f"192.0.2.{n}")
    assert taken == 20
    assert await admitted(budget, 1, client="198.51.100.1", storefront="other") == 1


async def test_over_budget_is_counted_and_warned_once(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each charge held back is counted by scope; the WARNING names the scope."""
    metrics = Metrics()
    budget = Budget(BudgetSettings(client_burst=1), MemoryStore(clock=manual_clock), metrics)
    with caplog.at_level(logging.WARNING, "proxy.budget"):
        await admitted(budget, 4)
    assert (
        metrics.registry.get_sample_value(
            "cc_sidecar_budget_exceeded_total", {"storefront": "main", "scope": "client"}
        )
        == 3
    )
    assert {r.getMessage() for r in caplog.records} == {
        "new StorefrontUsers and merges over the client budget: editor pages go without a token for now"
    }


async def test_a_client_over_its_budget_spends_nothing_of_the_storefronts(manual_clock: ManualClock) -> None:
    """One client hammering past its own budget leaves the storefront's for everyone else."""
    budget = Budget(
        BudgetSettings(client_burst=1, storefront_per_s=2), MemoryStore(clock=manual_clock), Metrics()
    )
    assert await admitted(budget, 50, client="192.0.2.1") == 1
    assert await admitted(budget, 1, client="192.0.2.2") == 1


@pytest.fixture
async def replicas(redis_server: RedisProcess) -> AsyncIterator[list[Budget]]:
    """Three replicas' budgets on one Redis."""
    settings = RedisSettings.model_validate({"url": redis_server.url, "timeout_s": 1.0})
    stores = [
        RedisStore.from_settings(settings, secret="test-secret-0123456789abcdef", metrics=Metrics())
        for _ in range(3)
    ]
    yield [Budget(BudgetSettings(client_per_minute=1), store, Metrics()) for store in stores]
    for store in stores:
        await store.aclose()


async def test_replicas_on_redis_share_one_bucket(replicas: list[Budget]) -> None:
    """One client's 60 charges spread over three replicas: 20 taken in all."""
    taken = 0
    for n in range(60):
        taken += await admitted(replicas[n % 3], 1)
    assert taken == 20


async def test_redis_gone_counts_per_process(replicas: list[Budget], redis_server: RedisProcess) -> None:
    """Redis killed: each replica goes on charging its own bucket (fail-open, still bounded)."""
    redis_server.kill()
    assert await admitted(replicas[0], 30) == 20
