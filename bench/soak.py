"""Soak: mixed traffic through the real sidecar for a bounded time, reported minute by minute.

Starts three processes on loopback only: the Storefront API emulator (``python -m proxy
emulator --enable-control``), a shop (bench/upstream.py's pages, plus an upload sink and a
WebSocket echo, served by this script with ``--serve-shop``) and the sidecar (``python -m proxy
run``). Then an aiohttp client pool sends, until time is up:

- plain product pages (pass-through);
- editor pages for 10,000 distinct logged-in customers (trusted ``X-Shop-User``), plain and gzip;
- editor pages for 10,000 distinct guests (a ``PHPSESSID`` each);
- 1 MB uploads (the shop answers with the length and SHA-256 it received);
- WebSocket echoes.

Every answer is checked (status, exactly one element naming the right customer, the upload's
hash, the echo); anything else counts as an error. Per minute it reports requests served, errors
(the goal is 0), p99 latency and the sidecar's RSS (VmRSS of /proc/PID/status); at the end a
table and ``bench/soak-results.json``. The sidecar is stopped with SIGTERM and must exit 0. Its
access log is on, as shipped: after the stop, its stderr file must hold one access line for each
request its /metrics counted (``cc_sidecar_requests_total``), none dropped.

Usage: ``python bench/soak.py [--minutes 10] [--concurrency 32] [--output PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from run import BENCH_BUDGET, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
USER_HEADER = "X-Shop-User"
CUSTOMERS = 10_000
UPLOAD = hashlib.sha256(b"soak").digest() * (1024 * 1024 // 32)  # 1 MiB
UPLOAD_SHA = hashlib.sha256(UPLOAD).hexdigest()
ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
# The traffic mix: kind -> weight.
MIX = {
    "plain": 40,
    "editor_customer": 20,
    "editor_customer_gz": 5,
    "editor_guest": 20,
    "upload_1mb": 5,
    "websocket": 10,
}
SERVICE_START_S = 30


# -- the shop (``--serve-shop``) ---------------------------------------------------------------


def create_shop_app() -> web.Application:
    """bench/upstream.py's pages, plus ``POST /upload`` (hash of the body) and ``GET /ws`` (echo)."""
    sys.path.insert(0, str(BENCH))
    from upstream import create_upstream_app  # bench/upstream.py, the benchmark's shop

    app = create_upstream_app()

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            length += len(chunk)
        return web.json_response({"length": length, "sha256": digest.hexdigest()})

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", echo)
    return app


async def serve_shop(port: int) -> None:
    runner = web.AppRunner(create_shop_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    print(f"shop listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- processes ---------------------------------------------------------------------------------


def start(name: str, argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


async def wait_for(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + SERVICE_START_S
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode} before it was ready")
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{name} was not ready within {SERVICE_START_S} s")


def sidecar_config(workdir: Path, port: int, admin: int, shop: int, api: int) -> Path:
    document = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "access_log": True,  # as shipped: on stderr (the sidecar.log file here)
        "shutdown_grace_s": 10,
        "secret": "soak-secret-0123456789abcdef",
        # Thousands of customers from one loopback client: the budgets are not what is measured.
        "budget": BENCH_BUDGET,
        "customers_canvas": {
            "api_url": f"http://127.0.0.1:{api}",
            "client_id": "demo",
            "client_secret": "demo-secret",
            "tenant_id": 1,
        },
        "storefronts": [
            {
                "name": "soak",
                "storefront_id": 1,
                "upstream": f"http://127.0.0.1:{shop}",
                "trusted_networks": ["127.0.0.1/32"],
                "user": {"header": USER_HEADER},
                "session_cookie": "PHPSESSID",
                "editor_paths": ["/editor/*", "/editor-gz/*"],
                "inject": ["html"],
            }
        ],
    }
    path = workdir / "sidecar.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- load --------------------------------------------------------------------------------------


@dataclass
class Minute:
    served: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)
    rss_kib: int | None = None


class Bad(Exception):
    """An answer that is not what it must be."""


def check_element(body: bytes, user_id: str | None) -> None:
    found = ELEMENT.findall(body)
    if len(found) != 1:
        raise Bad(f"{len(found)} elements")
    payload = json.loads(found[0])
    if user_id is not None and payload["userId"] != user_id:
        raise Bad("element for another customer")
    if user_id is None and not payload["userId"].startswith("anon-"):
        raise Bad("guest element without an anon- id")


async def one_request(client: aiohttp.ClientSession, base: str, kind: str, rng: random.Random) -> None:
    if kind == "plain":
        async with client.get(f"{base}/product") as response:
            body = await response.read()
            if response.status != 200 or len(body) != 20 * 1024:
                raise Bad(f"plain: {response.status}")
    elif kind in ("editor_customer", "editor_customer_gz"):
        user = f"customer-{rng.randrange(CUSTOMERS)}"
        path = "/editor-gz/mug" if kind.endswith("_gz") else "/editor/mug"
        async with client.get(f"{base}{path}", headers={USER_HEADER: user}) as response:
            if response.status != 200:
                raise Bad(f"editor: {response.status}")
            check_element(await response.read(), user)
    elif kind == "editor_guest":
        cookie = f"PHPSESSID=guest-{rng.randrange(CUSTOMERS)}"
        async with client.get(f"{base}/editor/mug", headers={"Cookie": cookie}) as response:
            if response.status != 200:
                raise Bad(f"guest editor: {response.status}")
            check_element(await response.read(), None)
    elif kind == "upload_1mb":
        async with client.post(f"{base}/upload", data=UPLOAD) as response:
            answer = await response.json()
            if response.status != 200 or answer != {"length": len(UPLOAD), "sha256": UPLOAD_SHA}:
                raise Bad(f"upload: {response.status}")
    elif kind == "websocket":
        async with client.ws_connect(f"{base}/ws") as ws:
            text = f"ping-{rng.random()}"
            await ws.send_str(text)
            message = await ws.receive(timeout=10)
            if message.type is not aiohttp.WSMsgType.TEXT or message.data != text:
                raise Bad("websocket echo")
    else:
        raise AssertionError(kind)


async def worker(
    client: aiohttp.ClientSession, base: str, minutes: list[Minute], started: float, until: float, seed: int
) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items(), strict=True)
    while (now := time.monotonic()) < until:
        kind = rng.choices(kinds, weights)[0]
        minute = minutes[min(int((now - started) // 60), len(minutes) - 1)]
        began = time.perf_counter()
        try:
            await asyncio.wait_for(one_request(client, base, kind, rng), timeout=30)
        except (Bad, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            minute.errors += 1
            minute.error_kinds[f"{kind}: {type(exc).__name__}: {exc}"[:120]] += 1
            continue
        minute.latencies.append(time.perf_counter() - began)
        minute.served += 1
        minute.kinds[kind] += 1


async def sample_rss(pid: int, minutes: list[Minute], started: float, until: float) -> None:
    """The sidecar's RSS at the end of each minute (the last sample wins within a minute)."""
    while (now := time.monotonic()) < until:
        index = min(int((now - started) // 60), len(minutes) - 1)
        minutes[index].rss_kib = rss_kib(pid)
        await asyncio.sleep(1)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class Ports:
    api: int = field(default_factory=free_port)
    shop: int = field(default_factory=free_port)
    sidecar: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)


def start_services(workdir: Path, ports: Ports) -> dict[str, subprocess.Popen[bytes]]:
    """The emulator, the shop and the sidecar, each a process of its own, on loopback."""
    python = sys.executable
    emulator = [
        "-m",
        "proxy",
        "emulator",
        "--enable-control",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.api),
    ]
    shop = [str(Path(__file__).resolve()), "--serve-shop", "--port", str(ports.shop)]
    config = sidecar_config(workdir, ports.sidecar, ports.admin, ports.shop, ports.api)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    processes["emulator"] = start("emulator", [python, *emulator], workdir)
    processes["shop"] = start("shop", [python, *shop], workdir)
    processes["sidecar"] = start("sidecar", [python, "-m", "proxy", "run", "--config", str(config)], workdir)
    return processes


def stop_services(processes: dict[str, subprocess.Popen[bytes]]) -> int | None:
    """SIGTERM to all; the sidecar's exit code (None if it had to be killed)."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes[name] = None
    return codes.get("sidecar")


async def load(
    args: argparse.Namespace, ports: Ports, processes: dict[str, subprocess.Popen[bytes]]
) -> tuple[list[Minute], float, dict[str, int]]:
    """Wait until every service answers, then send the mix until time is up."""
    await wait_for(f"http://127.0.0.1:{ports.api}/_emulator/faults", processes["emulator"], "emulator")
    await wait_for(f"http://127.0.0.1:{ports.shop}/product", processes["shop"], "shop")
    await wait_for(f"http://127.0.0.1:{ports.admin}/readyz", processes["sidecar"], "sidecar")
    minutes = [Minute() for _ in range(max(1, math.ceil(args.minutes)))]
    started = time.monotonic()
    until = started + args.minutes * 60
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        base = f"http://127.0.0.1:{ports.sidecar}"
        await asyncio.gather(
            sample_rss(processes["sidecar"].pid, minutes, started, until),
            *(worker(client, base, minutes, started, until, seed) for seed in range(args.concurrency)),
        )
        elapsed = time.monotonic() - started
        async with client.get(f"http://127.0.0.1:{ports.admin}/metrics") as response:
            counted = sidecar_counts(await response.text())
    return minutes, elapsed, counted


def sidecar_counts(metrics: str) -> dict[str, int]:
    """Requests the sidecar counted (every status) and access lines it dropped, from /metrics."""
    counts = {"requests": 0.0, "dropped": 0.0}
    for line in metrics.splitlines():
        if line.startswith("cc_sidecar_requests_total{"):
            counts["requests"] += float(line.rpartition(" ")[2])
        elif line.startswith("cc_sidecar_access_log_dropped_total "):
            counts["dropped"] += float(line.rpartition(" ")[2])
    return {name: round(value) for name, value in counts.items()}


def access_lines(log_path: Path) -> int:
    """Access lines in the sidecar's stderr file."""
    with log_path.open(encoding="utf-8", errors="replace") as lines:
        return sum(1 for line in lines if '"logger": "proxy.access"' in line)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cc-soak-"))
    ports = Ports()
    print(
        f"soaking for {args.minutes} min with {args.concurrency} clients; logs in {workdir}",
        file=sys.stderr,
        flush=True,
    )
    processes = start_services(workdir, ports)
    try:
        minutes, elapsed, counted = asyncio.run(load(args, ports, processes))
    finally:
        exit_code = stop_services(processes)
    # After the SIGTERM drain: the sidecar has written its last batch.
    lines = access_lines(workdir / "sidecar.log")

    rows = [
        {
            "minute": number + 1,
            "served": minute.served,
            "errors": minute.errors,
            "p99_ms": None if (value := p99(minute.latencies)) is None else round(value * 1000, 1),
            "rss_mib": None if minute.rss_kib is None else round(minute.rss_kib / 1024, 1),
            "kinds": dict(minute.kinds),
            "error_kinds": dict(minute.error_kinds.most_common(10)),
        }
        for number, minute in enumerate(minutes)
    ]
    return {
        "minutes_requested": args.minutes,
        "elapsed_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "mix": MIX,
        "customers": CUSTOMERS,
        "served": sum(row["served"] for row in rows),
        "errors": sum(row["errors"] for row in rows),
        "sidecar_exit_code": exit_code,
        "sidecar_requests": counted["requests"],
        "access_lines": lines,
        "access_lines_dropped": counted["dropped"],
        "per_minute": rows,
        "logs": str(workdir),
    }


def print_table(results: dict[str, Any]) -> None:
    print(f"{'minute':>6} {'served':>8} {'errors':>6} {'p99 ms':>8} {'RSS MiB':>8}")
    for row in results["per_minute"]:
        p99_ms = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
        rss = "-" if row["rss_mib"] is None else f"{row['rss_mib']:.1f}"
        print(f"{row['minute']:>6} {row['served']:>8} {row['errors']:>6} {p99_ms:>8} {rss:>8}")
    print(
        f"total: {results['served']} served, {results['errors']} errors in {results['elapsed_s']} s; "
        f"sidecar exit code {results['sidecar_exit_code']}"
    )
    print(
        f"access log: {results['access_lines']} lines for {results['sidecar_requests']} requests the sidecar"
        f" counted; {results['access_lines_dropped']} dropped"
    )
    for row in results["per_minute"]:
        for kind, count in row["error_kinds"].items():
            print(f"  minute {row['minute']}: {count} x {kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once (default 32)")
    parser.add_argument("--output", type=Path, default=BENCH / "soak-results.json")
    parser.add_argument("--serve-shop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_shop:
        asyncio.run(serve_shop(args.port))
        return 0
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be more than 0 and at most a day")
    os.chdir(ROOT)
    results = soak(args)
    print_table(results)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0 if passed(results) else 1


def passed(results: dict[str, Any]) -> bool:
    """No error, exit code 0, and an access line for every request."""
    return (
        results["errors"] == 0
        and results["sidecar_exit_code"] == 0
        and results["access_lines"] == results["sidecar_requests"]
    )


if __name__ == "__main__":
    sys.exit(main())
