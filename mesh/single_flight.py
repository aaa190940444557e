"""Single flight: at most one task per key, however many callers ask for it at once.

The first caller for a key starts the task; every caller awaits the same one, shielded, so a caller that goes away
(a deadline, a disconnect) does not cancel it for the others. The key is forgotten when its task ends, and the
task's exception is retrieved then, so a task every caller gave up on does not warn. Used for loads in the router
(placement/loader.py), in the built-in runtime and in the adapters, and for TorchServe registrations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self, name: str) -> None:
        """name: how the tasks are named (`<name> <key>`), for debugging."""
        self._name = name
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, start: Callable[..., Coroutine[Any, Any, V]], *args: Any) -> V:
        """The result of the key's task, starting it as start(*args) when none is running."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(start(*args))
            task.set_name(f"{self._name} {key}")
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: its callers have it, or have gone

    def running(self, key: K) -> asyncio.Task[V] | None:
        """The key's task while it runs."""
        return self._tasks.get(key)

    def keys(self) -> list[K]:
        return list(self._tasks)

    def cancel(self, key: K) -> asyncio.Task[V] | None:
        """Cancel the key's task and forget it at once (a new run starts afresh); the task, or None."""
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        return task

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
