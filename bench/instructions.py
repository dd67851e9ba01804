"""Instructions per request of one page through cc-sidecar trees, counted by callgrind.

    python bench/instructions.py TREE [TREE ...] [--path /product-small] [--requests 2000]
                                 [--header "Name: value"] ...

Each tree's sidecar runs under ``valgrind --tool=callgrind`` (Debian's valgrind) with counting
off, in front of one upstream (bench/upstream.py) and one emulator. After 300 requests of warm-up
(an editor page's token fetched, every cache filled), counting goes on for ``--requests``
requests sent one after another on one keep-alive connection, then off. The report is the
sidecar's user-space instructions per request: within about 1 % from run to run of the same build,
whatever else the machine does, where CPU time moves by 10 % or more on a shared VM. It leaves out
what the kernel does (the loopback writes and reads: about a third of the CPU time) and cache
misses, and it overstates large copies (glibc copies them with ``rep movsb``, which callgrind
counts once per byte: a 21 KB page's copy counts about 21,000); bench/ab.py measures the time.
``--keep DIR`` keeps each tree's callgrind file for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ab import proxy_package_of
from run import (
    BenchError,
    Services,
    free_port,
    interrupts_as_exit,
    start_shop_and_api,
    write_sidecar_conf,
)

WARM_UP_REQUESTS = 300
# A sidecar under callgrind starts about 50 times slower.
START_TIMEOUT_S = 240


def send(port: int, path: str, headers: dict[str, str], count: int) -> None:
    """``count`` GETs of ``path`` on one connection, each read to its end; all must be 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise BenchError(f"GET {path}: {response.status}")
    finally:
        connection.close()


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def total_instructions(out_files: list[Path]) -> int:
    """The instructions a dump's files count (their ``totals:`` line; ``summary:`` can say 0)."""
    total = 0
    for out in out_files:
        counted = [
            int(line.split()[1])
            for line in out.read_text(errors="replace").splitlines()
            if line.startswith(("totals:", "summary:"))
        ]
        total += max(counted, default=0)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", type=Path, nargs="+", help="cc-sidecar checkouts to measure")
    parser.add_argument("--path", default="/product-small", help="the page (default: /product-small, 1 KB)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted (default: 2000)")
    parser.add_argument(
        "--header", action="append", default=[], help='a request header, "Name: value" (repeatable)'
    )
    parser.add_argument("--keep", type=Path, help="copy each tree's callgrind file into this folder")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [tree.resolve() for tree in args.trees]
    for tree in trees:
        if proxy_package_of(tree) != tree / "proxy":
            print(f"{tree} does not import its own proxy package", file=sys.stderr)
            return 2
    headers = dict(header.split(": ", 1) for header in args.header)
    results: list[tuple[Path, int]] = []
    with tempfile.TemporaryDirectory(prefix="cc-instructions-") as tmp, interrupts_as_exit():
        workdir = Path(tmp)
        services = Services(workdir, None)
        try:
            upstream, emulator = start_shop_and_api(services)
            for number, tree in enumerate(trees):
                port = free_port()
                conf = write_sidecar_conf(workdir, port, upstream, emulator, name=f"sidecar-{number}")
                out = workdir / f"callgrind-{number}.out"
                argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
                argv += [f"--callgrind-out-file={out}", sys.executable, "-m", "proxy", "run"]
                argv += ["--config", str(conf)]
                sidecar = services.start(f"sidecar-{number}", argv, port, cwd=tree, timeout_s=START_TIMEOUT_S)
                send(port, args.path, headers, WARM_UP_REQUESTS)
                pid = str(sidecar.process.pid)
                callgrind_control("--instr=on", pid)
                send(port, args.path, headers, args.requests)
                callgrind_control("--instr=off", pid)
                callgrind_control("--dump", pid)
                dumps = sorted(workdir.glob(f"callgrind-{number}.out.*"))
                if not dumps:
                    raise BenchError(f"{tree}: callgrind wrote no dump")
                results.append((tree, total_instructions(dumps)))
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(dumps[-1], args.keep / f"callgrind-{number}.out")
        finally:
            services.stop_all()
    with_headers = f" with {', '.join(headers)}" if headers else ""
    print(f"{args.path}{with_headers}, {args.requests} requests, user-space instructions per request:")
    for tree, total in results:
        print(f"  {tree}: {total / args.requests:,.0f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"instructions: {exc}", file=sys.stderr)
        sys.exit(2)
