"""Load on miss, single-flight, eviction and failure records: the placement decisions of one router.

Routing an already-loaded model reads only the local view (no store round trip) and notes the time of use in
memory (recency.py, which writes it to the store in batches). A miss starts at most one load per model in
this router; every request for that model awaits the same future. When a model gets extra copies, and when they
are retired, is decided in scaling.py; the manager places and loads them (add_copy) and runs the periodic
maintenance (recency flush, rate review, idle-copy retirement).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from mesh.config import Settings
from mesh.errors import MeshError, ModelLoadFailed, ModelNotFound, NoCapacity, Unavailable
from mesh.kv.base import KV
from mesh.placement import policy
from mesh.placement.instances import InstancePublisher, RuntimeClients, probe_runtime
from mesh.placement.recency import Recency
from mesh.placement.records import (
    CopyRecord,
    CopyState,
    InstanceRecord,
    Keys,
    Kind,
    LoadFailure,
    ModelRecord,
    PlacementRecord,
    now_ms,
)
from mesh.placement.scaling import CopyScaler
from mesh.placement.store import UNCHANGED, RecordStore
from mesh.placement.view import LocalView
from mesh.runtime import RuntimeClient
from mesh.tls import ClientTLS

if TYPE_CHECKING:
    from mesh.metrics import RouterMetrics

log = logging.getLogger(__name__)


LOAD_HEARTBEAT_S = 2.0
"""A router loading a model rewrites its LOADING copy's time this often: a claim that is not renewed is a load whose
router died (killed mid-load), which other routers then stop waiting for."""
LOADING_STALE_S = 3 * LOAD_HEARTBEAT_S + 2.0
"""A LOADING copy not renewed for this long is stale (three missed heartbeats, and a margin for clock skew)."""
BUSY_WAIT_S = 3.0
"""How long a load waits for an instance whose evictable copies are all busy (loading, serving) to free one."""
BUSY_RETRY_S = 0.05
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


@dataclass(slots=True)
class CopyLease:
    """A request's hold on one copy: while held, the copy is not evicted."""

    manager: PlacementManager
    model_id: str
    instance_id: str
    client: RuntimeClient

    def __enter__(self) -> CopyLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.manager._release(self.model_id, self.instance_id)


class PlacementManager:
    def __init__(self, kv: KV, settings: Settings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # Requests in acquire() waiting for a load (the request queue ModelMesh reports).
        self.waiting_for_load = 0
        self.keys = Keys(settings.kv_prefix)
        self.view = LocalView(kv, self.keys)
        self.store = RecordStore(kv, self.view)
        self.clients = RuntimeClients(self.view, settings.max_message_bytes, settings.runtime_tls())
        self.publisher = InstancePublisher(kv, self.keys, settings.instance_lease_seconds)
        self._loads: dict[str, asyncio.Task[str]] = {}
        self._decide = asyncio.Lock()
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._evicting: set[tuple[str, str]] = set()
        self._loads_on: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._recency = Recency(self.view, self.store)
        if settings.eviction_policy not in policy.EVICTION_POLICIES:
            raise ValueError(
                f"eviction_policy {settings.eviction_policy!r} is not one of {', '.join(policy.EVICTION_POLICIES)}"
            )
        self._eviction = settings.eviction_policy
        # For gdsf: requests counted per model by this router, the GDSF clock at each model's last request, and
        # the clock itself (raised by every eviction). Not shared: other routers' models count as unused here.
        self._uses: Counter[str] = Counter()
        self._clock_at_use: dict[str, float] = {}
        self._gdsf_clock = 0.0
        self._flush_task: asyncio.Task[None] | None = None
        # Instance id → monotonic time until which it is left alone after failing to answer.
        self._unreachable: dict[str, float] = {}
        # Instance id → (incarnation, bytes): what it held when it ran out of memory, below the capacity it reports.
        self._capacity_caps: dict[str, tuple[int, int]] = {}
        self._placement_waiters: dict[str, asyncio.Event] = {}
        self._janitor_tasks: set[asyncio.Task[None]] = set()
        self._scaler = CopyScaler(self)
        self.view.on_change.append(self._on_view_change)

    async def start(self) -> None:
        await self.view.start()
        self._flush_task = asyncio.create_task(self._flush_periodically(), name="last-used-flush")

    async def stop(self) -> None:
        if self._flush_task:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        for task in [*self._loads.values(), *self._janitor_tasks]:
            task.cancel()
        await self._scaler.stop()
        await asyncio.gather(*self._janitor_tasks, return_exceptions=True)
        await asyncio.gather(*self._loads.values(), return_exceptions=True)
        await self.flush_last_used()
        await self.publisher.close()
        await self.clients.close()
        await self.view.stop()

    # ---- instances -------------------------------------------------------------------------------------

    async def add_instance(
        self, instance_id: str, endpoint: str, model_types: tuple[str, ...] = (), tls: bool | None = None
    ) -> None:
        """Probe a runtime this router started (or was told of) and publish its record under this router's lease.

        The probe purges the runtime, so the record is a new incarnation and any copies recorded on the
        instance before are dropped. tls: dial it over TLS; None: when runtime TLS is configured and the
        endpoint is not a unix socket.
        """
        if tls is None:
            tls = self.clients.tls is not None and not endpoint.startswith("unix:")
        runtime_tls = (self.clients.tls or ClientTLS()) if tls else None
        record = await probe_runtime(instance_id, endpoint, model_types, tls=runtime_tls)
        self.view.apply_put(await self.publisher.publish(record))
        self._unreachable.pop(instance_id, None)
        log.info("runtime instance %s ready at %s (capacity %d bytes)", instance_id, endpoint, record.capacity_bytes)
        await self._drop_stale_copies(instance_id)

    async def remove_instance(self, instance_id: str) -> None:
        """Withdraw the record of a runtime this router published (its process exited): nothing is routed there."""
        await self.publisher.withdraw(instance_id)

    def current(self, instance_id: str, copy: CopyRecord) -> bool:
        """The copy was made on the instance's present incarnation, which is known and reachable."""
        known = self.view.instances.get(instance_id)
        return known is not None and copy.incarnation == known.record.started_ms and self.reachable(instance_id)

    async def _drop_stale_copies(self, instance_id: str) -> None:
        """Remove copies recorded on an earlier incarnation of an instance (it restarted empty)."""
        known = self.view.instances.get(instance_id)
        if known is None:
            return
        incarnation = known.record.started_ms
        for model_id, placement in list(self.view.placements.items()):
            copy = placement.record.copies.get(instance_id)
            if copy is not None and copy.incarnation != incarnation:
                await self._drop_copy(model_id, instance_id, only_incarnation=copy.incarnation)

    # ---- the data path ---------------------------------------------------------------------------------

    def loaded_copy(self, model_id: str) -> CopyLease | None:
        """A loaded copy to send a request to (the least busy), or None. No I/O."""
        placement = self.view.placements.get(model_id)
        if placement is None:
            return None
        best: str | None = None
        for instance_id, copy in placement.record.copies.items():
            if copy.state is not CopyState.LOADED or (model_id, instance_id) in self._evicting:
                continue
            if not self.current(instance_id, copy):
                continue
            if best is None or self._in_flight[(model_id, instance_id)] < self._in_flight[(model_id, best)]:
                best = instance_id
        if best is None:
            return None
        in_flight = self._in_flight[(model_id, best)] = self._in_flight[(model_id, best)] + 1
        self._recency.used(model_id)
        if self._eviction == "gdsf":
            self._uses[model_id] += 1
            self._clock_at_use[model_id] = self._gdsf_clock
        self._scaler.requests[model_id] += 1
        if in_flight > self.settings.scale_up_in_flight:
            self._scaler.scale_up(model_id)  # even the least busy copy is saturated
        return CopyLease(self, model_id, best, self.clients.get(best))

    async def acquire(self, model_id: str) -> CopyLease:
        """A copy of the model, loading one first when none is loaded (one load however many callers)."""
        lease = self.loaded_copy(model_id)
        if lease is not None:
            return lease
        self.waiting_for_load += 1
        try:
            while lease is None:
                await self.ensure_loaded(model_id)
                lease = self.loaded_copy(model_id)
                if lease is None:
                    # Loaded, and gone again before this request got to it (evicted, its instance lost). Never
                    # retry without yielding: a loop that does not await starves every other task.
                    await asyncio.sleep(0.01)
        finally:
            self.waiting_for_load -= 1
        return lease

    def _release(self, model_id: str, instance_id: str) -> None:
        key = (model_id, instance_id)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    def loading(self, model_id: str) -> bool:
        return model_id in self._loads

    def in_flight(self, model_id: str, instance_id: str) -> int:
        """Requests this router has in flight to one copy."""
        return self._in_flight[(model_id, instance_id)]

    async def ensure_loaded(self, model_id: str) -> str:
        """The instance holding a loaded copy, starting the one load for this model if there is none."""
        holder = self._loaded_holder(model_id)
        if holder is not None:
            return holder
        task = self._loads.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load(model_id), name=f"load-{model_id}")
            self._loads[model_id] = task
            task.add_done_callback(lambda _t: self._loads.pop(model_id, None))
        # Shielded: a caller that gives up (deadline, disconnect) must not cancel the load the others await.
        return await asyncio.shield(task)

    async def copy_lost(self, model_id: str, instance_id: str, reason: str, unreachable: bool) -> None:
        """A copy the view lists is not there: the runtime said so, or did not answer at all."""
        log.warning(
            "copy of model %s on %s is gone (%s); dropping it",
            model_id,
            instance_id,
            reason,
            extra={"event": "copy_lost", "model": model_id, "instance": instance_id, "error": reason},
        )
        if unreachable:
            self.mark_unreachable(instance_id, reason)
        await self._drop_copy(model_id, instance_id)

    # ---- loading ---------------------------------------------------------------------------------------

    async def _load(self, model_id: str) -> str:
        """Place and load one copy, unless another router claimed the load first; then wait for its result.

        The claim is the compare-and-swap that records the LOADING copy: it succeeds only while the model has no
        live copy, so however many routers miss at once, one of them loads. An unreachable instance is set
        aside and the next best one tried.
        """
        model = self._model(model_id)
        size = await self._size_estimate(model)
        attempts = 0
        busy_until = time.monotonic() + BUSY_WAIT_S
        while True:
            choice: policy.Placement | None = None
            claimed = False
            async with self._decide:
                holder = self._loaded_holder(model_id)
                if holder is not None:
                    return holder
                loading_on = self._loading_on(model_id)
                if loading_on is None:
                    try:
                        choice = self._choose(model, size)
                    except Unavailable:
                        # Everything it could evict is loading or serving right now: that changes within
                        # milliseconds under churn, so look again for a while before saying "retry".
                        if time.monotonic() > busy_until:
                            raise
                if choice is not None:
                    incarnation = self.view.instances[choice.instance_id].record.started_ms
                    claimed = await self._claim(model_id, choice.instance_id, size, incarnation)
                    if claimed:
                        for victim in choice.victims:
                            self._evicting.add((victim.model_id, choice.instance_id))
                        self._loads_on[choice.instance_id] += 1
                    else:
                        loading_on = self._loading_on(model_id)
            if loading_on is not None:
                # Another router's load (or one that beat our claim): its outcome comes through the view.
                await self._await_placement_change(model_id, min(self._load_timeout(loading_on), LOADING_STALE_S))
                continue
            if choice is None:
                await asyncio.sleep(BUSY_RETRY_S)
                continue
            if not claimed:
                continue  # the record changed under the claim: look again
            try:
                return await self._load_at(model, choice, incarnation)
            except _InstanceUnreachable:
                continue  # _choose no longer offers that instance; it raises when nothing is left
            except _TryElsewhere as exc:
                attempts += 1
                if attempts >= MAX_LOAD_ATTEMPTS:
                    raise ModelLoadFailed(f"{exc.message} ({attempts} attempts)") from exc

    def _loading_on(self, model_id: str) -> str | None:
        """The instance where a load of the model is under way, when no copy is loaded (waiting for that load
        beats starting another: the claim would fail, and choosing could find no instance left)."""
        placement = self.view.placements.get(model_id)
        if placement is None or self._loaded_holder(model_id) is not None:
            return None
        live = self._live_copies(placement.record)
        return live[0] if live else None

    def _loaded_holder(self, model_id: str) -> str | None:
        placement = self.view.placements.get(model_id)
        if placement is None:
            return None
        for instance_id, copy in placement.record.copies.items():
            # A copy this router is evicting is no holder: a request for it waits for the eviction, then loads.
            if (
                copy.state is CopyState.LOADED
                and self.current(instance_id, copy)
                and not self._being_evicted(model_id, instance_id)
            ):
                return instance_id
        return None

    def _being_evicted(self, model_id: str, instance_id: str) -> bool:
        return (model_id, instance_id) in self._evicting

    def _live_copies(self, record: PlacementRecord) -> list[str]:
        """Copies that count: on a known, reachable instance, and loaded or loading within the load timeout."""
        now = now_ms()
        live = []
        for instance_id, copy in record.copies.items():
            if not self.current(instance_id, copy):
                continue
            stale_after_s = min(self._load_timeout(instance_id), LOADING_STALE_S)
            if copy.state is CopyState.LOADING and now - copy.since_ms > stale_after_s * 1000:
                continue  # its loader died (no heartbeat) or gave up without clearing it
            live.append(instance_id)
        return live

    async def _claim(
        self, model_id: str, instance_id: str, size: int, incarnation: int, expected_live: int = 0
    ) -> bool:
        """Record a LOADING copy on instance_id if, and only if, the model has exactly expected_live live copies
        (0 for a first load; the current count for an extra copy) and none of them is on that instance."""
        claimed = False
        stale: list[str] = []

        def change(current: PlacementRecord | None) -> object:
            nonlocal claimed, stale
            record = current or PlacementRecord()
            live = set(self._live_copies(record))
            claimed = len(live) == expected_live and instance_id not in live
            if not claimed:
                return UNCHANGED
            stale = [i for i, c in record.copies.items() if c.state is CopyState.LOADING and i not in live]
            for gone in stale:
                record = record.without_copy(gone)
            return record.with_copy(instance_id, CopyRecord(CopyState.LOADING, now_ms(), size, incarnation))

        await self.store.update(Kind.PLACEMENT, model_id, change)
        if claimed:
            for gone in stale:
                if gone != instance_id and gone in self.view.instances:
                    # A dead router's load may still finish there, as a copy nobody records: undo it.
                    self._abandon_load(model_id, gone)
        return claimed

    async def _await_placement_change(self, model_id: str, timeout: float) -> None:
        """Wait until the model's placement record changes (another router's load finished or failed)."""
        event = self._placement_waiters.setdefault(model_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass  # a claim that old is stale: the next _claim ignores it
        finally:
            self._placement_waiters.pop(model_id, None)

    def _on_view_change(self, kind: Kind, record_id: str) -> None:
        if kind is Kind.PLACEMENT:
            event = self._placement_waiters.get(record_id)
            if event is not None:
                event.set()
        elif kind is Kind.INSTANCE and record_id in self.view.instances:
            # A runtime that published itself again restarted empty; clean up what it held before.
            task = asyncio.get_running_loop().create_task(self._drop_stale_copies(record_id))
            self._janitor_tasks.add(task)
            task.add_done_callback(self._janitor_tasks.discard)

    def _load_timeout(self, instance_id: str) -> float:
        known = self.view.instances.get(instance_id)
        if known is not None and known.record.load_timeout_ms:
            return known.record.load_timeout_ms / 1000
        return self.settings.load_timeout_seconds

    async def _load_at(self, model: ModelRecord, choice: policy.Placement, incarnation: int) -> str:
        model_id, instance_id = model.model_id, choice.instance_id
        started = time.perf_counter()
        done = False
        heartbeat = asyncio.create_task(self._renew_claim(model_id, instance_id, incarnation), name=f"claim-{model_id}")
        try:
            await self._evict(instance_id, choice.victims, for_model=model_id)
            size = await self._load_on(instance_id, model)
            done = True
        except grpc.aio.AioRpcError as exc:
            message = f"{exc.code().name}: {exc.details()}"
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                self.mark_unreachable(instance_id, message)
                raise _InstanceUnreachable(instance_id) from exc
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and self._cap_capacity(instance_id, message):
                # Not the model's fault: with the instance's capacity capped at what it holds, the next choice
                # makes room there (or goes elsewhere).
                raise _TryElsewhere(f"model '{model_id}' did not fit on instance '{instance_id}': {message}") from exc
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                self._abandon_load(model_id, instance_id)
            failure = LoadFailure(message, now_ms())
            await self.store.update(
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
                raise _TryElsewhere(failed) from exc  # the failure recorded keeps this instance out of the retry
            raise ModelLoadFailed(failed) from exc
        finally:
            heartbeat.cancel()
            self._loads_on[instance_id] -= 1
            if not done:
                await self._drop_copy(model_id, instance_id, only_if=CopyState.LOADING)
        # Loaded for a request that is about to use it: it enters the cluster-wide LRU as the most recently used
        # (ModelMesh's cache does the same), in the same write that records it, so that no router's next load
        # takes a copy nobody has used yet for the least recently used one and evicts it before its request.
        loaded_ms = now_ms()
        self._recency.used(model_id)
        await self.store.update(
            Kind.PLACEMENT,
            model_id,
            lambda p: (
                (p or PlacementRecord())
                .with_copy(instance_id, CopyRecord(CopyState.LOADED, loaded_ms, size, incarnation))
                .used_at(loaded_ms)
            ),
        )
        ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "loaded model %s on %s in %d ms (%d bytes)",
            model_id,
            instance_id,
            ms,
            size,
            extra={"event": "loaded", "model": model_id, "instance": instance_id, "ms": ms, "bytes": size},
        )
        await self._trim(instance_id, keep=model_id)
        return instance_id

    async def _renew_claim(self, model_id: str, instance_id: str, incarnation: int) -> None:
        """While this router loads, renew its LOADING copy's time, so that others see the load is alive."""

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

        while True:
            await asyncio.sleep(LOAD_HEARTBEAT_S)
            try:
                await self.store.update(Kind.PLACEMENT, model_id, renew)
            except MeshError as exc:  # a store outage: the next beat tries again; others stop waiting meanwhile
                log.warning("renewing the load claim of %s failed: %s", model_id, exc.message)

    def _abandon_load(self, model_id: str, instance_id: str) -> None:
        """A load that timed out may still finish on a runtime that is only slow: unload it (SPI contract), in the
        background, since a runtime that hangs may not answer that either."""

        async def unload() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, MeshError):
                await self.clients.get(instance_id).unload(model_id, timeout=self._load_timeout(instance_id))

        task = asyncio.get_running_loop().create_task(unload(), name=f"abandon-{model_id}")
        self._janitor_tasks.add(task)
        task.add_done_callback(self._janitor_tasks.discard)

    def _cap_capacity(self, instance_id: str, reason: str) -> bool:
        """The runtime ran out of memory below the capacity it reports: trust what it held then (the sizes its
        ModelSize answers gave) as its capacity, until it restarts. False when it held nothing: then the model
        alone is too big for it, which is the model's failure there, not the instance's."""
        known = self.view.instances.get(instance_id)
        if known is None:
            return False
        incarnation = known.record.started_ms
        held = sum(
            copy.size_bytes
            for placement in self.view.placements.values()
            if (copy := placement.record.copies.get(instance_id)) is not None
            and copy.state is CopyState.LOADED
            and copy.incarnation == incarnation
        )
        if held == 0:
            return False
        self._capacity_caps[instance_id] = (incarnation, held)
        log.warning(
            "runtime instance %s ran out of memory holding %d of the %d bytes it reports (%s); placing as if it had %d",
            instance_id,
            held,
            known.record.capacity_bytes,
            reason,
            held,
            extra={"event": "capacity_capped", "instance": instance_id, "bytes": held},
        )
        return True

    def _capacity(self, record: InstanceRecord) -> InstanceRecord:
        """The record as placement should weigh it: capped where the runtime ran out of memory below it."""
        cap = self._capacity_caps.get(record.instance_id)
        if cap is None or cap[0] != record.started_ms or cap[1] >= record.capacity_bytes:
            return record
        return dataclasses.replace(record, capacity_bytes=cap[1])

    def mark_unreachable(self, instance_id: str, reason: str) -> None:
        """Keep new loads and requests off an instance that did not answer, for a while."""
        if instance_id not in self._unreachable:
            log.warning(
                "runtime instance %s is unreachable (%s); routing around it",
                instance_id,
                reason,
                extra={"event": "instance_unreachable", "instance": instance_id, "error": reason},
            )
        self._unreachable[instance_id] = time.monotonic() + self.settings.unreachable_retry_seconds

    def reachable(self, instance_id: str) -> bool:
        until = self._unreachable.get(instance_id)
        if until is None:
            return True
        if time.monotonic() >= until:
            del self._unreachable[instance_id]  # worth one more try
            return True
        return False

    def answering(self, instance_id: str) -> bool:
        """reachable(), and its channel is not failing to connect now. Off the data path: a look at a channel
        starts it connecting when idle, so a runtime that died unnoticed shows here by the next look."""
        return self.reachable(instance_id) and not self.clients.get(instance_id).cannot_connect()

    async def _record_copy(self, model_id: str, instance_id: str, copy: CopyRecord) -> None:
        await self.store.update(
            Kind.PLACEMENT, model_id, lambda p: (p or PlacementRecord()).with_copy(instance_id, copy)
        )

    async def _load_on(self, instance_id: str, model: ModelRecord) -> int:
        record = self.view.instances[instance_id].record
        slots = self._slots.setdefault(instance_id, asyncio.Semaphore(record.loading_slots))
        async with slots:
            started = time.perf_counter()
            try:
                size = await self.clients.get(instance_id).load(model, self._load_timeout(instance_id))
            except grpc.aio.AioRpcError:
                self.metrics.load_failed()
                raise
            self.metrics.loaded(started, size)
            return size

    def _model(self, model_id: str) -> ModelRecord:
        known = self.view.models.get(model_id)
        if known is None:
            raise ModelNotFound(model_id)
        return known.record

    def _choose(self, model: ModelRecord, size: int) -> policy.Placement:
        placement = self.view.placements.get(model.model_id)
        record = placement.record if placement else PlacementRecord()
        failed = self._recent_failures(record)
        excluded = frozenset(self._live_copies(record)) | frozenset(failed)
        choice = policy.choose_instance(model.model_type, size, self._instance_views(), excluded, self._eviction)
        if choice is not None:
            return choice
        if failed:
            instance_id, failure = max(failed.items(), key=lambda f: f[1].time_ms)
            retry_in = self.settings.load_failure_backoff_seconds - (now_ms() - failure.time_ms) / 1000
            raise ModelLoadFailed(
                f"model '{model.model_id}' failed to load on instance '{instance_id}': {failure.message}"
                f" (not retried for another {max(retry_in, 0):.0f}s)"
            )
        unreachable = sorted(
            i for i, v in self.view.instances.items() if v.record.supports(model.model_type) and not self.reachable(i)
        )
        if unreachable:
            raise Unavailable(
                f"cannot place model '{model.model_id}': runtime instance(s) {', '.join(unreachable)}"
                " did not answer; retry shortly"
            )
        reason, retryable = policy.why_unplaceable(
            model.model_type, size, [v.record for v in self.view.instances.values()]
        )
        error = Unavailable if retryable else NoCapacity
        raise error(f"cannot place model '{model.model_id}': {reason}")

    def _recent_failures(self, record: PlacementRecord) -> dict[str, LoadFailure]:
        horizon = now_ms() - self.settings.load_failure_backoff_seconds * 1000
        return {i: f for i, f in record.failures.items() if f.time_ms > horizon and i in self.view.instances}

    def _instance_views(self) -> list[policy.InstanceView]:
        return [v for v in self.instance_views() if self.reachable(v.record.instance_id)]

    def instance_views(self) -> list[policy.InstanceView]:
        """Every known instance with the copies on its present incarnation, as placement weighs them."""
        resident: defaultdict[str, list[policy.ResidentCopy]] = defaultdict(list)
        instances = self.view.instances
        for model_id, placement in self.view.placements.items():
            record = placement.record
            last_used = self._recency.last_used_ms(model_id)
            for instance_id, copy in record.copies.items():
                known = instances.get(instance_id)
                if known is None or copy.incarnation != known.record.started_ms:
                    continue  # not on this instance any more: it restarted empty, or is gone
                key = (model_id, instance_id)
                evictable = copy.state is CopyState.LOADED and key not in self._evicting and not self._in_flight[key]
                resident[instance_id].append(
                    policy.ResidentCopy(
                        model_id,
                        copy.size_bytes,
                        last_used,
                        evictable,
                        self._uses.get(model_id, 0),
                        self._clock_at_use.get(model_id, 0.0),
                    )
                )
        return [
            policy.InstanceView(self._capacity(known.record), resident[instance_id], self._loads_on[instance_id])
            for instance_id, known in instances.items()
        ]

    async def _size_estimate(self, model: ModelRecord) -> int:
        placement = self.view.placements.get(model.model_id)
        if placement and placement.record.size_bytes:
            return placement.record.size_bytes
        candidates = [v.record for v in self.view.instances.values() if v.record.supports(model.model_type)]
        if not candidates:
            return 0
        try:
            predicted = await self.clients.get(candidates[0].instance_id).predict_size(
                model, self.settings.predict_size_timeout_seconds
            )
        except grpc.aio.AioRpcError:
            predicted = 0
        return predicted or candidates[0].default_model_size

    # ---- eviction and unloading ------------------------------------------------------------------------

    async def _evict(self, instance_id: str, victims: tuple[policy.ResidentCopy, ...], for_model: str) -> None:
        if self._eviction == "gdsf":
            self._gdsf_clock = policy.gdsf_clock(self._gdsf_clock, victims)
        for victim in victims:
            self.metrics.evicted(victim.last_used_ms)
            age_s = (now_ms() - victim.last_used_ms) / 1000 if victim.last_used_ms else float("inf")
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
                await self.unload_copy(victim.model_id, instance_id)
            finally:
                self._evicting.discard((victim.model_id, instance_id))

    async def _trim(self, instance_id: str, keep: str) -> None:
        """Evict LRU copies when measured sizes overflow an instance (predictions can be low)."""
        for inst in self._instance_views():
            if inst.record.instance_id != instance_id:
                continue
            victims = tuple(v for v in policy.over_capacity(inst, self._eviction) if v.model_id != keep)
            for victim in victims:
                self._evicting.add((victim.model_id, instance_id))
            await self._evict(instance_id, victims, for_model=keep)

    async def unload_copy(self, model_id: str, instance_id: str) -> None:
        """Stop routing to a copy, then unload it from its runtime."""
        await self._drop_copy(model_id, instance_id)
        started = time.perf_counter()
        try:
            await self.clients.get(instance_id).unload(model_id)
        except (grpc.aio.AioRpcError, Unavailable) as exc:
            self.metrics.unload_failed()
            log.warning(
                "unload of model %s from %s failed: %s",
                model_id,
                instance_id,
                exc,
                extra={"event": "unload_failed", "model": model_id, "instance": instance_id, "error": str(exc)},
            )
            return
        self.metrics.unloaded(started)
        ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "unloaded model %s from %s in %d ms",
            model_id,
            instance_id,
            ms,
            extra={"event": "unloaded", "model": model_id, "instance": instance_id, "ms": ms},
        )

    async def _drop_copy(
        self, model_id: str, instance_id: str, only_if: CopyState | None = None, only_incarnation: int | None = None
    ) -> None:
        def change(p: PlacementRecord | None) -> object:
            copy = p.copies.get(instance_id) if p else None
            if copy is None or (only_if is not None and copy.state is not only_if):
                return UNCHANGED
            if only_incarnation is not None and copy.incarnation != only_incarnation:
                return UNCHANGED
            return p.without_copy(instance_id)  # type: ignore[union-attr]

        await self.store.update(Kind.PLACEMENT, model_id, change)

    # ---- recency and maintenance -------------------------------------------------------------------------

    async def flush_last_used(self) -> None:
        """Write the in-memory recency to the store, one CAS per model used since the last flush."""
        await self._recency.flush()

    def last_used_ms(self, model_id: str) -> int:
        return self._recency.last_used_ms(model_id)

    async def retire_idle_copies(self) -> None:
        """Unload all but the oldest copy of every model idle for idle_copy_seconds (cluster-wide last use)."""
        await self._scaler.retire_idle_copies()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.last_used_flush_seconds)
            try:
                await self.flush_last_used()
                self._scaler.review_rates()
                await self.retire_idle_copies()
            except MeshError as exc:  # the store is down, say: the next round tries again
                log.warning("periodic placement maintenance deferred: %s", exc.message)
            except Exception:  # a failed round is retried next period; it must not stop
                log.exception("periodic placement maintenance failed")

    # ---- extra copies (when: scaling.py) -------------------------------------------------------------------

    async def add_copy(self, model_id: str) -> None:
        """Load one more copy on another instance, into free space only: an extra copy never evicts a model.

        Called by the scaler; a copy that cannot be added is logged, not raised."""
        try:
            model = self._model(model_id)
            async with self._decide:
                placement = self.view.placements.get(model_id)
                record = placement.record if placement else PlacementRecord()
                live = self._live_copies(record)
                if not live or any(record.copies[i].state is CopyState.LOADING for i in live):
                    return
                size = record.size_bytes
                excluded = frozenset(live) | frozenset(self._recent_failures(record))
                choice = policy.choose_instance(
                    model.model_type, size, self._instance_views(), excluded, self._eviction
                )
                if choice is None or choice.victims:
                    return
                incarnation = self.view.instances[choice.instance_id].record.started_ms
                if not await self._claim(model_id, choice.instance_id, size, incarnation, expected_live=len(live)):
                    return
                self._loads_on[choice.instance_id] += 1
            log.info("adding copy %d of model %s on %s to follow load", len(live) + 1, model_id, choice.instance_id)
            await self._load_at(model, choice, incarnation)
        except (MeshError, _InstanceUnreachable) as exc:
            log.warning("extra copy of model %s not added: %s", model_id, exc)
