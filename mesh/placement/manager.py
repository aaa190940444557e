"""The placement façade: where copies of models are, and a copy for each request, loaded on a miss.

PlacementManager owns one router's placement parts and wires them; callers (the data plane, the model registry,
the management API, readiness) use only the methods here. The parts, each in its own module:

    view.py / store.py   the shared records (models, placements, instances) and their compare-and-swap writes
    copies.py            the copy table: which copies can take a request, leases, what this router has in flight
    instance_health.py   instances set aside after not answering; capacity caps after running out of memory
    usage.py             last use (cluster-wide, flushed in batches) and GDSF counts
    demand.py            what each router has requests in flight or waiting for: no router evicts those copies
    loader.py            the miss: single flight, choosing (policy.py), the claim (claims.py), load failures
    evictor.py           evictions, trims, unloads
    scaling.py           copies follow load: when a model gets another copy, and when extra copies go
    instances.py         probing, publishing and dialling runtime instances

A hit (loaded_copy) costs the copy table's dict lookups and the usage counters; a miss (await_copy) awaits the
loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mesh.config import Settings
from mesh.errors import ModelNotFound
from mesh.kv.base import KV
from mesh.metrics import RouterMetrics
from mesh.periodic import every
from mesh.placement import policy
from mesh.placement.claims import LoadClaims
from mesh.placement.copies import CopyLease, CopyTable
from mesh.placement.decisions import DecisionLog
from mesh.placement.demand import DemandBoard
from mesh.placement.evictor import Drain, Evictor
from mesh.placement.explaining import explanation
from mesh.placement.instance_health import InstanceHealth
from mesh.placement.instances import LeasePublisher, RuntimeClients, probe_runtime
from mesh.placement.loader import Loader
from mesh.placement.records import CopyRecord, InstanceRecord, Keys, Kind, PlacementRecord
from mesh.placement.scaling import CopyScaler
from mesh.placement.sizing import size_to_place
from mesh.placement.store import RecordStore
from mesh.placement.thrash import ThrashGuard, thrash_settings
from mesh.placement.usage import Usage
from mesh.placement.view import LocalView
from mesh.tls import ClientTLS

log = logging.getLogger(__name__)


async def _nothing_to_publish() -> None:
    """mesh's own doors read the records on every request: nothing to bring up to date."""


class PlacementManager:
    """One router's placement. Owns the parts (and so the per-router state: copies in flight and being evicted,
    loads under way, instances set aside, usage not yet flushed) and the periodic maintenance; answers the data
    plane (a lease on a loaded copy, or a wait for one), the registry (load now, unload, a copy's validity) and the
    management API (instances and their copies). Shared state is in the store, reached through `view` and `store`.
    """

    def __init__(
        self, kv: KV, settings: Settings, metrics: RouterMetrics, clients: RuntimeClients | None = None
    ) -> None:
        """clients: how runtime instances are dialled (default: gRPC channels to the endpoints their records name;
        the unit tests pass fakes)."""
        if settings.eviction_policy not in policy.EVICTION_POLICIES:
            raise ValueError(
                f"eviction_policy {settings.eviction_policy!r} is not one of {', '.join(policy.EVICTION_POLICIES)}"
            )
        self.settings = settings
        self._metrics = metrics
        # Requests in await_copy() waiting for a load (the request queue ModelMesh reports).
        self.waiting_for_load = 0
        # Models a native engine has requests in flight for (in_flight_elsewhere).
        self._in_flight_elsewhere: set[str] = set()
        self._publish_routes: Callable[[], Awaitable[None]] = _nothing_to_publish
        self.keys = Keys(settings.kv_prefix)
        self.view = LocalView(kv, self.keys)
        self.store = RecordStore(kv, self.view)
        self.clients = clients or RuntimeClients(self.view, settings.max_message_bytes, settings.runtime_tls())
        self.publisher = LeasePublisher(kv, self.keys, settings.instance_lease_seconds)
        self.health = InstanceHealth(
            self.view, self.clients, settings.unreachable_retry_seconds, settings.load_timeout_seconds
        )
        self.usage = Usage(self.view, self.store, settings.eviction_policy)
        self.demand = DemandBoard(
            self.view,
            self.publisher,
            lambda: self.copies.models_in_flight() | set(self._loader.loading_models()) | self._in_flight_elsewhere,
            settings.demand_publish_seconds,
        )
        self.copies = CopyTable(self.view, self.health, self.clients, self.usage, self.demand.others)
        self.thrash_guard = ThrashGuard(thrash_settings(settings), count_held_back=metrics.held_back)
        self.decisions = DecisionLog(kv, settings.kv_prefix, self.demand.router_id)
        metrics.watch_thrash_guard(lambda: self.thrash_guard.on)
        self._evictor = Evictor(
            self.view,
            self.store,
            self.copies,
            self.usage,
            self.clients,
            metrics,
            settings.eviction_policy,
            self.thrash_guard,
            self.decisions,
        )
        self._claims = LoadClaims(self.view, self.store, self.copies, self.clients, self.health)
        self._loader = Loader(
            settings,
            self.view,
            self.store,
            self.clients,
            self.copies,
            self.health,
            self._claims,
            self._evictor,
            self.usage,
            metrics,
            self.thrash_guard,
            self.decisions,
        )
        self._scaler = CopyScaler(
            settings,
            self.copies,
            self.usage.take_request_counts,
            self._cluster_rates,
            self.demand.leads,
            self.usage.last_used_ms,
            self._min_copies,
            self._loader.loading,
            self._loader.add_copy,
            lambda model_id, instance_id: self._evictor.unload_copy(model_id, instance_id, "an extra copy not needed"),
        )
        self._maintenance: asyncio.Task[None] | None = None
        self._janitor_tasks: set[asyncio.Task[None]] = set()
        self.view.on_change.append(self._on_view_change)

    async def start(self) -> None:
        await self.view.start()
        self.demand.start()
        maintaining = every(self.settings.last_used_flush_seconds, self.maintain, "placement maintenance", log)
        self._maintenance = asyncio.create_task(maintaining, name="placement-maintenance")

    async def stop(self) -> None:
        if self._maintenance:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for task in self._janitor_tasks:
            task.cancel()
        await self._scaler.stop()
        await asyncio.gather(*self._janitor_tasks, return_exceptions=True)
        await self._claims.stop()
        await self._loader.stop()
        await self.demand.stop()
        await self.usage.flush()
        await self.decisions.flush()
        await self.publisher.close()
        await self.clients.close()
        await self.view.stop()

    # ---- the data path -----------------------------------------------------------------------------------

    def loaded_copy(self, model_id: str) -> CopyLease | None:
        """A hold on the model's least busy loaded copy, or None (a miss). No I/O."""
        lease = self.copies.lease(model_id)
        if lease is not None:
            self.usage.used(model_id)
            if lease.in_flight > self.settings.scale_up_in_flight:
                self._scaler.scale_up(model_id)  # even the least busy copy is saturated
        return lease

    def in_flight_elsewhere(self, in_flight: Mapping[str, int]) -> None:
        """A native engine's requests in flight now, per model: they count in this router's demand (no router
        evicts those copies), and past scale_up_in_flight per copy a model gets another copy, as when a lease
        finds even the least busy copy saturated."""
        self._in_flight_elsewhere = {model_id for model_id, n in in_flight.items() if n > 0}
        for model_id in self._in_flight_elsewhere:
            copies = len(self.copies.loaded_copies(model_id))
            if copies and in_flight[model_id] > self.settings.scale_up_in_flight * copies:
                self._scaler.scale_up(model_id)

    async def await_copy(self, model_id: str) -> CopyLease:
        """A miss (loaded_copy said None): wait for a copy, loading one when no load is under way (one load however
        many requests wait)."""
        self._metrics.cache_missed(model_id)
        started = time.perf_counter()
        self.waiting_for_load += 1
        try:
            while True:
                await self._loader.ensure_loaded(model_id)
                lease = self.loaded_copy(model_id)
                if lease is not None:
                    return lease
                # Loaded, and gone again before this request got to it (evicted, its instance lost). Never retry
                # without yielding: a loop that does not await starves every other task.
                await asyncio.sleep(0.01)
        finally:
            self.waiting_for_load -= 1
            self._metrics.cache_miss_waited(model_id, started)

    async def ensure_loaded(self, model_id: str) -> str:
        """The instance holding a loaded copy, starting the one load for this model if there is none."""
        return await self._loader.ensure_loaded(model_id)

    async def add_copy(self, model_id: str, may_evict: bool = False) -> None:
        """Load one more copy of a model on another instance: into free space only (never evicting), unless
        may_evict (a copy the model must have: its minimum, a vmodel target's); its first copy too then."""
        await self._loader.add_copy(model_id, may_evict)

    async def explain(self, model_id: str) -> dict[str, Any]:
        """Where the model is and why, its recent history, and what its next load would do now (explaining.py);
        raises ModelNotFound for a model that is not registered."""
        known = self.view.models.get(model_id)
        if known is None:
            raise ModelNotFound(model_id)
        model = known.record
        placement = self.view.placements.get(model_id)
        size = await size_to_place(self.view, self.clients, model, self.settings.predict_size_timeout_seconds)
        verdicts, left_out = self._loader.dry_run(model, size)
        guard = self.thrash_guard
        settings = {
            "eviction_policy": self.settings.eviction_policy,
            "thrash_guard": f"{guard.settings.mode} ({'on' if guard.on else 'not on'})" if guard.enabled else "off",
        }
        return explanation(
            model,
            placement.record if placement else PlacementRecord(),
            size,
            self.usage.last_used_ms(model_id),
            verdicts,
            left_out,
            await self.decisions.history(model_id),
            settings,
        )

    def loading(self, model_id: str) -> bool:
        """This router is loading the model's first copy now."""
        return self._loader.loading(model_id)

    async def copy_lost(self, model_id: str, instance_id: str, reason: str, unreachable: bool) -> None:
        """A copy the view lists is not there: the runtime said so, or did not answer at all."""
        log.warning(
            "copy of model %s on %s is gone (%s); dropping it",
            model_id,
            instance_id,
            reason,
            extra={"event": "copy_lost", "model": model_id, "instance": instance_id, "error": reason},
        )
        self.decisions.record(model_id, "copy_lost", instance=instance_id, error=reason)
        if unreachable:
            self.health.mark_unreachable(instance_id, reason)
        await self._evictor.drop_copy(model_id, instance_id)

    async def unload_copy(self, model_id: str, instance_id: str) -> None:
        """Stop routing to a copy, then unload it from its runtime."""
        await self._evictor.unload_copy(model_id, instance_id)

    def publish_routes_with(self, publish: Callable[[], Awaitable[None]]) -> None:
        """How a native data plane brings its routes up to the records (routes_published awaits it)."""
        self._publish_routes = publish

    async def routes_published(self) -> None:
        """Return once the data plane routes by the records as they are now: a registry change (a vmodel deleted
        or retargeted, a model unregistered) is answered only then, so no request after the answer meets the old
        route. mesh's own doors read the records directly; a native engine's routes follow them in a task."""
        await self._publish_routes()

    def drain_before_unload(self, drain: Drain) -> None:
        """Before a copy is unloaded, await drain(model_id, instance_id): a native data plane withdraws the copy's
        route there and waits for its requests in flight."""
        self._evictor.drain = drain

    def counts(self, instance_id: str, copy: CopyRecord) -> bool:
        """The copy was made on the instance's present incarnation, which is known and reachable."""
        return self.copies.counts(instance_id, copy)

    def instance_views(self) -> list[policy.InstanceView]:
        """Every known instance, reachable or not, with its copies as placement weighs them."""
        return self.copies.instance_views(reachable_only=False)

    # ---- instances ---------------------------------------------------------------------------------------

    async def add_instance(
        self,
        instance_id: str,
        endpoint: str,
        model_types: tuple[str, ...] = (),
        tls: bool | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        """Probe a runtime this router started (or was told of) and publish its record under this router's lease.

        The probe purges the runtime, so the record is a new incarnation and any copies recorded on the
        instance before are dropped. tls: dial it over TLS; None: when runtime TLS is configured and the
        endpoint is not a unix socket. labels: carried besides those it reports (a runtime that serves the SPI
        itself reports none; its router labels it).
        """
        if tls is None:
            tls = self.clients.tls is not None and not endpoint.startswith("unix:")
        runtime_tls = (self.clients.tls or ClientTLS()) if tls else None
        record = await probe_runtime(instance_id, endpoint, model_types, tls=runtime_tls)
        if labels:
            record = dataclasses.replace(record, labels=tuple(sorted({*record.labels, *labels})))
        await self.publish_instance(record)

    async def publish_instance(self, record: InstanceRecord) -> None:
        """Publish the record of an instance that answered (a new incarnation) and route to it at once."""
        self.view.apply_put(await self.publisher.publish(record))
        self.health.mark_reachable(record.instance_id)
        log.info(
            "runtime instance %s ready at %s (capacity %d bytes)",
            record.instance_id,
            record.endpoint,
            record.capacity_bytes,
        )
        await self._evictor.drop_stale_copies(record.instance_id)

    async def remove_instance(self, instance_id: str) -> None:
        """Withdraw the record of a runtime this router published (its process exited): nothing is routed there."""
        await self.publisher.withdraw(instance_id)

    def _on_view_change(self, kind: Kind, record_id: str) -> None:
        if kind is Kind.PLACEMENT:
            self._loader.placement_changed(record_id)
        elif kind is Kind.INSTANCE and self.copies.draining(record_id):
            self._scaler.hand_off(record_id)
        elif kind is Kind.INSTANCE and record_id in self.view.instances:
            # A runtime that published itself again restarted empty; clean up what it held before.
            task = asyncio.get_running_loop().create_task(self._evictor.drop_stale_copies(record_id))
            self._janitor_tasks.add(task)
            task.add_done_callback(self._janitor_tasks.discard)

    # ---- maintenance -------------------------------------------------------------------------------------

    async def maintain(self) -> None:
        """One round: write recency to the store, review request rates, keep minimum copies, retire idle extra
        copies."""
        await self.usage.flush()
        await self.decisions.flush()
        for instance_id, known in self.view.instances.items():
            if known.record.draining:
                self._scaler.hand_off(instance_id)  # again, should a hand-off have ended early
        self._scaler.review_rates()
        self._scaler.keep_min_copies()
        await self._scaler.retire_idle_copies()

    async def copies_settled(self) -> None:
        """Wait until the copies maintenance started adding are loaded, or failed."""
        await self._scaler.settled()

    def _cluster_rates(self, local: dict[str, float]) -> dict[str, float]:
        """Given this router's requests per minute per model, the cluster's (published with the demand)."""
        self.demand.set_rates(local)
        return self.demand.cluster_rates()

    def _min_copies(self) -> dict[str, int]:
        return {m: known.record.min_copies for m, known in self.view.models.items() if known.record.min_copies}
