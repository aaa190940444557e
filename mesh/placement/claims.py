"""The load claim protocol: how routers that miss on the same model at once agree that exactly one of them loads.

A claim is the compare-and-swap that records a LOADING copy on the chosen instance; it succeeds only while the
model has the expected number of live copies (none, for a first load), so however many routers race, one wins and
the others wait for its outcome through their views. The winner renews its claim every LOAD_HEARTBEAT_S while it
loads; a claim not renewed for LOADING_STALE_S is stale (its router died), and the next claim clears it and
unloads whatever that dead load may still leave on the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import grpc

from mesh.errors import MeshError
from mesh.periodic import every
from mesh.placement.copies import LOAD_HEARTBEAT_S, CopyTable
from mesh.placement.instance_health import InstanceHealth
from mesh.placement.instances import RuntimeClients
from mesh.placement.records import CopyRecord, CopyState, Footprint, Kind, PlacementRecord, now_ms
from mesh.placement.store import UNCHANGED, RecordStore
from mesh.placement.view import LocalView

log = logging.getLogger(__name__)


class LoadClaims:
    def __init__(
        self,
        view: LocalView,
        store: RecordStore,
        copies: CopyTable,
        clients: RuntimeClients,
        health: InstanceHealth,
    ) -> None:
        self._view = view
        self._store = store
        self._copies = copies
        self._clients = clients
        self._health = health
        self._background: set[asyncio.Task[None]] = set()

    async def claim(
        self, model_id: str, instance_id: str, size: Footprint, incarnation: int, expected_live: int = 0
    ) -> bool:
        """Record a LOADING copy on instance_id if, and only if, the model has exactly expected_live live copies
        (0 for a first load; the current count for an extra copy) and none of them is on that instance."""
        claimed = False
        stale: list[str] = []

        def change(current: PlacementRecord | None) -> object:
            nonlocal claimed, stale
            record = current or PlacementRecord()
            live = set(self._copies.live_copies(record))
            claimed = len(live) == expected_live and instance_id not in live
            if not claimed:
                return UNCHANGED
            stale = [i for i, c in record.copies.items() if c.state is CopyState.LOADING and i not in live]
            for gone in stale:
                record = record.without_copy(gone)
            loading = CopyRecord(CopyState.LOADING, now_ms(), size.size_bytes, incarnation, size.device_bytes)
            return record.with_copy(instance_id, loading)

        await self._store.update(Kind.PLACEMENT, model_id, change)
        if claimed:
            for gone in stale:
                if gone != instance_id and gone in self._view.instances:
                    # A dead router's load may still finish there, as a copy nobody records: undo it.
                    self.abandon(model_id, gone)
        return claimed

    def renew_while_loading(self, model_id: str, instance_id: str, incarnation: int) -> asyncio.Task[None]:
        """Renew the claim every LOAD_HEARTBEAT_S until the returned task is cancelled (when the load ends)."""
        return asyncio.create_task(self._renew(model_id, instance_id, incarnation), name=f"claim-{model_id}")

    async def _renew(self, model_id: str, instance_id: str, incarnation: int) -> None:
        def renew(current: PlacementRecord | None) -> object:
            copy = current.copies.get(instance_id) if current else None
            if (
                current is None
                or copy is None
                or copy.state is not CopyState.LOADING
                or copy.incarnation != incarnation
            ):
                return UNCHANGED
            return current.with_copy(instance_id, dataclasses.replace(copy, since_ms=now_ms()))

        async def beat() -> None:
            await self._store.update(Kind.PLACEMENT, model_id, renew)

        # A store outage skips a beat (the next one tries again); other routers stop waiting meanwhile.
        await every(LOAD_HEARTBEAT_S, beat, f"renewing the load claim of {model_id}", log)

    def abandon(self, model_id: str, instance_id: str) -> None:
        """A load that timed out (or whose router died) may still finish on a runtime that is only slow: unload it
        (SPI contract), in the background, since a runtime that hangs may not answer that either."""

        async def unload() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, MeshError):
                await self._clients.get(instance_id).unload(model_id, timeout=self._health.load_timeout(instance_id))

        task = asyncio.get_running_loop().create_task(unload(), name=f"abandon-{model_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
