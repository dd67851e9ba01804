"""`make bench`: cc-sidecar against nginx and a bare upstream, on loopback, reproducibly.

What runs (all on 127.0.0.1, free ports, one temporary directory):

    wrk (core 0) ──> upstream                      direct: the ceiling
                 ──> nginx ──> upstream            the reverse proxy to compare with
                 ──> bare aiohttp proxy ──> ...    reference: Python + aiohttp's own floor
                 ──> cc-sidecar ──> upstream       /product (pass-through, 20 KB), /product-small
                          └──> emulator            (1 KB), /editor/mug and /editor-gz/mug (token
                                                   injected; gzip again to a client that accepts
                                                   it, plain to one that does not)

The servers share the other core (``taskset``), so the load generator never takes their CPU.
Targets are measured in interleaved rounds (A B C ... A B C ...) and the medians are reported, so
a slow moment of the machine spreads over all targets instead of sinking one. Then, on the running
sidecar, a burst of first requests from new customers counts the Storefront API's GetToken calls
(from the emulator's call log), and a fresh interpreter measures resident memory per cached token.
With redis-server installed, a second cc-sidecar on a Redis token store is measured on the editor
page too (its cached page must cost what the memory store's does), and bench/replicas.py runs
three replicas with each store: GetToken calls, editor page from the local cache vs from Redis,
Redis bytes per customer. Then issue #22's attacks (bench/attacks.py): nginx and cc-sidecar, each
at a 1024 open-files limit in front of the same shop of 16 gunicorn sync workers, under each
attack in turn while visitors fetch a page; and new customers' editor pages on a sidecar with the
default budget, unloaded and then under a flood minting StorefrontUsers (bench/flood.py).

Prints one table and the ratios against their targets; writes the same to bench/results.json.
Exit status: 0 all targets met, 1 a target missed, 2 the benchmark itself failed.
Environment: BENCH_SECONDS (per round and target, default 5), BENCH_ROUNDS (default 3),
BENCH_TOKENS (cached tokens for the memory probe, default 100000), BENCH_ATTACK_SECONDS (visitors
under each attack, per proxy, default 12), BENCH_PROFILE=1 (after the rounds, profile the sidecar
with py-spy under load on /product and /editor/mug: hot spots in the report, folded stacks in
bench/profile-*.txt; `pip install py-spy` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import jwt
import yaml
from attacks import ATTACKS, VISIT_TIMEOUT_S

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results.json"

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CACHED_TOKENS = int(os.environ.get("BENCH_TOKENS", "100000"))
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")
CONNECTIONS = 50
WRK_THREADS = 1
WARM_UP_SECONDS = 1
NEW_CUSTOMERS = 100
REQUESTS_PER_CUSTOMER = 10
# Whole-run guard: every step is bounded on its own; this stops anything that still hangs.
DEADLINE_S = 900

USER_HEADER = "X-Shop-User"
# What a browser sends a shop: a session and a handful of analytics and consent cookies (~0.4 KB).
BROWSER_COOKIES = "; ".join(
    [
        "PHPSESSID=2d1f0c6a9b8e4f7a3c5d1e0f9a8b7c6d",
        *(f"_ga_{n}=GS1.1.17000000{n}.4.1.1700001234.0.0.0" for n in range(5)),
        "_gid=GA1.2.123456789.1700000000",
        "cookie_consent=%7B%22necessary%22%3Atrue%2C%22analytics%22%3Atrue%7D",
        "cart_id=8f7e6d5c-4b3a-2918-0706-050403020100",
    ]
)
BENCH_USER = "bench-user"
# The Redis token store is benchmarked when Debian's redis-server is installed (make unit installs it).
REDIS_SERVER = shutil.which("redis-server")
GET_TOKEN = "StorefrontUsers_GetToken"
INJECTED_MARK = b'id="cc-storefront-user"'
# A page served while its customer's token is being renewed (issue #21): a token of this lifetime,
# issued so that it stops being handed out RENEWAL_STALE_IN_S after the bench gets it and its
# renewal falls due timeout_s (5 s) before that; the emulator's GetToken hangs meanwhile, so the
# renewal the first page past that point starts runs (and holds its single flight) throughout.
RENEWAL_USER = "bench-renewal"
RENEWAL_LIFETIME_S = 400
RENEWAL_STALE_IN_S = 10.0
RENEWAL_SECONDS = 4
GZ_PAGE = "/editor-gz/mug"
SMALL = "/product-small"

# Targets: the ratio's numerator over its denominator must reach the minimum.
MIN_SIDECAR_VS_NGINX = 0.5
# The 1 KB page, where the per-request cost shows: both proxies with their default access logs.
MIN_SIDECAR_VS_NGINX_SMALL = 0.55
# CPU per access-log line, compiled (bench/access_log.py).
MAX_ACCESS_LINE_US = 3.0
MIN_EDITOR_VS_PASS_THROUGH = 0.8
MAX_BYTES_PER_TOKEN = 1536
# Thousands of customers from one loopback client: the budgets are not what is measured (except
# under the minting flood, whose sidecar runs with the defaults). That includes the client gate:
# at its default (32 pages of one client at once) 18 of wrk's 50 connections would queue for an
# editor page, and the editor rows would time the queue, not the injection.
BENCH_BUDGET = {"client_burst": 1_000_000, "storefront_per_s": 1_000_000, "client_pages_at_once": 1_000_000}

# Issue #22's attacks (bench/attacks.py), each against nginx and cc-sidecar in front of a shop of
# SHOP_WORKERS gunicorn sync workers, both proxies at an OPEN_FILES limit; visitors for
# ATTACK_SECONDS each. Visitors under attack: at least this share served, and a p99 of at most twice
# nginx's or nginx's plus MAX_VISITORS_P99_EXTRA_MS, whichever is larger.
ATTACK_SECONDS = float(os.environ.get("BENCH_ATTACK_SECONDS", "12"))
OPEN_FILES = 1024
SHOP_WORKERS = 16
NGINX_DEFAULT_WORKER_CONNECTIONS = 512
MIN_VISITORS_SERVED = 0.975
MAX_VISITORS_P99_EXTRA_MS = 100
# New customers' editor pages under the minting flood (bench/flood.py): p50 at most this times
# the unloaded p50 of the same run.
MAX_FLOOD_P50_FACTOR = 2


# -- processes ------------------------------------------------------------------------------


# Ports free_port handed out in this run: asked twice in a row, the kernel may give the same one.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it), never one handed out before."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once something accepts on ``port``; False if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Service:
    """One server the benchmark started."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The process and all its descendants (nginx: master and worker)."""
        return process_tree(self.process.pid)


class Services:
    """Starts servers pinned to a core; stops every one of them on exit, whatever happened.

    Each server gets its own session (process group), so a Ctrl-C in the terminal reaches only
    this script, which then stops the groups itself: nothing is left behind.
    """

    def __init__(self, workdir: Path, cpu: int | None) -> None:
        self._workdir = workdir
        self._cpu = cpu
        self._started: list[Service] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        timeout_s: float = 30,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> Service:
        """Start ``argv``; ``open_files``: its open-files limit, soft and hard (else this script's).

        Both limits, since cc-sidecar raises its soft limit to the hard one at start-up.
        """
        if self._cpu is not None:
            argv = ["taskset", "-c", str(self._cpu), *argv]

        def limit_open_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        log_path = self._workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                preexec_fn=limit_open_files if open_files is not None else None,
            )
        service = Service(name, process, port, log_path)
        self._started.append(service)
        if not wait_for_port(port, process, timeout_s):
            raise BenchError(f"{name} did not start listening on {port}:\n{tail(log_path)}")
        return service

    def stop_all(self) -> None:
        for service in reversed(self._started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(self._started):
            try:
                service.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(timeout=5)
        self._started.clear()


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a check failed)."""


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/PID/task/*/children."""
    pids = [pid]
    for parent in pids:  # grows while iterating: breadth first
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids.extend(int(child) for child in (task / "children").read_text().split())
    return pids


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is fields[0]
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / CLOCK_TICKS


# -- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One URL under load, and the process whose CPU time it costs."""

    key: str
    label: str
    service: Service
    path: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.service.url + self.path


@dataclass
class Sample:
    """One wrk run against one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    requests: int
    errors: int
    # Response bytes on the wire (status line, headers and body) per request.
    bytes_per_request: float


def run_wrk(target: Target, seconds: int, cpu: int | None) -> Sample:
    """Load ``target`` for ``seconds`` with wrk; CPU time is read around the run."""
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(BENCH_DIR / "wrk_report.lua")]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(target.url)
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    pids = target.service.pids()
    cpu_before = cpu_seconds(pids)
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    cpu_used = cpu_seconds(pids) - cpu_before
    report = next((line for line in finished.stdout.splitlines() if line.startswith("BENCH-JSON ")), None)
    if finished.returncode != 0 or report is None:
        raise BenchError(f"wrk failed on {target.url}:\n{finished.stdout}\n{finished.stderr}")
    summary = json.loads(report.removeprefix("BENCH-JSON "))
    requests = int(summary["requests"])
    latency = summary["latency_us"]
    return Sample(
        rps=requests / (summary["duration_us"] / 1e6),
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        cpu_us_per_request=cpu_used / max(requests, 1) * 1e6,
        requests=requests,
        bytes_per_request=int(summary["bytes"]) / max(requests, 1),
        errors=sum(int(count) for count in summary["errors"].values()),
    )


# -- checks and bursts (an aiohttp client in this process) -------------------------------------


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    async with session.get(url, headers=headers or {}) as response:
        return response.status, await response.read(), dict(response.headers)


async def check_targets(upstream: Service, proxies: Sequence[Service], sidecar: Service) -> int:
    """Every target answers what it should; warms the bench user's token; returns its length."""
    user = {USER_HEADER: BENCH_USER}
    async with aiohttp.ClientSession() as session:
        for path in ("/product", "/product-small"):
            _, product, _ = await fetch(session, upstream.url + path)
            for via in (*proxies, sidecar):
                status, body, _ = await fetch(session, via.url + path)
                if status != 200 or body != product:
                    raise BenchError(f"{via.name} {path}: {status}, {len(body)} bytes, not the page")
        for path in ("/editor/mug", GZ_PAGE):
            # aiohttp asks for gzip (as a browser does) and decodes what it gets.
            status, body, headers = await fetch(session, sidecar.url + path, user)
            if status != 200 or body.count(INJECTED_MARK) != 1:
                state = headers.get("X-CC-Sidecar", "no token element")
                raise BenchError(f"cc-sidecar {path}: {status}, {state}")
            if path == GZ_PAGE and headers.get("Content-Encoding") != "gzip":
                raise BenchError(f"cc-sidecar {path}: not sent on gzipped")
        status, body, _ = await fetch(session, sidecar.url + "/.cc-sidecar/token", user)
        if status != 200:
            raise BenchError(f"cc-sidecar /.cc-sidecar/token: {status}")
        token: str = json.loads(body)["token"]
        return len(token)


async def get_token_calls(session: aiohttp.ClientSession, emulator: Service) -> int:
    """GetToken calls the emulator has answered so far, from its call log."""
    _, body, _ = await fetch(session, emulator.url + "/_emulator/calls")
    return sum(1 for call in json.loads(body) if call["operation"] == GET_TOKEN)


@dataclass
class Burst:
    """One burst of concurrent editor requests and the GetToken calls it caused."""

    requests: int
    injected: int
    get_token_calls: int
    seconds: float


async def first_requests(sidecar: Service, emulator: Service, round_no: int) -> list[Burst]:
    """NEW_CUSTOMERS new customers, REQUESTS_PER_CUSTOMER concurrent requests each, twice."""
    ids = [f"new-{round_no}-{n}" for n in range(NEW_CUSTOMERS)] * REQUESTS_PER_CUSTOMER
    random.Random(round_no).shuffle(ids)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    bursts = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(user_id: str) -> bool:
            status, body, _ = await fetch(session, sidecar.url + "/editor/mug", {USER_HEADER: user_id})
            return status == 200 and INJECTED_MARK in body

        for _ in range(2):  # first requests, then the same again: all cached by now
            calls_before = await get_token_calls(session, emulator)
            started = time.perf_counter()
            injected = await asyncio.gather(*(one(user_id) for user_id in ids))
            seconds = time.perf_counter() - started
            calls = await get_token_calls(session, emulator) - calls_before
            bursts.append(Burst(len(ids), sum(injected), calls, round(seconds, 3)))
    return bursts


# -- profile (optional) -----------------------------------------------------------------------


def profile_under_load(target: Target, seconds: int, load_cpu: int | None) -> dict[str, Any]:
    """py-spy samples the sidecar while wrk loads ``target``; returns the hottest functions."""
    py_spy = py_spy_path()
    folded = BENCH_DIR / f"profile-{target.key}.txt"
    argv = [py_spy, "record", "--pid", str(target.service.process.pid), "--duration", str(seconds)]
    argv += ["--rate", "250", "--function", "--format", "raw", "--output", str(folded)]
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu), *argv]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # attached before the load starts
        run_wrk(target, seconds, load_cpu)
        _, errors = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not folded.exists():
        raise BenchError(f"py-spy failed: {errors.decode(errors='replace')}")
    return hot_spots(folded)


def py_spy_path() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def hot_spots(folded: Path, top: int = 15) -> dict[str, Any]:
    """Share of samples per function: where it was (self), and under it (cc-sidecar's code only)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            under[frame] += int(count)

    def shares(counter: Counter[str], keep: Any = lambda frame: True) -> list[list[Any]]:
        ranked = [(frame, n) for frame, n in counter.most_common() if keep(frame)][:top]
        return [[frame, round(100 * n / max(total, 1), 1)] for frame, n in ranked]

    return {
        "samples": total,
        "file": str(folded.relative_to(REPO)),
        "self_percent": shares(own),
        "inclusive_percent_proxy": shares(under, lambda frame: "(proxy/" in frame),
    }


# -- the run ----------------------------------------------------------------------------------


def pick_cpus() -> tuple[int | None, int | None]:
    """(load generator core, servers core), or no pinning on a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def write_nginx_conf(
    workdir: Path, port: int, upstream: Service, name: str, access_log: bool, worker_connections: int
) -> Path:
    """nginx as shipped (its default access log: the combined format, to a file), or with it off."""
    template = (BENCH_DIR / "nginx.conf.template").read_text()
    log = f"access_log {workdir}/{name}-access.log combined;" if access_log else "access_log off;"
    conf = (
        template.replace("{{ACCESS_LOG}}", log)
        .replace("{{WORKER_CONNECTIONS}}", str(worker_connections))
        .replace("{{TMPDIR}}", str(workdir))
        .replace("{{NAME}}", name)
        .replace("{{PORT}}", str(port))
        .replace("{{UPSTREAM}}", f"127.0.0.1:{upstream.port}")
    )
    path = workdir / f"{name}.conf"
    path.write_text(conf)
    return path


def write_sidecar_conf(
    workdir: Path,
    port: int,
    upstream: Service,
    emulator: Service,
    token_store: dict[str, Any] | None = None,
    name: str = "sidecar",
    access_log: bool = True,
    budget: dict[str, Any] | None = BENCH_BUDGET,
) -> Path:
    """As shipped (the access log on stderr, which Services sends to a file), or with it off.

    ``budget``: the budget section (None: the defaults).
    """
    document: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "access_log": access_log,
        "shutdown_grace_s": 1,
        "secret": "bench-secret-0123456789abcdef",
        "customers_canvas": {
            "api_url": emulator.url,
            "client_id": "demo",
            "client_secret": "demo-secret",
            "tenant_id": 1,
        },
        "storefronts": [
            {
                "name": "bench",
                "storefront_id": 1,
                "upstream": upstream.url,
                "trusted_networks": ["127.0.0.1/32"],
                "user": {"header": USER_HEADER},
                "session_cookie": "PHPSESSID",
                "editor_paths": ["/editor/*", "/editor-gz/*"],
                "inject": ["html"],
            }
        ],
    }
    if token_store is not None:
        document["token_store"] = token_store
    if budget is not None:
        document["budget"] = budget
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def measure_replicas(
    workdir: Path, upstream: Service, emulator: Service, redis_port: int, cpu: int | None
) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH_DIR / "replicas.py"), "--upstream", upstream.url]
    argv += ["--emulator", emulator.url, "--redis-port", str(redis_port), "--workdir", str(workdir)]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    if finished.returncode != 0:
        raise BenchError(f"replicas run failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return result


def start_nginx(
    services: Services,
    workdir: Path,
    upstream: Service,
    name: str,
    access_log: bool,
    worker_connections: int = 4096,
    open_files: int | None = None,
) -> Service:
    port = free_port()
    conf = write_nginx_conf(workdir, port, upstream, name, access_log, worker_connections)
    return services.start(
        name,
        ["nginx", "-c", str(conf), "-p", str(workdir), "-e", str(workdir / f"{name}-error.log"),
         "-g", "daemon off;"],
        port,
        open_files=open_files,
    )  # fmt: skip


async def requests_served(admin_listen: str) -> int:
    """cc_sidecar_requests_total over every label, from the sidecar's /metrics."""
    async with aiohttp.ClientSession() as session:
        _, body, _ = await fetch(session, f"http://{admin_listen}/metrics")
    return round(
        sum(
            float(line.rpartition(" ")[2])
            for line in body.decode().splitlines()
            if line.startswith("cc_sidecar_requests_total{")
        )
    )


def count_access_lines(log_path: Path) -> int:
    """The access lines in a sidecar's stderr file (every other line there is JSON too)."""
    return sum(1 for line in log_path.read_text().splitlines() if '"logger": "proxy.access"' in line)


def measure_access_line(pure: bool) -> dict[str, Any]:
    """bench/access_log.py in a fresh interpreter: CPU per access line, this log and the old path."""
    env = {**os.environ, "CC_SIDECAR_PURE_PYTHON": "1"} if pure else None
    argv = [sys.executable, str(BENCH_DIR / "access_log.py")]
    finished = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO, env=env
    )
    if finished.returncode not in (0, 1) or not finished.stdout.strip():
        raise BenchError(f"access line benchmark failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return result


async def set_faults(session: aiohttp.ClientSession, emulator: Service, faults: dict[str, Any]) -> None:
    async with session.post(emulator.url + "/_emulator/faults", json=faults) as response:
        if response.status != 200:
            raise BenchError(f"emulator faults {faults}: {response.status} {await response.text()}")


async def prime_renewal(sidecar: Service, emulator: Service) -> tuple[float, str, int]:
    """RENEWAL_USER gets a token whose renewal is due soon; then GetToken hangs.

    Returns when the renewal is due (``time.time()``), the token, and GetToken calls so far.
    With the defaults (min_token_ttl_s 1800 over half the lifetime, timeout_s 5) the sidecar
    hands the token out until ``exp - lifetime/2`` and renews it ``timeout_s`` before that.
    """
    now = time.time()
    exp = now + RENEWAL_STALE_IN_S + RENEWAL_LIFETIME_S / 2
    claims = {"sub": RENEWAL_USER, "iat": int(exp) - RENEWAL_LIFETIME_S, "exp": int(exp)}
    # Signed with a key of the bench's own: the sidecar reads a customer token's claims, never checks it.
    token = jwt.encode(claims, "bench-renewal-key-0123456789abcdef", algorithm="HS256")
    user = {USER_HEADER: RENEWAL_USER}
    async with aiohttp.ClientSession() as session:
        await set_faults(session, emulator, {"operations": [GET_TOKEN], "token_text": token})
        status, body, _ = await fetch(session, sidecar.url + "/editor/mug", user)
        if status != 200 or token.encode() not in body:
            raise BenchError(f"renewal row: the primed token is not on the page ({status})")
        await set_faults(session, emulator, {"operations": [GET_TOKEN], "delay_s": 60.0})
        calls = await get_token_calls(session, emulator)
    return int(exp) - RENEWAL_LIFETIME_S / 2 - 5.0, token, calls


def measure_renewal(sidecar: Service, emulator: Service, load_cpu: int | None) -> dict[str, Any]:
    """The editor page of a customer whose token's renewal runs in the background (GetToken hung).

    Every page must still carry the current token at once: the renewal was started by the
    first page past its renewal point and is not waited for.
    """
    due_at, token, calls_before = asyncio.run(prime_renewal(sidecar, emulator))
    time.sleep(max(0.0, due_at - time.time()) + 0.3)
    target = Target("editor_renewing", "", sidecar, "/editor/mug", {USER_HEADER: RENEWAL_USER})
    sample = run_wrk(target, RENEWAL_SECONDS, load_cpu)

    async def after() -> tuple[int, bool]:
        async with aiohttp.ClientSession() as session:
            _, body, _ = await fetch(session, sidecar.url + "/editor/mug", {USER_HEADER: RENEWAL_USER})
            calls = await get_token_calls(session, emulator)
            await set_faults(session, emulator, {})
        return calls - calls_before, token.encode() in body

    renewals, still_current = asyncio.run(after())
    if time.time() > due_at + 5.0 or not still_current:
        raise BenchError("renewal row: the token went stale before the measurement ended")
    if renewals < 1:
        raise BenchError("renewal row: no renewal started while the page was served")
    return {**asdict(sample), "renewals_started": renewals}


def start_fixed_worker_shop(
    services: Services, workdir: Path, emulator: Service
) -> tuple[Service, Service, Service]:
    """gunicorn with SHOP_WORKERS sync workers (bench/upstream.py's WSGI shop) and, in front of it,
    nginx (its default worker_connections) and cc-sidecar (as shipped), both at OPEN_FILES."""
    port = free_port()
    shop = services.start(
        "gunicorn",
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "sync",
         "--workers", str(SHOP_WORKERS), "--timeout", "120", "--preload", "--chdir", str(BENCH_DIR),
         "upstream:create_wsgi_app()"],
        port,
    )  # fmt: skip
    nginx = start_nginx(
        services, workdir, shop, "nginx-shop", True, NGINX_DEFAULT_WORKER_CONNECTIONS, OPEN_FILES
    )
    sidecar_port = free_port()
    conf = write_sidecar_conf(workdir, sidecar_port, shop, emulator, name="sidecar-shop")
    sidecar = services.start(
        "cc-sidecar-shop",
        [sys.executable, "-m", "proxy", "run", "--config", str(conf)],
        sidecar_port,
        open_files=OPEN_FILES,
    )
    return shop, nginx, sidecar


def start_flood_target(services: Services, workdir: Path, upstream: Service) -> tuple[Service, Service, str]:
    """A Storefront API emulator of its own and a cc-sidecar with the default budget in front of the
    fixed upstream, for bench/flood.py; returns them and the sidecar's admin_listen."""
    emulator_port = free_port()
    emulator = services.start(
        "emulator-flood",
        [sys.executable, "-m", "proxy", "emulator", "--port", str(emulator_port),
         "--enable-control", "--token-lifetime-s", "3600"],
        emulator_port,
    )  # fmt: skip
    port = free_port()
    conf = write_sidecar_conf(workdir, port, upstream, emulator, name="sidecar-flood", budget=None)
    sidecar = services.start(
        "cc-sidecar-flood", [sys.executable, "-m", "proxy", "run", "--config", str(conf)], port
    )
    admin: str = yaml.safe_load(conf.read_text())["admin_listen"]
    return emulator, sidecar, admin


def measure_flood(sidecar: Service, emulator: Service, admin: str, load_cpu: int | None) -> dict[str, Any]:
    """bench/flood.py: new customers' editor pages unloaded, then under a minting flood."""
    argv = [sys.executable, str(BENCH_DIR / "flood.py"), "--port", str(sidecar.port)]
    argv += ["--emulator", emulator.url, "--admin", admin, "--pid", str(sidecar.process.pid)]
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu), *argv]
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False, cwd=REPO)
    if finished.returncode != 0:
        raise BenchError(f"bench/flood.py failed:\n{finished.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(finished.stdout)
    return found


def measure_attack(mode: str, service: Service, load_cpu: int | None) -> dict[str, Any]:
    """bench/attacks.py against one proxy: visitors' share served and latency under the attack."""
    argv = [sys.executable, str(BENCH_DIR / "attacks.py"), mode, str(service.port), SMALL]
    argv.append(str(ATTACK_SECONDS))
    if load_cpu is not None:
        argv = ["taskset", "-c", str(load_cpu), *argv]
    finished = subprocess.run(
        argv, capture_output=True, text=True, timeout=ATTACK_SECONDS + 120, check=False, cwd=REPO
    )
    if finished.returncode != 0:
        raise BenchError(f"bench/attacks.py {mode} failed:\n{finished.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(finished.stdout)
    return found


def measure_token_memory(token_length: int) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH_DIR / "token_memory.py")]
    argv += ["--entries", str(CACHED_TOKENS), "--token-length", str(token_length)]
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    if finished.returncode != 0:
        raise BenchError(f"token memory probe failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout.splitlines()[-1])
    return result


def start_shop_and_api(services: Services) -> tuple[Service, Service]:
    """The fixed upstream (bench/upstream.py) and the Storefront API emulator, with its call log."""
    python = sys.executable
    upstream_port = free_port()
    upstream = services.start(
        "upstream", [python, str(BENCH_DIR / "upstream.py"), "--port", str(upstream_port)], upstream_port
    )
    emulator_port = free_port()
    emulator = services.start(
        "emulator",
        [python, "-m", "proxy", "emulator", "--port", str(emulator_port),
         "--enable-control", "--token-lifetime-s", "3600"],
        emulator_port,
    )  # fmt: skip
    return upstream, emulator


def run(workdir: Path) -> dict[str, Any]:
    load_cpu, server_cpu = pick_cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this script's own client work stays off the servers
    services = Services(workdir, server_cpu)
    try:
        python = sys.executable
        upstream, emulator = start_shop_and_api(services)
        nginx = start_nginx(services, workdir, upstream, "nginx", access_log=True)
        nginx_quiet = start_nginx(services, workdir, upstream, "nginx-no-log", access_log=False)
        bare_port = free_port()
        bare = services.start(
            "bare-proxy",
            [python, str(BENCH_DIR / "bare_proxy.py"), "--port", str(bare_port),
             "--upstream", upstream.url],
            bare_port,
        )  # fmt: skip
        sidecar_port = free_port()
        sidecar_conf = write_sidecar_conf(workdir, sidecar_port, upstream, emulator)
        sidecar = services.start(
            "cc-sidecar", [python, "-m", "proxy", "run", "--config", str(sidecar_conf)], sidecar_port
        )
        quiet_port = free_port()
        quiet_conf = write_sidecar_conf(
            workdir, quiet_port, upstream, emulator, None, "sidecar-no-log", False
        )
        sidecar_quiet = services.start(
            "cc-sidecar-no-log", [python, "-m", "proxy", "run", "--config", str(quiet_conf)], quiet_port
        )
        # The same as shipped, from the Python source (what a plain `pip install` runs).
        pure_port = free_port()
        pure_conf = write_sidecar_conf(workdir, pure_port, upstream, emulator, None, "sidecar-pure")
        sidecar_pure = services.start(
            "cc-sidecar-pure",
            [python, "-m", "proxy", "run", "--config", str(pure_conf)],
            pure_port,
            env={"CC_SIDECAR_PURE_PYTHON": "1"},
        )

        redis_sidecar: Service | None = None
        redis_port = free_port()
        if REDIS_SERVER is not None:
            services.start(
                "redis",
                [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                redis_port,
            )  # fmt: skip
            redis_conf = write_sidecar_conf(
                workdir, free_port(), upstream, emulator,
                {"backend": "redis", "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"}}, "sidecar-redis",
            )  # fmt: skip
            redis_sidecar = services.start(
                "cc-sidecar-redis",
                [python, "-m", "proxy", "run", "--config", str(redis_conf)],
                int(yaml.safe_load(redis_conf.read_text())["listen"].rsplit(":", 1)[1]),
            )

        token_length = asyncio.run(
            check_targets(upstream, (nginx, nginx_quiet, bare, sidecar_quiet), sidecar)
        )
        user = {USER_HEADER: BENCH_USER}
        cookies = {"Cookie": BROWSER_COOKIES}
        # What a browser says: the sidecar sends the gzip editor page on gzipped again.
        user_gzip = {**user, "Accept-Encoding": "gzip, deflate, br"}
        # The two targets of each ratio with a target run back to back in a round, so its own ratio
        # is taken on the machine as it was then: nginx beside the sidecar, the editor rows right
        # after the pass-through row they are held to, the 1 KB rows in pairs around nginx's.
        editor_redis = []
        if redis_sidecar is not None:
            label = "cc-sidecar /editor/mug, Redis store"
            editor_redis.append(Target("editor_redis", label, redis_sidecar, "/editor/mug", user))
        targets = [
            Target("upstream", "upstream /product (direct)", upstream, "/product"),
            Target("bare", "bare aiohttp proxy /product (reference)", bare, "/product"),
            Target("nginx", "nginx /product", nginx, "/product"),
            Target("sidecar", "cc-sidecar /product (pass-through)", sidecar, "/product"),
            Target("editor", "cc-sidecar /editor/mug (cached token)", sidecar, "/editor/mug", user),
            *editor_redis,
            Target("sidecar_cookies", "cc-sidecar /product, browser cookies", sidecar, "/product", cookies),
            Target("sidecar_small_pure", "cc-sidecar /product-small, Python", sidecar_pure, "/product-small"),
            Target("nginx_small", "nginx /product-small (1 KB)", nginx, "/product-small"),
            Target("sidecar_small", "cc-sidecar /product-small (1 KB)", sidecar, "/product-small"),
            Target("nginx_small_no_log", "nginx /product-small, log off", nginx_quiet, "/product-small"),
            Target("sidecar_small_no_log", "cc-sidecar /product-small, log off", sidecar_quiet, SMALL),
            Target("editor_gz", "cc-sidecar /editor-gz/mug (gzip, to gzip)", sidecar, GZ_PAGE, user_gzip),
            Target("editor_gz_plain", "cc-sidecar /editor-gz/mug (gzip, to plain)", sidecar, GZ_PAGE, user),
        ]  # fmt: skip
        progress(f"warming up {len(targets)} targets, {WARM_UP_SECONDS} s each")
        for target in targets:
            run_wrk(target, WARM_UP_SECONDS, load_cpu)

        samples: dict[str, list[Sample]] = {target.key: [] for target in targets}
        bursts: list[list[Burst]] = []
        for round_no in range(1, ROUNDS + 1):
            for target in targets:
                progress(f"round {round_no}/{ROUNDS}: {target.label}, {SECONDS} s")
                samples[target.key].append(run_wrk(target, SECONDS, load_cpu))
            progress(f"round {round_no}/{ROUNDS}: {NEW_CUSTOMERS} new customers x {REQUESTS_PER_CUSTOMER}")
            bursts.append(asyncio.run(first_requests(sidecar, emulator, round_no)))
        profiles = {}
        if PROFILE:
            for target in (t for t in targets if t.key in ("sidecar", "sidecar_small", "editor")):
                progress(f"profiling cc-sidecar under load: {target.label}, {SECONDS} s")
                profiles[target.key] = profile_under_load(target, SECONDS, load_cpu)
        progress(f"editor page while its token's renewal runs (GetToken hung), {RENEWAL_SECONDS} s")
        renewal = measure_renewal(sidecar, emulator, load_cpu)
        shop, nginx_shop, sidecar_shop = start_fixed_worker_shop(services, workdir, emulator)
        attacks: dict[str, dict[str, Any]] = {}
        for mode, label in ATTACKS.items():  # nginx, then cc-sidecar, attack by attack
            attacks[mode] = {}
            for key, service in (("nginx", nginx_shop), ("sidecar", sidecar_shop)):
                progress(f"{service.name}: visitors under {label}, {ATTACK_SECONDS:g} s")
                attacks[mode][key] = measure_attack(mode, service, load_cpu)
        flood_emulator, flood_sidecar, flood_admin = start_flood_target(services, workdir, upstream)
        progress("cc-sidecar: new customers' editor pages unloaded, then under a minting flood, ~30 s")
        flood = measure_flood(flood_sidecar, flood_emulator, flood_admin, load_cpu)
        for service in (upstream, nginx, nginx_quiet, bare, sidecar, sidecar_quiet, sidecar_pure,
                        shop, nginx_shop, sidecar_shop, flood_emulator, flood_sidecar):  # fmt: skip
            if service.process.poll() is not None:
                raise BenchError(f"{service.name} exited during the run:\n{tail(service.log_path)}")
        compiled = runs_compiled(sidecar)
        served = {
            service.name: asyncio.run(requests_served(yaml.safe_load(conf.read_text())["admin_listen"]))
            for service, conf in ((sidecar, sidecar_conf), (sidecar_pure, pure_conf))
        }
        replicas: dict[str, Any] | None = None
        if redis_sidecar is not None:
            progress("three replicas with each token store: GetToken calls, editor from Redis vs local cache")
            replicas = measure_replicas(workdir, upstream, emulator, redis_port, server_cpu)
    finally:
        services.stop_all()
    # Stopped (SIGTERM: each sidecar wrote its last batch), so every line is in its stderr file.
    access_lines = {
        name: {"requests": requests, "lines": count_access_lines(workdir / f"{name}.log")}
        for name, requests in served.items()
    }

    progress(f"token memory: filling {CACHED_TOKENS} cached tokens of {token_length} characters")
    memory = measure_token_memory(token_length)
    progress("access line CPU: bench/access_log.py, compiled and Python source")
    access_line = {"compiled": measure_access_line(pure=False), "python": measure_access_line(pure=True)}
    return {
        "targets": {
            target.key: {
                "label": target.label,
                "url_path": target.path,
                "median": median_sample(samples[target.key]),
                "rounds": [asdict(sample) for sample in samples[target.key]],
            }
            for target in targets
        },
        "first_requests": [[asdict(burst) for burst in pair] for pair in bursts],
        "token_memory": memory,
        "access_line": access_line,
        "access_lines_written": access_lines,
        "replicas": replicas,
        "emulator_token_length": token_length,
        "pinning": {"load_generator_cpu": load_cpu, "servers_cpu": server_cpu},
        "sidecar_compiled": compiled,
        "profiles": profiles,
        "renewal": renewal,
        "attacks": attacks,
        "flood": flood,
    }


def runs_compiled(sidecar: Service) -> bool | None:
    """Whether the sidecar serves its request path compiled (mypyc's library is mapped into it)."""
    try:
        maps = Path(f"/proc/{sidecar.process.pid}/maps").read_text()
    except OSError:
        return None
    return "cc_sidecar__mypyc" in maps


def median_sample(samples: Sequence[Sample]) -> dict[str, float]:
    return {
        name: statistics.median(getattr(sample, name) for sample in samples)
        for name in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "errors", "bytes_per_request")
    }


# -- report -----------------------------------------------------------------------------------


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ratio against its target.

    A ratio is the median over rounds of that round's ratio: within a round its two targets run
    minutes apart at most, so a slow spell of the machine moves both, not one.
    """
    rounds: dict[str, list[float]] = {
        key: [sample["rps"] for sample in target["rounds"]] for key, target in results["targets"].items()
    }

    def ratio(over: str, under: str) -> float:
        return statistics.median(a / b for a, b in zip(rounds[over], rounds[under], strict=True))

    def cpu_rounds(key: str) -> list[float]:
        return [round(sample["cpu_us_per_request"], 1) for sample in results["targets"][key]["rounds"]]

    def spread(key: str) -> float:
        cpu = cpu_rounds(key)
        return max(cpu) / min(cpu) - 1 if min(cpu) > 0 else 0.0

    first = [pair[0]["get_token_calls"] for pair in results["first_requests"]]
    second = [pair[1]["get_token_calls"] for pair in results["first_requests"]]
    injected = all(
        burst["injected"] == burst["requests"] for pair in results["first_requests"] for burst in pair
    )
    per_token = results["token_memory"]["bytes_per_token"]
    errors = sum(target["median"]["errors"] for target in results["targets"].values())
    return [
        {
            "name": "sidecar pass-through rps / nginx rps",
            "value": round(ratio("sidecar", "nginx"), 3),
            "target": f">= {MIN_SIDECAR_VS_NGINX}",
            "pass": ratio("sidecar", "nginx") >= MIN_SIDECAR_VS_NGINX,
        },
        {
            "name": "sidecar pass-through rps / nginx rps, 1 KB page, both access logs on",
            "value": round(ratio("sidecar_small", "nginx_small"), 3),
            "target": f">= {MIN_SIDECAR_VS_NGINX_SMALL}",
            "pass": ratio("sidecar_small", "nginx_small") >= MIN_SIDECAR_VS_NGINX_SMALL,
        },
        {
            "name": "the same, the sidecar from its Python source (no target)",
            "value": round(ratio("sidecar_small_pure", "nginx_small"), 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": "the same, both access logs off (no target)",
            "value": round(ratio("sidecar_small_no_log", "nginx_small_no_log"), 3),
            "target": "-",
            "pass": None,
        },
        {
            # The same build's cost per request moves from round to round only with the machine
            # (a VM's neighbours, its clock): a ratio within that spread of its target is decided
            # by the machine, not by the build.
            "name": "steadiness: cc-sidecar CPU µs per 1 KB request per round, and their spread (no target)",
            "value": [*cpu_rounds("sidecar_small"), f"{spread('sidecar_small'):.0%}"],
            "target": "-",
            "pass": None,
        },
        {
            "name": "1 KB rps with the access log on / off: nginx, cc-sidecar (no target)",
            "value": [
                round(ratio("nginx_small", "nginx_small_no_log"), 3),
                round(ratio("sidecar_small", "sidecar_small_no_log"), 3),
            ],
            "target": "-",
            "pass": None,
        },
        {
            "name": "access line CPU µs, compiled (Python source; the logging path it replaced)",
            "value": [
                results["access_line"]["compiled"]["access_log_us_per_line"],
                results["access_line"]["python"]["access_log_us_per_line"],
                results["access_line"]["compiled"]["logging_us_per_line"],
            ],
            "target": f"compiled <= {MAX_ACCESS_LINE_US}",
            "pass": results["access_line"]["compiled"]["access_log_us_per_line"] <= MAX_ACCESS_LINE_US,
        },
        {
            "name": "access lines written / requests served (cc-sidecar, Python source)",
            "value": [
                f"{found['lines']}/{found['requests']}" for found in results["access_lines_written"].values()
            ],
            "target": "equal",
            "pass": all(
                found["lines"] == found["requests"] for found in results["access_lines_written"].values()
            ),
        },
        {
            "name": "editor (cached token) rps / sidecar pass-through rps",
            "value": round(ratio("editor", "sidecar"), 3),
            "target": f">= {MIN_EDITOR_VS_PASS_THROUGH}",
            "pass": ratio("editor", "sidecar") >= MIN_EDITOR_VS_PASS_THROUGH,
        },
        {
            "name": "sidecar pass-through rps / bare aiohttp proxy rps (no target)",
            "value": round(ratio("sidecar", "bare"), 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": "bare aiohttp proxy rps / nginx rps (no target: the stack's ceiling)",
            "value": round(ratio("bare", "nginx"), 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": "editor while its token's renewal runs rps / editor (cached token) rps (no target; "
            f"{results['renewal']['renewals_started']} renewal started, "
            f"p99 {results['renewal']['p99_ms']:.2f} ms)",
            "value": round(results["renewal"]["rps"] / results["targets"]["editor"]["median"]["rps"], 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": "editor gzip rps / sidecar pass-through rps (no target)",
            "value": round(ratio("editor_gz", "sidecar"), 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": "editor gzip sent gzipped rps / the same sent plain rps (no target: re-compression)",
            "value": round(ratio("editor_gz", "editor_gz_plain"), 3),
            "target": "-",
            "pass": None,
        },
        {
            "name": f"GetToken calls, {NEW_CUSTOMERS} new customers x {REQUESTS_PER_CUSTOMER} (per round)",
            "value": first,
            "target": f"== {NEW_CUSTOMERS}, every page injected",
            "pass": all(calls == NEW_CUSTOMERS for calls in first) and injected,
        },
        {
            "name": "GetToken calls, the same requests again (per round)",
            "value": second,
            "target": "== 0",
            "pass": all(calls == 0 for calls in second),
        },
        {
            "name": f"RSS bytes per cached token ({CACHED_TOKENS} tokens)",
            "value": round(per_token),
            "target": f"<= {MAX_BYTES_PER_TOKEN}",
            "pass": per_token <= MAX_BYTES_PER_TOKEN,
        },
        {
            "name": "wrk errors (connect/read/write/timeout/non-2xx), median sum",
            "value": errors,
            "target": "== 0",
            "pass": errors == 0,
        },
        *_attack_ratios(results),
        *_flood_ratios(results),
        *_replica_ratios(results, ratio),
    ]


def _attack_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #22's rows 1-3: under each attack, visitors served as through nginx, p99 within its bound.

    When nginx served no visitor its p99 is unknown (over the visit timeout): any served visit is
    within the bound, and the share served is what is judged.
    """
    rows = []
    for mode, found in results["attacks"].items():
        nginx, sidecar = found["nginx"], found["sidecar"]
        if nginx["p99_ms"] is None:
            bound = VISIT_TIMEOUT_S * 1000
        else:
            bound = max(2 * nginx["p99_ms"], nginx["p99_ms"] + MAX_VISITORS_P99_EXTRA_MS)
        served = sidecar["served_fraction"]
        nginx_p99 = "-" if nginx["p99_ms"] is None else f"{nginx['p99_ms']} ms"
        rows.append(
            {
                "name": f"visitors' p99 ms under {ATTACKS[mode]}, {ATTACK_SECONDS:g} s, cc-sidecar"
                f" (nginx: {nginx_p99}, {nginx['served_fraction']:.1%} served)",
                "value": sidecar["p99_ms"],
                "target": f"<= {bound:.0f}, >= {MIN_VISITORS_SERVED:.1%} served ({served:.1%})",
                "pass": sidecar["p99_ms"] is not None
                and sidecar["p99_ms"] <= bound
                and served >= MIN_VISITORS_SERVED,
            }
        )
    return rows


def _flood_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #22: new customers' editor pages under a minting flood at most twice as slow as unloaded."""
    flood = results["flood"]
    unloaded, flooded, requests = flood["unloaded"], flood["flood"], flood["flood_requests"]
    bound = MAX_FLOOD_P50_FACTOR * unloaded["p50_ms"]
    answers = ", ".join(f"{count} {how}" for how, count in sorted(requests["answers"].items()))
    connections = flood["flood_connections"]
    return [
        {
            "name": f"new customers' editor page p50 ms under a {connections}-connection minting flood"
            f" (unloaded {unloaded['p50_ms']} ms; p99 {flooded['p99_ms']} vs {unloaded['p99_ms']};"
            f" API calls {flood['api_delay_ms']} ms each)",
            "value": flooded["p50_ms"],
            "target": f"<= {bound:.0f}",
            "pass": flooded["p50_ms"] is not None and flooded["p50_ms"] <= bound,
        },
        {
            "name": "the same: customers' pages with their token (unloaded, flood); the flood's"
            f" {requests['requests']} requests ({answers}), StorefrontUsers it created, sidecar CPU"
            " share meanwhile (no target)",
            "value": [
                f"{unloaded['with_token']}/{unloaded['visits']}",
                f"{flooded['with_token']}/{flooded['visits']}",
                requests["storefront_users_created"],
                flood["sidecar_cpu_share"],
            ],
            "target": "-",
            "pass": None,
        },
    ]


def _replica_ratios(results: dict[str, Any], ratio: Any) -> list[dict[str, Any]]:
    """The Redis store's targets: its cached editor page as cheap, one GetToken per customer."""
    replicas = results.get("replicas")
    if not replicas:
        return []
    customers = replicas["customers"]
    calls = replicas["get_token"]
    return [
        {
            "name": "editor (cached token), Redis store rps / sidecar pass-through rps",
            "value": round(ratio("editor_redis", "sidecar"), 3),
            "target": f">= {MIN_EDITOR_VS_PASS_THROUGH}",
            "pass": ratio("editor_redis", "sidecar") >= MIN_EDITOR_VS_PASS_THROUGH,
        },
        {
            "name": f"GetToken calls, {customers} customers each on 3 replicas (memory, redis)",
            "value": [calls["memory"]["visits"], calls["redis"]["visits"]],
            "target": f"redis == {customers}",
            "pass": calls["redis"]["visits"] == customers,
        },
        {
            # Work a replica did for itself while Redis failed it (as designed) explains extra calls.
            "name": "GetToken calls, 240 concurrent first requests, 20 customers, 3 replicas (memory, redis;"
            f" Redis calls failed or skipped by then: {calls['redis'].get('store_failures', 'n/a')})",
            "value": [calls["memory"]["burst"], calls["redis"]["burst"]],
            "target": "redis == 20",
            "pass": calls["redis"]["burst"] == 20,
        },
    ]


_BUILDS = {True: "compiled (mypyc)", False: "Python source", None: "unknown"}


def print_report(results: dict[str, Any]) -> None:
    header = f"{'target':<42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11} {'B/resp':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for key, target in results["targets"].items():
        m = target["median"]
        cpu = "-" if key == "upstream" else f"{m['cpu_us_per_request']:.0f}"
        print(
            f"{target['label']:<42} {m['rps']:>9.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {cpu:>11}"
            f" {m['bytes_per_request']:>7.0f}"
        )
    memory = results["token_memory"]
    print(
        f"\nmedians of {ROUNDS} rounds x {SECONDS} s, {CONNECTIONS} connections, "
        f"{WRK_THREADS} wrk thread; CPU = the proxy's user+system time per request "
        f"(nginx: master+worker); B/resp = response bytes on the wire, headers included\n"
        f"cc-sidecar's request path: {_BUILDS[results['sidecar_compiled']]}\n"
        f"cached-token memory: {memory['entries']} tokens of "
        f"{memory['token_length']} characters, {memory['bytes_per_token']:.0f} bytes each "
        f"(emulator's tokens: {results['emulator_token_length']} characters)\n"
    )
    replicas = results.get("replicas")
    if replicas:
        print("editor page of one replica, requests one after another (bench/replicas.py):")
        for label, found in replicas["editor"].items():
            where = label.replace("_", " ")
            print(
                f"  token {where:<12} p50 {found['p50_ms']:.2f} ms, p99 {found['p99_ms']:.2f} ms,"
                f" {found['cpu_us_per_request']} µs CPU/request"
            )
        print(f"Redis MEMORY USAGE per cached customer: {replicas['redis_bytes_per_customer']} bytes\n")
    print_attacks(results)
    for ratio in results["ratios"]:
        verdict = {True: "PASS", False: "FAIL", None: "info"}[ratio["pass"]]
        print(f"  [{verdict}] {ratio['name']}: {ratio['value']} (target {ratio['target']})")
    for key, found in results["profiles"].items():
        print(f"\nprofile of cc-sidecar under load, {key} ({found['samples']} samples, {found['file']})")
        print("  self time:")
        for frame, percent in found["self_percent"][:10]:
            print(f"    {percent:5.1f}%  {frame}")
        print("  inclusive, cc-sidecar's own functions:")
        for frame, percent in found["inclusive_percent_proxy"][:10]:
            print(f"    {percent:5.1f}%  {frame}")
    print(f"\nwritten to {RESULTS_PATH.relative_to(REPO)}; took {results['duration_s']:.0f} s")


def print_attacks(results: dict[str, Any]) -> None:
    """Visitors under each attack through both proxies, and new customers under the minting flood."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"visitors under attack (bench/attacks.py), {ATTACK_SECONDS:g} s each; {SHOP_WORKERS} gunicorn"
        f" sync workers behind both proxies, each at {OPEN_FILES} open files; served %, p50 / p99 ms:"
    )
    for mode, found in results["attacks"].items():
        row = [f"  {mode:<15}"]
        for key in ("nginx", "sidecar"):
            seen = found[key]
            row.append(
                f"{key} {seen['served_fraction']:7.1%} {ms(seen['p50_ms']):>7} / {ms(seen['p99_ms']):<7}"
            )
        print("  ".join(row))
    flood = results["flood"]
    print(
        f"new customers' editor pages, {flood['rate_per_s']}/s for {flood['customers_s']} s, API calls"
        f" {flood['api_delay_ms']} ms each: p50 / p99 ms unloaded {flood['unloaded']['p50_ms']} /"
        f" {flood['unloaded']['p99_ms']}, under a {flood['flood_connections']}-connection minting flood"
        f" {flood['flood']['p50_ms']} / {flood['flood']['p99_ms']} (sidecar CPU"
        f" {flood['sidecar_cpu_share']:.0%} of a core; the flood {flood['flood_requests']['rps']} req/s)\n"
    )


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def command_version(argv: Sequence[str]) -> str:
    """First line a tool prints about its version (wrk and nginx print it on stderr)."""
    try:
        finished = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    return (finished.stdout + finished.stderr).strip().splitlines()[0]


def command_line() -> str:
    """How this run was started, with the BENCH_* settings it was given."""
    settings = [f"{name}={value}" for name, value in sorted(os.environ.items()) if name.startswith("BENCH_")]
    program = "make bench" if "MAKELEVEL" in os.environ else " ".join(["python", *sys.argv])
    return " ".join([*settings, program])


def machine_info() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    commit = command_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": command_version(["nginx", "-v"]),
        "wrk": command_version(["wrk", "-v"]),
        "git_commit": commit,
    }


@contextlib.contextmanager
def interrupts_as_exit() -> Iterator[None]:
    """Ctrl-C, SIGTERM, SIGHUP and the whole-run deadline all end the run the same way, with
    every server stopped (SIGINT too: a shell may have started this script ignoring it)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    previous = {signum: signal.signal(signum, stop) for signum in handled}
    signal.alarm(DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> int:
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (make bench installs nginx and wrk)", file=sys.stderr)
            return 2
    if PROFILE and not Path(py_spy_path()).exists():
        print("bench: BENCH_PROFILE needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    machine = machine_info()  # before this script pins itself to one core
    started = time.monotonic()
    try:
        with interrupts_as_exit(), tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
            workdir = Path(tmp)
            workdir.chmod(0o755)  # nginx's worker may run as another user and needs its temp dirs
            results = run(workdir)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"bench: interrupted ({exc or 'SIGINT'}); every server stopped", file=sys.stderr)
        return 2
    results["ratios"] = judge(results)
    results["passed"] = all(ratio["pass"] is not False for ratio in results["ratios"])
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["settings"] = {
        "rounds": ROUNDS,
        "seconds_per_round": SECONDS,
        "connections": CONNECTIONS,
        "wrk_threads": WRK_THREADS,
        "new_customers": NEW_CUSTOMERS,
        "requests_per_customer": REQUESTS_PER_CUSTOMER,
        "cached_tokens": CACHED_TOKENS,
        "attack_seconds": ATTACK_SECONDS,
        "open_files_under_attack": OPEN_FILES,
        "shop_workers_under_attack": SHOP_WORKERS,
    }
    results["machine"] = machine
    results["command"] = command_line()
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
