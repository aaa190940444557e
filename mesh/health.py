"""Readiness: whether this router can serve, computed in one place for gRPC health, ServerReady and REST.

Ready needs both halves of a request's path: the store answers (a `get` of one key within a short timeout), and
at least one runtime instance is reachable (registered, not marked unreachable by a failed call, and its channel
not failing to connect). It is evaluated at start, whenever the set of instances changes, and every
`health_check_seconds`, and kept here, so every front door reads the same answer.

Whoever assembles a router may hold readiness back while it starts (`mesh serve` does until its runtimes are
added and the example models registered), so that a client that waits for ready finds what it was promised.

Liveness is another question: the process is up and answering. It stays true while the router is not ready,
so an orchestrator takes a router that waits for its store or runtimes out of the load balancer, but does not
restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mesh.kv.base import KV
from mesh.periodic import woken_or_after
from mesh.placement.manager import PlacementManager

log = logging.getLogger(__name__)

# The store probe's deadline, at most; a store slower than this cannot serve loads or registrations either.
STORE_PROBE_TIMEOUT_S = 1.0


class Readiness:
    """The router's readiness, re-evaluated on instance changes and periodically; listeners hear each flip."""

    def __init__(self, kv: KV, manager: PlacementManager, period_seconds: float) -> None:
        self._kv = kv
        self._manager = manager
        self._period = period_seconds
        self._probe_timeout = min(STORE_PROBE_TIMEOUT_S, period_seconds)
        self._probe_key = manager.keys.root
        self.ready = False
        self.reason = "not checked yet"
        self.on_change: list[Callable[[bool], Awaitable[None]]] = []
        self._published = False
        self._holds: list[str] = []
        self._conditions: list[Callable[[], str | None]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def hold(self, reason: str) -> None:
        """Stay not ready, saying `reason`, until release(reason)."""
        self._holds.append(reason)

    async def release(self, reason: str) -> None:
        """End a hold() and evaluate at once."""
        self._holds.remove(reason)
        await self.check()

    def add_condition(self, problem: Callable[[], str | None]) -> None:
        """One more thing readiness needs: problem() says what is wrong, or None (the native engine runs, say)."""
        self._conditions.append(problem)

    def check_soon(self) -> None:
        """Re-evaluate at once in the background (a burst of calls costs one evaluation)."""
        self._wake.set()

    async def check(self) -> bool:
        """Evaluate now, tell the listeners if the answer changed, and return it."""
        async with self._lock:
            problem = (
                self._hold_problem()
                or await self._store_problem()
                or self._instance_problem()
                or next((p for p in (condition() for condition in self._conditions) if p), None)
            )
            ready = problem is None
            changed = ready != self.ready or not self._published
            self.ready, self.reason = ready, problem or "ready"
            if not changed:
                return ready
            self._published = True
            if ready:
                log.info("router is ready: the store answers and a runtime instance is reachable")
            else:
                log.warning("router is not ready: %s", problem)
            for listener in self.on_change:
                await listener(ready)
            return ready

    def _hold_problem(self) -> str | None:
        return f"still starting: {'; '.join(self._holds)}" if self._holds else None

    async def _store_problem(self) -> str | None:
        try:
            await asyncio.wait_for(self._kv.get(self._probe_key), self._probe_timeout)
        except TimeoutError:
            return f"the store did not answer within {self._probe_timeout:.1f} s"
        except Exception as exc:  # noqa: BLE001 - whatever the store's failure, it cannot serve
            return f"the store failed: {exc}"
        return None

    def _instance_problem(self) -> str | None:
        manager = self._manager
        instances = sorted(manager.view.instances)
        if not instances:
            return "no runtime instance is registered"
        # Every instance is looked at (not just until one answers): looking starts idle channels connecting.
        answering = [i for i in instances if manager.health.answering(i)]
        if answering:
            return None
        return f"no runtime instance is reachable ({', '.join(instances)})"

    async def _run(self) -> None:
        while True:
            await woken_or_after(self._wake, self._period)
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # a failed round is retried next period; readiness must keep being evaluated
                log.exception("readiness check failed")
