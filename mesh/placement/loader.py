"""Loading copies: one load per model at a time in this router (single flight), where to load it, the claim that
makes it one load across routers, and what a failure means.

`ensure_loaded(model_id)` is the whole miss: every caller for a model awaits the same load task. The task chooses
an instance (choosing.py: the policy over the copy table's picture of the instances), claims the load (claims.py),
evicts the victims the choice named (evictor.py), calls the runtime, and records the LOADED copy. It decides only
when an instance that could take the model has a free load slot: a decision taken while the load must still queue
would evict copies, and hold their room, that keep serving hits until the load can start (issue 19). A runtime
that does not answer is set aside and the next instance tried; one that hangs or runs out of memory is
tried elsewhere (MAX_LOAD_ATTEMPTS in all); a load the model itself fails is recorded against the instance and
not retried there for load_failure_backoff_seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc

from mesh.config import Settings
from mesh.errors import MeshError, ModelLoadFailed, ModelNotFound, Overloaded, Unavailable
from mesh.metrics import RouterMetrics
from mesh.periodic import woken_or_after
from mesh.placement import policy
from mesh.placement.choosing import Chooser
from mesh.placement.claims import LoadClaims
from mesh.placement.copies import LOADING_STALE_S, CopyTable
from mesh.placement.decisions import DecisionLog
from mesh.placement.evictor import Evictor
from mesh.placement.instance_health import InstanceHealth
from mesh.placement.instances import RuntimeClients
from mesh.placement.records import (
    CopyRecord,
    CopyState,
    Footprint,
    Kind,
    LoadFailure,
    ModelRecord,
    PlacementRecord,
    now_ms,
)
from mesh.placement.sizing import size_to_place
from mesh.placement.store import RecordStore
from mesh.placement.thrash import HeldBack, ThrashGuard
from mesh.placement.usage import Usage
from mesh.placement.view import LocalView
from mesh.single_flight import SingleFlight

log = logging.getLogger(__name__)

BUSY_WAIT_S = 3.0
"""How long a load waits for an instance whose evictable copies are all busy (loading, serving) to free one."""
BUSY_RETRY_S = 0.05
SLOT_RECHECK_S = 0.5
"""A load waiting for a free load slot looks again at least this often (another router's loads end unannounced)."""
MAX_LOAD_ATTEMPTS = 3
"""Instances one request tries a load on when a runtime, not the model, fails it (ModelMesh's MAX_LOAD_FAILURES)."""


class _InstanceUnreachable(Exception):
    """A runtime did not answer a load: not the model's fault, so no failure is recorded against it."""


class _TryElsewhere(Exception):
    """A runtime failed a load in a way another instance (or this one, after making room) may not: it hung past
    the load timeout, or ran out of memory."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Loader:
    def __init__(
        self,
        settings: Settings,
        view: LocalView,
        store: RecordStore,
        clients: RuntimeClients,
        copies: CopyTable,
        health: InstanceHealth,
        claims: LoadClaims,
        evictor: Evictor,
        usage: Usage,
        metrics: RouterMetrics,
        guard: ThrashGuard,
        decisions: DecisionLog,
    ) -> None:
        self._settings = settings
        self._decisions = decisions
        self._view = view
        self._store = store
        self._clients = clients
        self._copies = copies
        self._health = health
        self._claims = claims
        self._evictor = evictor
        self._usage = usage
        self._metrics = metrics
        self._guard = guard
        self._chooser = Chooser(settings, view, copies, health, guard, usage.last_used_ms)
        self._loads: SingleFlight[str, str] = SingleFlight("load")
        # Choosing an instance and claiming the load there is one decision per router: two loads deciding at once
        # would both count the same free bytes.
        self._decide = asyncio.Lock()
        # Set (and replaced) each time one of this router's loads ends: loads waiting for a free slot decide then.
        self._slot_freed = asyncio.Event()
        self._placement_waiters: dict[str, asyncio.Event] = {}

    async def ensure_loaded(self, model_id: str) -> str:
        """The instance holding a loaded copy, starting the one load for this model if there is none."""
        holder = self._copies.loaded_holder(model_id)
        if holder is not None:
            return holder
        # Every caller awaits the one load; one that gives up (a deadline, a disconnect) does not cancel it.
        return await self._loads.run(model_id, self._load_first_copy, model_id)

    def dry_run(self, model: ModelRecord, size: Footprint) -> tuple[list[policy.Verdict], dict[str, str]]:
        """What a load of the model would decide now (Chooser.dry_run), for `mesh explain`."""
        return self._chooser.dry_run(model, size)

    def loading(self, model_id: str) -> bool:
        return self._loads.running(model_id) is not None

    def loading_models(self) -> list[str]:
        """The models this router is loading, or waiting to load, for requests."""
        return self._loads.keys()

    def placement_changed(self, model_id: str) -> None:
        """The view saw the model's placement record change: wake a load waiting for another router's."""
        event = self._placement_waiters.get(model_id)
        if event is not None:
            event.set()

    async def stop(self) -> None:
        await self._loads.cancel_all()

    # ---- the first copy ----------------------------------------------------------------------------------

    async def _load_first_copy(self, model_id: str) -> str:
        """Place and load one copy, unless another router claimed the load first; then wait for its result."""
        model = self._model(model_id)
        size = await size_to_place(self._view, self._clients, model, self._settings.predict_size_timeout_seconds)
        attempts = 0
        busy_until: float | None = None  # set when it first finds every copy it could evict busy
        queue = HeldBack(self._guard)
        while True:
            choice: policy.LoadPlan | None = None
            claimed = False
            recheck_s = SLOT_RECHECK_S
            held: Overloaded | None = None
            async with self._decide:
                holder = self._copies.loaded_holder(model_id)
                if holder is not None:
                    return holder
                slot_freed = self._slot_freed
                loading_on = self._copies.loading_on(model_id)
                if loading_on is None:
                    try:
                        choice = self._chooser.first_copy(model, size)
                    except Overloaded as exc:
                        held = exc
                        self._decisions.record(model_id, "held_back", retry_after_s=round(exc.retry_after_s, 1))
                    except Unavailable:
                        # Everything it could evict is loading or serving right now: that changes within
                        # milliseconds under churn, so look again for a while before saying "retry".
                        busy_until = busy_until or time.monotonic() + BUSY_WAIT_S
                        if time.monotonic() > busy_until:
                            raise
                        recheck_s = BUSY_RETRY_S
                if choice is not None:
                    incarnation = self._view.instances[choice.instance_id].record.started_ms
                    claimed = await self._claims.claim(model_id, choice.instance_id, size, incarnation)
                    if claimed:
                        self._start_load(model_id, choice)
                    else:
                        loading_on = self._copies.loading_on(model_id)
            if held is not None:
                await queue.wait(held)  # raises it when the guard refuses, or the wait is over
                continue
            if loading_on is not None:
                # Another router's load (or one that beat our claim): its outcome comes through the view.
                timeout = min(self._health.load_timeout(loading_on), LOADING_STALE_S)
                await self._await_placement_change(model_id, timeout)
                continue
            if choice is None:
                # Every instance that could take it is using all its load slots (or all it could evict is busy):
                # decide when a load ends, not now. Deciding now would evict copies (and hold their room) that
                # go on serving hits until this load could start.
                await woken_or_after(slot_freed, recheck_s)
                continue
            if not claimed:
                # The record changed under the claim (the store showed the view what won): look again, after
                # yielding, so that a store that answers without suspending cannot make this a busy loop.
                await asyncio.sleep(0)
                continue
            try:
                return await self._load_claimed(model, choice, incarnation)
            except _InstanceUnreachable:
                continue  # _choose no longer offers that instance; it raises when nothing is left
            except _TryElsewhere as exc:
                attempts += 1
                if attempts >= MAX_LOAD_ATTEMPTS:
                    raise ModelLoadFailed(f"{exc.message} ({attempts} attempts)") from exc

    def _start_load(self, model_id: str, choice: policy.LoadPlan) -> None:
        """The claim is ours: mark the victims (no other decision takes them) and count the load on the instance."""
        self._guard.loading(model_id)
        for victim in choice.victims:
            self._copies.evicting(victim.model_id, choice.instance_id)
        self._copies.load_started(choice.instance_id)

    async def _await_placement_change(self, model_id: str, timeout: float) -> None:
        """Wait until the model's placement record changes (another router's load finished or failed)."""
        event = self._placement_waiters.setdefault(model_id, asyncio.Event())
        try:
            await woken_or_after(event, timeout)  # after the timeout, a claim that old is stale: the next ignores it
        finally:
            self._placement_waiters.pop(model_id, None)

    # ---- one claimed load --------------------------------------------------------------------------------

    async def _load_claimed(self, model: ModelRecord, choice: policy.LoadPlan, incarnation: int) -> str:
        """Evict the plan's victims, load the copy, record it LOADED, trim any overflow; the instance id."""
        model_id, instance_id = model.model_id, choice.instance_id
        started = time.perf_counter()
        done = False
        heartbeat = self._claims.renew_while_loading(model_id, instance_id, incarnation)
        try:
            if choice.victims:
                await self._evictor.evict(instance_id, choice.victims, for_model=model_id)
            load_started = time.perf_counter()
            size = await self._call_load(instance_id, model)
            load_ms = max(round((time.perf_counter() - load_started) * 1000), 1)
            done = True
        except grpc.aio.AioRpcError as exc:
            raise await self._load_failed(model_id, instance_id, exc, started) from exc
        finally:
            heartbeat.cancel()
            self._copies.load_ended(instance_id)
            self._slot_freed.set()
            self._slot_freed = asyncio.Event()
            if not done:
                await self._evictor.drop_copy(model_id, instance_id, only_if=CopyState.LOADING)
        # Loaded for a request that is about to use it: it enters the cluster-wide LRU as the most recently used
        # (ModelMesh's cache does the same), in the same write that records it, so that no router's next load
        # takes a copy nobody has used yet for the least recently used one and evicts it before its request.
        loaded_ms = now_ms()
        self._usage.touched(model_id)
        loaded = CopyRecord(CopyState.LOADED, loaded_ms, size.size_bytes, incarnation, size.device_bytes)
        await self._store.update(
            Kind.PLACEMENT,
            model_id,
            lambda p: dataclasses.replace(
                (p or PlacementRecord()).with_copy(instance_id, loaded).used_at(loaded_ms), load_ms=load_ms
            ),
        )
        ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "loaded model %s on %s in %d ms (%d bytes%s)",
            model_id,
            instance_id,
            ms,
            size.size_bytes,
            f", {size.device_bytes} on its accelerator" if size.device_bytes else "",
            extra={
                "event": "loaded",
                "model": model_id,
                "instance": instance_id,
                "ms": ms,
                "bytes": size.size_bytes,
                "device_bytes": size.device_bytes,
            },
        )
        evicted = [v.model_id for v in choice.victims]
        why = f"evicted {', '.join(evicted)} to make room" if evicted else "fit in free memory"
        self._decisions.record(
            model_id,
            "loaded",
            instance=instance_id,
            ms=ms,
            bytes=size.size_bytes,
            evicted=evicted,
            why=why,
            ranking=list(choice.ranking),
        )
        await self._evictor.trim(instance_id, keep=model_id)
        return instance_id

    async def _call_load(self, instance_id: str, model: ModelRecord) -> Footprint:
        """loadModel on the runtime; the size it measured. No slot to wait for: the decision to load here was taken
        only with one of the instance's load slots free (choosing.with_free_slot), and counted against it since."""
        started = time.perf_counter()
        try:
            size = await self._clients.get(instance_id).load(model, self._health.load_timeout(instance_id))
        except grpc.aio.AioRpcError:
            self._metrics.load_failed(model.model_id)
            raise
        self._metrics.loaded(model.model_id, started, size.size_bytes)
        return size

    async def _load_failed(
        self, model_id: str, instance_id: str, exc: grpc.aio.AioRpcError, started: float
    ) -> Exception:
        """What a runtime's failed load means, as the exception to raise: try another instance, or fail the model
        (recorded against the instance, so that it is not retried there for a while)."""
        message = f"{exc.code().name}: {exc.details()}"
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            self._health.mark_unreachable(instance_id, message)
            return _InstanceUnreachable(instance_id)
        placement = self._view.placements.get(model_id)
        on_device = placement is not None and placement.record.device_bytes > 0
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and self._health.cap_capacity(
            instance_id, message, device=on_device
        ):
            # Not the model's fault: with the instance's capacity capped at what it holds, the next choice makes
            # room there (or goes elsewhere).
            return _TryElsewhere(f"model '{model_id}' did not fit on instance '{instance_id}': {message}")
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            self._claims.abandon(model_id, instance_id)
        failure = LoadFailure(message, now_ms())
        self._decisions.record(model_id, "load_failed", instance=instance_id, error=message)
        await self._store.update(
            Kind.PLACEMENT, model_id, lambda p: (p or PlacementRecord()).with_failure(instance_id, failure)
        )
        ms = round((time.perf_counter() - started) * 1000)
        log.error(
            "load of model %s on %s failed after %d ms: %s",
            model_id,
            instance_id,
            ms,
            message,
            extra={"event": "load_failed", "model": model_id, "instance": instance_id, "ms": ms, "error": message},
        )
        failed = f"model '{model_id}' failed to load on instance '{instance_id}': {message}"
        if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return _TryElsewhere(failed)  # the failure recorded keeps this instance out of the retry
        return ModelLoadFailed(failed)

    # ---- extra copies ------------------------------------------------------------------------------------

    async def add_copy(self, model_id: str, may_evict: bool = False) -> None:
        """Load one more copy on another instance. may_evict: the copy is one of the model's minimum copies, and may
        evict others to make room (and be its first copy); else it takes free space only: an extra copy never
        evicts a model. A copy that cannot be added is logged, not raised (the scaler calls this in the
        background)."""
        try:
            model = self._model(model_id)
            async with self._decide:
                record = self._copies.placement(model_id) or PlacementRecord()
                live = self._copies.live_copies(record)
                if any(record.copies[i].state is CopyState.LOADING for i in live):
                    return
                first = not live
                if first and not may_evict:
                    return
                if not first:
                    choice = self._chooser.extra_copy(model, record, live, may_evict)
                    if choice is None:
                        return
                    incarnation = self._view.instances[choice.instance_id].record.started_ms
                    if not await self._claims.claim(
                        model_id, choice.instance_id, record.footprint, incarnation, expected_live=len(live)
                    ):
                        return
                    self._start_load(model_id, choice)
            if first:
                log.debug("loading model %s: it keeps %d copies loaded", model_id, model.min_copies)
                await self.ensure_loaded(model_id)
                return
            log.info("adding copy %d of model %s on %s", len(live) + 1, model_id, choice.instance_id)
            await self._load_claimed(model, choice, incarnation)
        except (MeshError, _InstanceUnreachable, _TryElsewhere) as exc:
            log.warning("extra copy of model %s not added: %s", model_id, exc)

    # ---- what a load needs to know -----------------------------------------------------------------------

    def _model(self, model_id: str) -> ModelRecord:
        known = self._view.models.get(model_id)
        if known is None:
            raise ModelNotFound(model_id)
        return known.record
