"""Three replicas of the sidecar, each for itself (memory) and on one Redis: what sharing saves.

Run by bench/run.py against its own upstream, emulator and redis-server (``python bench/replicas.py
--upstream URL --emulator URL --redis-port N --workdir DIR``); prints one JSON line:

- ``get_token``: GetToken calls (from the emulator's call log) for ``--customers`` new customers
  each visiting an editor page on all three replicas in turn, and for a burst of concurrent first
  requests (12 per customer) spread over the replicas, with ``memory`` and with ``redis``;
- ``editor``: one replica's editor page, requests one after another, with the token in its local
  cache vs fetched from Redis (another replica fetched it from the API): p50/p99 and the
  replica's CPU per request;
- ``redis_bytes_per_customer``: Redis' ``MEMORY USAGE`` of a customer's key, averaged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml
from run import BENCH_BUDGET, free_port, wait_for_port

USER_HEADER = "X-Shop-User"
GET_TOKEN = "StorefrontUsers_GetToken"
BURST_CUSTOMERS = 20
BURST_PER_CUSTOMER = 12
LATENCY_CUSTOMERS = 300
STORE_OPERATIONS = "cc_sidecar_store_operations_total{"
FAILED_OUTCOMES = ('outcome="error"', 'outcome="skipped"')


def sidecar_document(
    port: int, admin_port: int, upstream: str, emulator: str, store: dict[str, Any]
) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "access_log": True,  # as shipped: on stderr, which goes to the replica's log file
        "shutdown_grace_s": 1,
        "secret": "bench-secret-0123456789abcdef",
        # Thousands of customers from one loopback client: the budgets are not what is measured.
        "budget": BENCH_BUDGET,
        "customers_canvas": {
            "api_url": emulator,
            "client_id": "demo",
            "client_secret": "demo-secret",
            "tenant_id": 1,
        },
        "token_store": store,
        "storefronts": [
            {
                "name": "bench",
                "storefront_id": 1,
                "upstream": upstream,
                "trusted_networks": ["127.0.0.1/32"],
                "user": {"header": USER_HEADER},
                "editor_paths": ["/editor/*"],
                "inject": ["html"],
            }
        ],
    }


class Replicas:
    """Three `cc-sidecar run` processes on one config; stopped on exit."""

    def __init__(
        self, workdir: Path, name: str, upstream: str, emulator: str, store: dict[str, Any], cpu: int | None
    ) -> None:
        self.ports: list[int] = []
        self.admin_ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        for number in range(3):
            port = free_port()
            admin_port = free_port()
            config = workdir / f"{name}-{number}.yaml"
            config.write_text(yaml.safe_dump(sidecar_document(port, admin_port, upstream, emulator, store)))
            argv = [sys.executable, "-m", "proxy", "run", "--config", str(config)]
            if cpu is not None:
                argv = ["taskset", "-c", str(cpu), *argv]
            log = (workdir / f"{name}-{number}.log").open("wb")
            self.processes.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            log.close()
            self.ports.append(port)
            self.admin_ports.append(admin_port)
        for port, process in zip(self.ports, self.processes, strict=True):
            _wait_for_port(port, process)

    def url(self, number: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[number]}{path}"

    async def store_failures(self, session: aiohttp.ClientSession) -> int:
        """Shared-store calls that failed or were skipped (breaker open), on all three replicas.

        Each is work a replica did for itself, as designed while the store is unavailable: a
        burst's extra GetToken calls with none of these would be a lock that does not hold.
        """
        failures = 0
        for admin_port in self.admin_ports:
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith(STORE_OPERATIONS) and any(o in line for o in FAILED_OUTCOMES):
                        failures += int(float(line.rsplit(" ", 1)[1]))
        return failures

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    if not wait_for_port(port, process, 30):
        raise RuntimeError(f"a replica did not start listening on {port}")


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread in ns resolution (/proc/PID/stat counts 10 ms ticks,
    too coarse for a few hundred requests)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def _get_token_calls(session: aiohttp.ClientSession, emulator: str) -> int:
    async with session.get(emulator + "/_emulator/calls") as response:
        return sum(1 for call in await response.json() if call["operation"] == GET_TOKEN)


async def _editor(session: aiohttp.ClientSession, url: str, customer: str) -> bool:
    async with session.get(url, headers={USER_HEADER: customer}) as response:
        return response.status == 200 and b'id="cc-storefront-user"' in await response.read()


async def count_get_token(replicas: Replicas, emulator: str, tag: str, customers: int) -> dict[str, int]:
    """GetToken calls for customers visiting every replica in turn, and for a concurrent burst."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        before = await _get_token_calls(session, emulator)
        for n in range(customers):
            for number in range(3):
                assert await _editor(session, replicas.url(number, "/editor/mug"), f"{tag}-visit-{n}")
        visits = await _get_token_calls(session, emulator) - before
        before = await _get_token_calls(session, emulator)
        pages = await asyncio.gather(
            *(
                _editor(session, replicas.url(n % 3, "/editor/mug"), f"{tag}-burst-{n % BURST_CUSTOMERS}")
                for n in range(BURST_CUSTOMERS * BURST_PER_CUSTOMER)
            )
        )
        assert all(pages)
        burst = await _get_token_calls(session, emulator) - before
        store_failures = await replicas.store_failures(session)
    return {"visits": visits, "burst": burst, "store_failures": store_failures}


async def editor_latency(replicas: Replicas) -> dict[str, dict[str, float]]:
    """Replica 1's editor page with the token from Redis (first visit) and from its own cache."""
    customers = [f"latency-{n}" for n in range(LATENCY_CUSTOMERS)]
    pid = replicas.processes[1].pid
    results = {}
    async with aiohttp.ClientSession() as session:
        for customer in customers:  # replica 0 fetches every token from the API and stores it
            assert await _editor(session, replicas.url(0, "/editor/mug"), customer)
        for label in ("from_redis", "local_cache"):
            latencies = []
            cpu_before = _cpu_seconds(pid)
            for customer in customers:
                started = time.perf_counter()
                assert await _editor(session, replicas.url(1, "/editor/mug"), customer)
                latencies.append((time.perf_counter() - started) * 1000)
            cpu = _cpu_seconds(pid) - cpu_before
            quantiles = statistics.quantiles(latencies, n=100)
            results[label] = {
                "p50_ms": round(statistics.median(latencies), 3),
                "p99_ms": round(quantiles[98], 3),
                "cpu_us_per_request": round(cpu / len(customers) * 1e6),
            }
    return results


def redis_bytes_per_customer(port: int) -> float:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        sizes = [client.memory_usage(name) or 0 for name in client.scan_iter("cc-sidecar:customer:*")]
    return statistics.mean(sizes) if sizes else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--emulator", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=30)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    stores: dict[str, dict[str, Any]] = {
        "memory": {"backend": "memory"},
        "redis": {"backend": "redis", "redis": {"url": f"redis://127.0.0.1:{args.redis_port}/0"}},
    }
    result: dict[str, Any] = {"customers": args.customers, "get_token": {}}
    for name, store in stores.items():
        replicas = Replicas(args.workdir, f"replica-{name}", args.upstream, args.emulator, store, args.cpu)
        try:
            result["get_token"][name] = asyncio.run(
                count_get_token(replicas, args.emulator, name, args.customers)
            )
            if name == "redis":
                result["editor"] = asyncio.run(editor_latency(replicas))
                result["redis_bytes_per_customer"] = round(redis_bytes_per_customer(args.redis_port))
        finally:
            replicas.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
