"""proxy.client_gate: one client's requests a few at a time, the rest in arrival order."""

from __future__ import annotations

import asyncio

import pytest

from proxy.client_gate import ClientGate
from proxy.errors import ClientBusy
from proxy.metrics import Metrics


async def entered(gate: ClientGate, client: str, order: list[str], name: str) -> None:
    await gate.enter(client)
    order.append(name)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_past_the_limit_a_client_waits_and_goes_in_arrival_order() -> None:
    """Limit 2: the third and fourth wait; each leave lets in the longest waiting, one at a time."""
    metrics = Metrics()
    gate = ClientGate(2, 5.0, metrics)
    order: list[str] = []
    tasks = [asyncio.create_task(entered(gate, "a", order, name)) for name in ("1", "2", "3", "4")]
    await settle()
    assert (order, gate.in_flight("a")) == (["1", "2"], 2)
    gate.leave("a")
    await settle()
    assert (order, gate.in_flight("a")) == (["1", "2", "3"], 2)
    gate.leave("a")
    await settle()
    assert order == ["1", "2", "3", "4"]
    for _ in range(2):
        gate.leave("a")
    await asyncio.gather(*tasks)
    assert gate.in_flight("a") == 0
    assert metrics.registry.get_sample_value("cc_sidecar_client_queued_total") == 2


async def test_clients_never_wait_for_each_other() -> None:
    """One client at its limit: another client's request goes in at once."""
    gate = ClientGate(1, 5.0, Metrics())
    await gate.enter("a")
    blocked = asyncio.create_task(gate.enter("a"))
    await asyncio.wait_for(gate.enter("b"), 1)
    assert (gate.in_flight("a"), gate.in_flight("b"), blocked.done()) == (1, 1, False)
    gate.leave("a")
    await blocked


async def test_a_waiter_cancelled_takes_no_turn() -> None:
    """The first waiter gives up: the turn goes to the next one, and nothing is left held after."""
    gate = ClientGate(1, 5.0, Metrics())
    order: list[str] = []
    await gate.enter("a")
    gone = asyncio.create_task(entered(gate, "a", order, "gone"))
    next_one = asyncio.create_task(entered(gate, "a", order, "next"))
    await settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    gate.leave("a")
    await next_one
    assert (order, gate.in_flight("a")) == (["next"], 1)
    gate.leave("a")
    assert gate.in_flight("a") == 0


async def test_a_turn_handed_to_a_request_cancelled_at_once_passes_on() -> None:
    """Cancelled in the same step as its turn came: the turn goes to the next waiter, not lost."""
    gate = ClientGate(1, 5.0, Metrics())
    order: list[str] = []
    await gate.enter("a")
    unlucky = asyncio.create_task(entered(gate, "a", order, "unlucky"))
    after = asyncio.create_task(entered(gate, "a", order, "after"))
    await settle()
    gate.leave("a")  # the turn is handed to "unlucky"...
    unlucky.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    await asyncio.wait_for(after, 1)
    assert (order, gate.in_flight("a")) == (["after"], 1)


async def test_a_waiter_past_the_wait_is_client_busy_and_takes_no_turn() -> None:
    """No turn within wait_s: ClientBusy (a 503 for the handler), and the next turn goes on as before."""
    gate = ClientGate(1, 0.05, Metrics())
    await gate.enter("a")
    with pytest.raises(ClientBusy):
        await gate.enter("a")
    gate.leave("a")
    assert gate.in_flight("a") == 0
    await asyncio.wait_for(gate.enter("a"), 1)
    assert gate.in_flight("a") == 1
