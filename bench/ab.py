"""A/B: one page through two cc-sidecar trees side by side, for a change too small for `make bench`.

    python bench/ab.py OLD_TREE [NEW_TREE] [--path /product-small] [--rounds 8] [--seconds 5]
                       [--header "Name: value"] ...

Both trees (NEW_TREE defaults to this one; make one with `git worktree add --detach /tmp/old REV`)
run `python -m proxy run` from their own directory, with this venv's packages, in front of one
upstream (bench/upstream.py) and one emulator, pinned to one core with wrk on the other, as in
`make bench`. wrk alternates between them (A B A B ...) after a warm-up; the report gives each
one's median requests per second and CPU time per request (user + system, from /proc), with every
round. CPU per request is the number to compare: on a noisy machine it moves far less than
requests per second, and a difference of about 1 µs shows over 8 rounds. ``--header "X-Shop-User:
bench-user"`` with ``--path /editor/mug`` measures the editor page with a cached token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import (
    REPO,
    BenchError,
    Services,
    Target,
    free_port,
    interrupts_as_exit,
    pick_cpus,
    run_wrk,
    start_shop_and_api,
    write_sidecar_conf,
)


def proxy_package_of(tree: Path) -> Path:
    """Where ``python -m proxy`` started in ``tree`` imports cc-sidecar from (it must be the tree)."""
    found = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
        cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(found.stdout.strip()).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old", type=Path, help="the tree to compare against (A)")
    parser.add_argument(
        "new", type=Path, nargs="?", default=REPO, help="the tree to measure (B; default: this one)"
    )
    parser.add_argument("--path", default="/product-small", help="the page (default: /product-small, 1 KB)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of A then B (default: 8)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per run (default: 5)")
    parser.add_argument(
        "--header", action="append", default=[], help='a request header, "Name: value" (repeatable)'
    )
    args = parser.parse_args()
    trees = {"A": args.old.resolve(), "B": args.new.resolve()}
    for label, tree in trees.items():
        if proxy_package_of(tree) != tree / "proxy":
            print(f"{label}: {tree} does not import its own proxy package", file=sys.stderr)
            return 2
    headers = dict(header.split(": ", 1) for header in args.header)
    load_cpu, server_cpu = pick_cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    with tempfile.TemporaryDirectory(prefix="cc-ab-") as tmp, interrupts_as_exit():
        workdir = Path(tmp)
        services = Services(workdir, server_cpu)
        try:
            python = sys.executable
            upstream, emulator = start_shop_and_api(services)
            targets = {}
            for label, tree in trees.items():
                port = free_port()
                conf = write_sidecar_conf(workdir, port, upstream, emulator, name=f"sidecar-{label}")
                sidecar = services.start(
                    label, [python, "-m", "proxy", "run", "--config", str(conf)], port, cwd=tree
                )
                targets[label] = Target(label, str(tree), sidecar, args.path, headers)
            for target in targets.values():
                run_wrk(target, 2, load_cpu)  # warm-up (and the editor page's token fetched)
            samples: dict[str, list[tuple[float, float]]] = {label: [] for label in targets}
            for _ in range(args.rounds):
                for label, target in targets.items():
                    sample = run_wrk(target, args.seconds, load_cpu)
                    if sample.errors:
                        raise BenchError(f"{label}: {sample.errors} wrk errors")
                    samples[label].append((sample.rps, sample.cpu_us_per_request))
        finally:
            services.stop_all()
    with_headers = f" with {', '.join(headers)}" if headers else ""
    print(f"{args.path}{with_headers}, {args.rounds} rounds x {args.seconds} s, medians:")
    for label, tree in trees.items():
        rps = [r for r, _ in samples[label]]
        cpu = [c for _, c in samples[label]]
        rounds = ", ".join(f"{c:.1f}" for c in cpu)
        median_rps, median_cpu = statistics.median(rps), statistics.median(cpu)
        print(f"  {label} {tree}: {median_rps:8.0f} req/s, {median_cpu:5.1f} µs CPU/request")
        print(f"    CPU per round: {rounds}")
    a, b = (statistics.median(c for _, c in samples[label]) for label in trees)
    print(f"  B - A: {b - a:+.1f} µs CPU per request ({(b - a) / a:+.1%})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ab: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        print(f"ab: stopped ({exc})", file=sys.stderr)
        sys.exit(2)
