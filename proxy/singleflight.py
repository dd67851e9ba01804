"""Single-flight: concurrent callers that need the same thing share one task.

Used for tokens, users and merges (``tokens``) and session checks (``identity``), so 200
concurrent first requests of one customer cost one call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one task per key; callers that arrive while it runs get the same task."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def run(self, key: K, start: Callable[[], Coroutine[Any, Any, V]]) -> asyncio.Task[V]:
        """The task in flight for ``key``, or a new one made from ``start()``."""
        task = self._tasks.get(key)
        # A finished task may still be listed until its done callback runs: never join it, so
        # a failure reaches only the callers that were waiting for it.
        if task is None or task.done():
            task = asyncio.create_task(start())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        return task

    def running(self, key: K) -> asyncio.Task[V] | None:
        """The task in flight for ``key``, if any (not one that has finished)."""
        task = self._tasks.get(key)
        return None if task is None or task.done() else task

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            # Every waiter has the outcome already; mark it retrieved so asyncio does not report
            # an exception nobody awaited (all waiters may have timed out).
            task.exception()

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel everything in flight and wait until it has stopped."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
