"""New customers' editor pages under a StorefrontUser-minting flood (issue #22; a `make bench` row).

A new customer's first editor page waits for Customer's Canvas: StorefrontUsers Get (404), Create
and GetToken, each some 100 ms in production. The emulator is made to answer every call
``API_DELAY_S`` late (its faults document), then:

1. unloaded: new logged-in customers (the trusted user header), each from an address of its own
   (X-Forwarded-For), arrive at ``RATE_PER_S`` for ``CUSTOMERS_S``, each asking for one editor page
   on a new connection;
2. the flood: ``wrk`` with ``FLOOD_CONNECTIONS`` connections sends editor pages from one address
   as fast as they are answered, every other one with a PHPSESSID never sent before, the rest with
   ``Cookie: junk=1`` (``flood.lua``); after ``RAMP_S`` the same arrival of new customers again.

Reported: the customers' p50/p99 and how many pages carried their token, in each phase; the
flood's requests and how they were answered; the StorefrontUsers it had created (the client budget
holds it: 20 at once, 20 a minute); and the sidecar's CPU use while the customers came through the
flood (with ``--pid``). ``bench/run.py`` runs it against a sidecar with the default budget, a
dedicated emulator, and ``trusted_networks`` holding 127.0.0.1. On its own:

    python bench/flood.py --port P --emulator URL [--admin HOST:PORT] [--pid PID]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from attacks import latency_summary, visit
from run import cpu_seconds, process_tree

BENCH_DIR = Path(__file__).resolve().parent
API_DELAY_S = 0.15
RATE_PER_S = 5
CUSTOMERS_S = 8
FLOOD_CONNECTIONS = 500
FLOOD_ADDRESS = "198.51.100.22"
RAMP_S = 2
# The flood lasts until the last customer's page is in, with room to spare.
FLOOD_S = RAMP_S + CUSTOMERS_S + 4
CUSTOMER_TIMEOUT_S = 30.0
EDITOR_PAGE = "/editor/mug"
USER_HEADER = "X-Shop-User"
INJECTED_MARK = b'id="cc-storefront-user"'
CREATE = "StorefrontUsers_Create"


def _customer_request(phase: int, number: int) -> bytes:
    """A new logged-in customer's first editor page, from an address of its own."""
    return (
        f"GET {EDITOR_PAGE} HTTP/1.1\r\nHost: 127.0.0.1\r\n{USER_HEADER}: real-{phase}-{number}\r\n"
        f"X-Forwarded-For: 10.{phase}.{number // 250}.{number % 250 + 1}\r\nConnection: close\r\n\r\n"
    ).encode()


async def new_customers(port: int, phase: int) -> dict[str, Any]:
    """``RATE_PER_S`` new customers a second for ``CUSTOMERS_S``, each not waiting for the others."""
    latencies: list[float] = []
    failed = 0
    with_token = 0

    async def customer(number: int) -> None:
        nonlocal failed, with_token
        found = await visit(port, _customer_request(phase, number), CUSTOMER_TIMEOUT_S)
        if found is None or not found[1].startswith(b"HTTP/1.1 200 "):
            failed += 1
            return
        latencies.append(found[0])
        with_token += INJECTED_MARK in found[1]

    arrivals = []
    started = time.monotonic()
    for number in range(RATE_PER_S * CUSTOMERS_S):
        await asyncio.sleep(max(0.0, started + number / RATE_PER_S - time.monotonic()))
        arrivals.append(asyncio.create_task(customer(number)))
    await asyncio.gather(*arrivals)
    return {**latency_summary(latencies, failed), "with_token": with_token}


async def _creates(session: aiohttp.ClientSession, emulator: str) -> dict[str, int]:
    """StorefrontUsers created so far: anonymous (only the flood's sessions are) and not."""
    async with session.get(f"{emulator}/_emulator/calls") as response:
        calls = await response.json()
    made = [call for call in calls if call["operation"] == CREATE and call["status"] == 201]
    anonymous = sum(bool(call["json"].get("isAnonymous")) for call in made)
    return {"anonymous": anonymous, "logged_in": len(made) - anonymous}


async def _budget_exceeded(session: aiohttp.ClientSession, admin: str | None) -> dict[str, float]:
    """cc_sidecar_budget_exceeded_total by scope, from the sidecar's /metrics."""
    if admin is None:
        return {}
    async with session.get(f"http://{admin}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cc_sidecar_budget_exceeded_total{"):
            scope = line.partition('scope="')[2].partition('"')[0]
            found[scope] = found.get(scope, 0) + float(line.rpartition(" ")[2])
    return found


async def _flood(port: int) -> dict[str, Any]:
    """wrk's flood (flood.lua) for FLOOD_S; its summary with the answers counted."""
    argv = ["wrk", "-t1", f"-c{FLOOD_CONNECTIONS}", f"-d{FLOOD_S}s", "--timeout", "30s"]
    argv += ["-s", str(BENCH_DIR / "flood.lua"), f"http://127.0.0.1:{port}{EDITOR_PAGE}", "--", FLOOD_ADDRESS]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), FLOOD_S + 60)
    report = next((line for line in out.decode().splitlines() if line.startswith("BENCH-JSON ")), None)
    if process.returncode != 0 or report is None:
        raise RuntimeError(f"wrk failed: {out.decode()}\n{err.decode()}")
    summary: dict[str, Any] = json.loads(report.removeprefix("BENCH-JSON "))
    summary["rps"] = round(summary["requests"] / (summary["duration_us"] / 1e6))
    return summary


async def customers_under_flood(
    port: int, emulator: str, admin: str | None = None, pid: int | None = None
) -> dict[str, Any]:
    """The two phases of the module docstring; the emulator's delay is cleared at the end."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{emulator}/_emulator/faults", json={"delay_s": API_DELAY_S}) as response:
            response.raise_for_status()
        try:
            # The sidecar's access token and connections: made once, not in any customer's time.
            await visit(port, _customer_request(0, 0), CUSTOMER_TIMEOUT_S)
            unloaded = await new_customers(port, 1)
            creates_before = await _creates(session, emulator)
            exceeded_before = await _budget_exceeded(session, admin)
            flooding = asyncio.create_task(_flood(port))
            await asyncio.sleep(RAMP_S)
            pids = process_tree(pid) if pid is not None else []
            cpu_before, wall_before = cpu_seconds(pids), time.monotonic()
            under_flood = await new_customers(port, 2)
            cpu_share = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - wall_before)
            flood = await flooding
            creates_after = await _creates(session, emulator)
            exceeded_after = await _budget_exceeded(session, admin)
        finally:
            async with session.post(f"{emulator}/_emulator/faults", json={}) as response:
                response.raise_for_status()
    flood["storefront_users_created"] = creates_after["anonymous"] - creates_before["anonymous"]
    flood["budget_exceeded"] = {
        scope: round(count - exceeded_before.get(scope, 0)) for scope, count in exceeded_after.items()
    }
    return {
        "api_delay_ms": round(API_DELAY_S * 1000),
        "rate_per_s": RATE_PER_S,
        "customers_s": CUSTOMERS_S,
        "flood_connections": FLOOD_CONNECTIONS,
        "unloaded": unloaded,
        "flood": under_flood,
        "flood_requests": flood,
        "sidecar_cpu_share": round(cpu_share, 3) if pids else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the sidecar's shop listener")
    parser.add_argument("--emulator", required=True, help="the emulator's URL (--enable-control)")
    parser.add_argument("--admin", help="the sidecar's admin_listen HOST:PORT (budget counters)")
    parser.add_argument("--pid", type=int, help="the sidecar's process id (its CPU use)")
    args = parser.parse_args()
    found = asyncio.run(customers_under_flood(args.port, args.emulator, args.admin, args.pid))
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
