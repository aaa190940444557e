"""Taking copies away: evicting victims to make room, trimming an instance that overflowed, unloading a copy, and
dropping copies from the records (unrouted first, then unloaded: no request is sent to a copy being unloaded)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from mesh.errors import Unavailable
from mesh.metrics import RouterMetrics
from mesh.placement import policy
from mesh.placement.copies import CopyTable
from mesh.placement.decisions import DecisionLog
from mesh.placement.instances import RuntimeClients
from mesh.placement.records import CopyState, Kind, PlacementRecord, now_ms
from mesh.placement.store import UNCHANGED, RecordStore
from mesh.placement.thrash import ThrashGuard
from mesh.placement.usage import Usage
from mesh.placement.view import LocalView

log = logging.getLogger(__name__)

Drain = Callable[[str, str], Awaitable[None]]
"""drain(model_id, instance_id): returns once nothing outside this router's leases sends requests to the copy."""


async def nothing_to_drain(model_id: str, instance_id: str) -> None:
    """Without a native data plane every request holds a lease, and a copy with leases is never chosen to go."""


class Evictor:
    def __init__(
        self,
        view: LocalView,
        store: RecordStore,
        copies: CopyTable,
        usage: Usage,
        clients: RuntimeClients,
        metrics: RouterMetrics,
        eviction_policy: str,
        guard: ThrashGuard,
        decisions: DecisionLog,
    ) -> None:
        self._view = view
        self._store = store
        self._copies = copies
        self._usage = usage
        self._clients = clients
        self._metrics = metrics
        self._policy = eviction_policy
        self._guard = guard
        self._decisions = decisions
        self.drain: Drain = nothing_to_drain

    async def evict(self, instance_id: str, victims: tuple[policy.ResidentCopy, ...], for_model: str) -> None:
        """Unload victims from an instance to make room for for_model. The caller marked them evicting (in the same
        decision that chose them); each is unmarked once gone. All leave routing and drain together, then unload."""
        self._usage.evicted(victims)
        for victim in victims:
            self._metrics.evicted(victim.model_id, victim.last_used_ms)
            self._guard.evicted(victim.model_id)
            age_s = (now_ms() - victim.last_used_ms) / 1000 if victim.last_used_ms else float("inf")
            idle = round(age_s, 1) if victim.last_used_ms else None
            self._decisions.record(victim.model_id, "evicted", instance=instance_id, for_model=for_model, idle_s=idle)
            log.info(
                "evicting model %s from %s (last used %.0fs ago) to make room for %s",
                victim.model_id,
                instance_id,
                age_s,
                for_model,
                extra={
                    "event": "evicting",
                    "model": victim.model_id,
                    "instance": instance_id,
                    "bytes": victim.size_bytes,
                    "last_used_ms": victim.last_used_ms,
                    "for_model": for_model,
                },
            )
        try:
            await asyncio.gather(*(self._out_of_routing(v.model_id, instance_id) for v in victims))
            for victim in victims:
                await self._unload(victim.model_id, instance_id)
        finally:
            for victim in victims:
                self._copies.evicted(victim.model_id, instance_id)

    async def trim(self, instance_id: str, keep: str) -> None:
        """Evict the copies worth least when measured sizes overflow an instance (predictions can be low)."""
        for view in self._copies.instance_views():
            if view.record.instance_id != instance_id:
                continue
            victims = tuple(v for v in policy.over_capacity(view, self._policy) if v.model_id != keep)
            for victim in victims:
                self._copies.evicting(victim.model_id, instance_id)
            if victims:
                await self.evict(instance_id, victims, for_model=keep)

    async def unload_copy(self, model_id: str, instance_id: str, why: str = "") -> None:
        """Stop routing to a copy, let the requests on it finish, then unload it from its runtime."""
        self._decisions.record(model_id, "unloaded", instance=instance_id, why=why)
        await self._out_of_routing(model_id, instance_id)
        await self._unload(model_id, instance_id)

    async def _out_of_routing(self, model_id: str, instance_id: str) -> None:
        await self.drop_copy(model_id, instance_id)
        await self.drain(model_id, instance_id)

    async def _unload(self, model_id: str, instance_id: str) -> None:
        started = time.perf_counter()
        try:
            await self._clients.get(instance_id).unload(model_id)
        except (grpc.aio.AioRpcError, Unavailable) as exc:
            self._metrics.unload_failed(model_id)
            log.warning(
                "unload of model %s from %s failed: %s",
                model_id,
                instance_id,
                exc,
                extra={"event": "unload_failed", "model": model_id, "instance": instance_id, "error": str(exc)},
            )
            return
        self._metrics.unloaded(model_id, started)
        ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "unloaded model %s from %s in %d ms",
            model_id,
            instance_id,
            ms,
            extra={"event": "unloaded", "model": model_id, "instance": instance_id, "ms": ms},
        )

    async def drop_copy(
        self, model_id: str, instance_id: str, only_if: CopyState | None = None, only_incarnation: int | None = None
    ) -> None:
        """Remove the copy from the model's record (only_if: only in that state; only_incarnation: only if made on
        that incarnation of the instance)."""

        def change(p: PlacementRecord | None) -> object:
            copy = p.copies.get(instance_id) if p else None
            if copy is None or (only_if is not None and copy.state is not only_if):
                return UNCHANGED
            if only_incarnation is not None and copy.incarnation != only_incarnation:
                return UNCHANGED
            return p.without_copy(instance_id)  # type: ignore[union-attr]

        await self._store.update(Kind.PLACEMENT, model_id, change)

    async def drop_stale_copies(self, instance_id: str) -> None:
        """Remove copies recorded on an earlier incarnation of an instance (it restarted empty)."""
        known = self._view.instances.get(instance_id)
        if known is None:
            return
        incarnation = known.record.started_ms
        for model_id, placement in list(self._view.placements.items()):
            copy = placement.record.copies.get(instance_id)
            if copy is not None and copy.incarnation != incarnation:
                await self.drop_copy(model_id, instance_id, only_incarnation=copy.incarnation)
