"""vmodel transitions: a vmodel moves to a new target only once the target serves as well as the model it
replaces. The target loads, then gets as many copies as the active model had when the move began (ModelMesh's
rule; as far as instances and room allow, since copies of the target may evict idle models as minimum copies
do), and only then does the vmodel switch, in one compare-and-swap.

The move is written in the vmodel's record (active ≠ target, and the copies wanted), so it does not depend on
the router that started it: every router looks for moves under way every `period` seconds and drives the ones it
is not driving already. Two routers driving one move do no harm: loads are single-flight across routers (load
claims), a copy is added only against the count its claim expected, and the switch is a compare-and-swap that
changes nothing once done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mesh.errors import MeshError
from mesh.periodic import every
from mesh.placement.manager import PlacementManager
from mesh.placement.records import Kind, VModelRecord
from mesh.placement.store import UNCHANGED

log = logging.getLogger(__name__)


class VModelTransitions:
    def __init__(
        self, manager: PlacementManager, delete_if_unused: Callable[[str], Awaitable[None]], period: float
    ) -> None:
        """delete_if_unused: unregister a model no vmodel uses any more (a retired model with auto-delete)."""
        self._manager = manager
        self._view = manager.view
        self._store = manager.store
        self._delete_if_unused = delete_if_unused
        self._period = period
        self._running: dict[str, asyncio.Task[None]] = {}
        self._resuming: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Drive moves under way, this router's or another's, from now on (every `period` seconds)."""
        self._resuming = asyncio.get_running_loop().create_task(self._resume_from_now(), name="vmodel-transitions")

    async def close(self) -> None:
        tasks = [*self._running.values(), *([self._resuming] if self._resuming else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def copies_wanted(self, active_model_id: str) -> int:
        """How many copies a new target must reach: the active model's loaded copies now (at least one)."""
        return max(len(self._manager.copies.loaded_copies(active_model_id)), 1)

    def drive(self, vmodel_id: str) -> asyncio.Task[None]:
        """The task moving the vmodel to its target, started if this router is not running it already."""
        task = self._running.get(vmodel_id)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._move(vmodel_id), name=f"vmodel-{vmodel_id}")
            self._running[vmodel_id] = task
            task.add_done_callback(lambda done: self._finished(vmodel_id, done))
        return task

    def _finished(self, vmodel_id: str, task: asyncio.Task[None]) -> None:
        if self._running.get(vmodel_id) is task:
            del self._running[vmodel_id]
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning("vmodel %s: the move stopped: %r (resumed within %.0f s)", vmodel_id, error, self._period)

    async def _resume_from_now(self) -> None:
        await self.resume()  # a router that starts takes over at once the moves of one that died
        await every(self._period, self.resume, "resuming vmodel transitions", log)

    async def resume(self) -> None:
        """Drive every move under way that this router is not driving (its router may have died)."""
        for vmodel_id, known in list(self._view.vmodels.items()):
            record = known.record
            if record.active_model_id != record.target_model_id and not record.failed:
                self.drive(vmodel_id)

    async def _move(self, vmodel_id: str) -> None:
        known = self._view.vmodels.get(vmodel_id)
        if known is None:
            return
        target, wanted = known.record.target_model_id, known.record.copies_wanted
        try:
            await self._manager.ensure_loaded(target)
            await self._add_copies(vmodel_id, target, wanted)
            failed = False
        except MeshError as exc:
            log.warning("vmodel %s: target %s did not load: %s", vmodel_id, target, exc.message)
            failed = True
        await self._switch(vmodel_id, target, failed)

    async def _add_copies(self, vmodel_id: str, target: str, wanted: int) -> None:
        """Copies of the target up to `wanted`, one at a time, while each attempt adds one (no instance or room left
        for another ends it: the vmodel then moves with what the target has)."""
        copies = self._manager.copies
        have = len(copies.loaded_copies(target))
        while have < wanted:
            log.info("vmodel %s: target %s has %d of %d copies", vmodel_id, target, have, wanted)
            await self._manager.add_copy(target, may_evict=True)
            now = len(copies.loaded_copies(target))
            if now <= have:
                log.warning(
                    "vmodel %s: target %s has %d of the %d copies its active model had (no room or instance for "
                    "more); moving with these",
                    vmodel_id,
                    target,
                    now,
                    wanted,
                )
                return
            have = now

    async def _switch(self, vmodel_id: str, target: str, failed: bool) -> None:
        retired: list[str] = []

        def change(current: VModelRecord | None) -> object:
            if current is None or current.target_model_id != target or current.active_model_id == target:
                return UNCHANGED  # deleted, retargeted or switched meanwhile
            if failed:
                return current.failed_move() if not current.failed else UNCHANGED
            if current.auto_delete:
                retired.append(current.active_model_id)
            return current.moved()

        await self._store.update(Kind.VMODEL, vmodel_id, change)
        for model_id in retired:
            with contextlib.suppress(MeshError):
                await self._delete_if_unused(model_id)
