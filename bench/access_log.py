"""CPU per access-log line: the sidecar's access log against the logging path it replaced.

Runs in a fresh interpreter (bench/run.py starts it; `python bench/access_log.py` alone works
too) and prints one JSON object as its last line. Each path writes LINES lines as the handler's
call site does (the request id settled, the duration rounded, then the line: storefront, method,
path, status, peer), to a file in a temporary directory, in an event loop, and is charged the
process's CPU time from the first line until the last one is written.

- ``access_log``: proxy.access_log.AccessLog (formatted directly, batched, written from the loop)
- ``logging``: the path before it, kept here for comparison: a ``proxy.access`` record through
  logging, proxy.log's filters and JsonFormatter, and a StreamHandler (a write and a flush per line)

Goal: the access log at most MAX_US_PER_LINE µs per line (compiled build).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import proxy.access_log
from proxy.access_log import AccessLog
from proxy.compiled import is_compiled
from proxy.log import (
    JsonFormatter,
    MalformedRequestFilter,
    RepeatedWarningFilter,
    RequestContext,
    request_context,
)
from proxy.metrics import Metrics

LINES = 200_000
MAX_US_PER_LINE = 3.0
PATH = "/product-small"
PEER = "127.0.0.1"
# Lines recorded per turn of the event loop (requests served between two waits for events).
YIELD_EVERY = 50


async def access_log_cpu_s(target: Path, lines: int) -> float:
    log = AccessLog.open(str(target), Metrics().access_log_dropped)
    started = time.process_time()
    for number in range(lines):
        if number % YIELD_EVERY == 0:
            # The server's loop turns between requests; the batches' timer runs on those turns.
            await asyncio.sleep(0)
        context = RequestContext(None, "bench")
        began = time.perf_counter()
        log.record(
            context.request_id,
            context.storefront,
            "GET",
            PATH,
            200,
            time.perf_counter() - began,
            PEER,
        )
    await log.aclose()
    return time.process_time() - started


def logging_cpu_s(target: Path, lines: int) -> float:
    logger = logging.getLogger("proxy.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with target.open("w") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(MalformedRequestFilter())
        handler.addFilter(RepeatedWarningFilter())
        logger.addHandler(handler)
        started = time.process_time()
        for _ in range(lines):
            context = RequestContext(None, "bench")
            request_context.set(context)
            began = time.perf_counter()
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "request",
                    extra={
                        "method": "GET",
                        "path": PATH,
                        "status": 200,
                        "duration_ms": round((time.perf_counter() - began) * 1000, 2),
                        "peer": PEER,
                    },
                )
        spent = time.process_time() - started
        logger.removeHandler(handler)
    return spent


def fresh(path: Path) -> Path:
    """``path``, emptied: the log appends, and the file must hold one run's lines."""
    path.unlink(missing_ok=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=LINES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cc-access-log-") as tmp:
        new_file, old_file = Path(tmp) / "access.log", Path(tmp) / "logging.log"
        # Warm up (imports, the allocator), then measure each path in turn, twice; the lower counts.
        asyncio.run(access_log_cpu_s(new_file, 10_000))
        logging_cpu_s(old_file, 10_000)
        new = min(asyncio.run(access_log_cpu_s(fresh(new_file), args.lines)) for _ in range(2))
        old = min(logging_cpu_s(old_file, args.lines) for _ in range(2))
        written = sum(1 for _ in new_file.open())
    result = {
        "lines": args.lines,
        "compiled": is_compiled(proxy.access_log),
        "access_log_us_per_line": round(new / args.lines * 1e6, 2),
        "logging_us_per_line": round(old / args.lines * 1e6, 2),
        "lines_in_file": written,
        "target_us_per_line": MAX_US_PER_LINE,
    }
    print(json.dumps(result))
    return 0 if result["access_log_us_per_line"] <= MAX_US_PER_LINE and written == args.lines else 1


if __name__ == "__main__":
    sys.exit(main())
