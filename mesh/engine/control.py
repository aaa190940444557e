"""The control loop of a native data plane: routes follow placement, usage flows back, copies drain before unload.

- Routes: a placement or vmodel change (the view's callback) marks that model's or vmodel's route stale; a task
  recomputes the stale ones and hands the engine the difference at once, so one change costs one model's work
  however many models there are. Instance changes, and every `resync_s` (instance health changes, which are not
  records, reach the routes that way), recompute them all (routes.plan_routes).
- Usage: every `usage_s` the engine's per-model counters are read; what it served since the last read counts as
  requests and last use in placement's usage (usage.py), exactly as requests mesh served itself do: the
  cluster-wide LRU, copies following load (by rate, and by requests in flight per copy) and the GDSF counts see
  both. Their latency, counted by the engine per bucket, goes into the request histogram at the same time.
- Drain: before a copy is unloaded (evictor.py), its route is withdrawn and the engine's requests in flight to it
  are waited for, up to `drain_timeout_s`.
- Supervision: an engine that exits while mesh runs is started again with the routes it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time

import grpc

from mesh.engine.driver import EngineDriver, EngineError, LatencyCounts, ModelTraffic
from mesh.engine.routes import RouteUpdate, model_copies, plan_routes, vmodel_target
from mesh.metrics import RouterMetrics, method_label
from mesh.naming import LocalNames
from mesh.payload_log import parse_sinks, through_mesh
from mesh.periodic import every, woken_or_after
from mesh.placement.manager import PlacementManager
from mesh.placement.records import InstanceRecord, Kind

log = logging.getLogger(__name__)

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
RESTART_DELAY_S = 0.5
OTHER_ROUTERS_GRACE_S = 0.25
"""Before an unload, how long other routers' engines get to withdraw the copy's route (their view follows the
store's watch within milliseconds) and finish the requests they sent it: their in-flight counts are not visible
here, and models they have requests in flight for are already spared by their demand records."""


def engine_reachable(record: InstanceRecord) -> bool:
    return engine_endpoint(record) is not None


def engine_endpoint(record: InstanceRecord) -> str | None:
    """IP:PORT where the engine reaches the instance's inference, or None when it cannot: the engine forwards
    plaintext h2 to addresses, so a runtime serving TLS, on a unix socket (HAProxy cannot be pointed at one at run
    time) or at a name that does not resolve is left to mesh's door."""
    endpoint = record.data_endpoint or record.endpoint
    if record.tls or endpoint.startswith("unix:"):
        return None
    return ip_endpoint(endpoint)


_RESOLVED: dict[str, str] = {}
"""Endpoints already resolved (failures are not kept: a name that does not resolve now may later)."""


def ip_endpoint(endpoint: str) -> str | None:
    """HOST:PORT with the host resolved to an IP address (the engine takes addresses, not names, at run time);
    resolved once per endpoint (runtimes are addressed by IP in Kubernetes, by 127.0.0.1 on one machine)."""
    known = _RESOLVED.get(endpoint)
    if known is not None:
        return known
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = str(socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0])
        except OSError:
            return None
    resolved = _RESOLVED[endpoint] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return resolved


class EngineControl:
    def __init__(
        self,
        driver: EngineDriver,
        manager: PlacementManager,
        metrics: RouterMetrics,
        resync_s: float = 2.0,
        usage_s: float = 0.5,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.driver = driver
        self._manager = manager
        self._metrics = metrics
        self._resync_s = resync_s
        self._usage_s = usage_s
        self._drain_timeout_s = drain_timeout_s
        self._names = LocalNames(manager.settings.namespace)
        self._via_mesh = through_mesh(parse_sinks(manager.settings.payload_log))
        self._stale = asyncio.Event()
        self._stale_models: set[str] = set()
        self._stale_vmodels: set[str] = set()
        self._stale_all = True
        self._sync_lock = asyncio.Lock()
        self._seen: dict[str, int] = {}
        self._timed: dict[tuple[str, str, int], LatencyCounts] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        await self.driver.start()
        await self.sync()
        self._manager.view.on_change.append(self._on_view_change)
        self._manager.drain_before_unload(self.drain)
        self._manager.publish_routes_with(self._sync_stale)
        self._tasks = [
            asyncio.create_task(self._follow_placement(), name="engine-routes"),
            asyncio.create_task(every(self._usage_s, self.collect_usage, "engine usage", log), name="engine-usage"),
            asyncio.create_task(self._supervise(), name="engine-supervisor"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ValueError):
            self._manager.view.on_change.remove(self._on_view_change)
        with contextlib.suppress(Exception):  # the last counts, so usage the engine saw is not lost
            await self.collect_usage()
        await self.driver.stop()

    # ---- routes ------------------------------------------------------------------------------------------

    def _on_view_change(self, kind: Kind, record_id: str) -> None:
        if kind is Kind.PLACEMENT:
            self._stale_models.add(record_id)
        elif kind is Kind.VMODEL:
            self._stale_vmodels.add(record_id)
            bare = self._names.local_name(record_id)
            if bare is not None:
                self._stale_vmodels.add(bare)
        elif kind is Kind.INSTANCE:
            self._stale_all = True
        else:
            return
        self._stale.set()

    async def _follow_placement(self) -> None:
        resync_at = time.monotonic() + self._resync_s
        while True:
            await woken_or_after(self._stale, max(resync_at - time.monotonic(), 0.0))
            self._stale.clear()
            if time.monotonic() >= resync_at:
                self._stale_all = True
                resync_at = time.monotonic() + self._resync_s
            try:
                await self.sync() if self._stale_all else await self._sync_stale()
            except Exception:  # noqa: BLE001 - the next round tries again; requests meanwhile go through mesh
                log.exception("data plane: routes not updated")

    async def sync(self) -> None:
        """Give the engine the instances and every route placement allows now."""
        async with self._sync_lock:
            if not self.driver.running():
                return
            self._stale_all = False
            self._stale_models.clear()
            self._stale_vmodels.clear()
            view = self._manager.view
            reachable = ((i, engine_endpoint(known.record)) for i, known in view.instances.items())
            endpoints = {instance_id: endpoint for instance_id, endpoint in reachable if endpoint is not None}
            await self.driver.set_instances(endpoints)
            routes = plan_routes(view, self._manager.copies, engine_reachable, self._names, self._via_mesh)
            await self.driver.set_routes(routes)

    async def _sync_stale(self, *models: str) -> None:
        """The routes of the models and vmodels that changed since the last sync (and of `models`)."""
        async with self._sync_lock:
            if not self.driver.running():
                return
            stale_models, self._stale_models = self._stale_models | set(models), set()
            stale_vmodels, self._stale_vmodels = self._stale_vmodels, set()
            view, copies = self._manager.view, self._manager.copies
            routes = {m: model_copies(view, copies, m, engine_reachable, self._via_mesh) for m in stale_models}
            await self.driver.update_routes(
                RouteUpdate(
                    {m: holders for m, (holders, _) in routes.items()},
                    {m: readers for m, (_, readers) in routes.items()},
                    {v: vmodel_target(view, v, self._names, self._via_mesh) for v in stale_vmodels},
                )
            )

    # ---- usage -------------------------------------------------------------------------------------------

    async def collect_usage(self) -> None:
        """What the engine served since the last call, into placement's usage."""
        if not self.driver.running():
            return
        traffic = await self.driver.traffic()
        manager = self._manager
        for model_id, seen in traffic.items():
            served = self._served_since(model_id, seen)
            if served:
                manager.usage.served_natively(model_id, served, seen.last_used_ms)
                self._metrics.engine_served(model_id, served)
        manager.in_flight_elsewhere({model_id: seen.in_flight for model_id, seen in traffic.items()})
        self._seen = {model_id: seen.requests for model_id, seen in traffic.items()}
        self._report_latency(await self.driver.latency())

    def _report_latency(self, latency: list[LatencyCounts]) -> None:
        """What the engine timed since the last call, into the request histogram (its counts are cumulative)."""
        seen: dict[tuple[str, str, int], LatencyCounts] = {}
        for now in latency:
            key = (now.model, now.path, now.code)
            seen[key] = now
            before = self._timed.get(key)
            if before is not None and now.count >= before.count:  # else the engine restarted: all of it is new
                if now.count == before.count:
                    continue
                buckets = tuple(n - b for n, b in zip(now.buckets, before.buckets, strict=True))
                sum_us = now.sum_us - before.sum_us
            else:
                buckets, sum_us = now.buckets, now.sum_us
            code = _STATUS_CODES.get(now.code, grpc.StatusCode.UNKNOWN)
            self._metrics.requests_served_natively(method_label(now.path), code, now.model, buckets, sum_us / 1000)
        self._timed = seen

    def _served_since(self, model_id: str, seen: ModelTraffic) -> int:
        before = self._seen.get(model_id, 0)
        # A count lower than before: the engine restarted and counts from 0 again.
        return seen.requests - before if seen.requests >= before else seen.requests

    # ---- draining ----------------------------------------------------------------------------------------

    async def drain(self, model_id: str, instance_id: str) -> None:
        """Withdraw the copy's route (placement no longer lists it, or lists it as evicting) and wait until the
        engine has no request in flight on it, up to the drain timeout; with other routers on the store, then give
        their engines OTHER_ROUTERS_GRACE_S to see the copy go (their watch) and finish what they sent it."""
        try:
            await self._sync_stale(model_id)
            await self._own_requests_done(model_id, instance_id)
        except (OSError, TimeoutError, EngineError) as exc:
            # The engine did not answer: the eviction goes on (the request that needs the room waits on it), after
            # the grace other routers' engines get, rather than failing that request.
            log.warning("data plane: drain of model %s on %s unconfirmed (%s)", model_id, instance_id, exc)
            await asyncio.sleep(OTHER_ROUTERS_GRACE_S)
            return
        if self._manager.demand.others_present():
            await asyncio.sleep(OTHER_ROUTERS_GRACE_S)

    async def _own_requests_done(self, model_id: str, instance_id: str) -> None:
        deadline = time.monotonic() + self._drain_timeout_s
        delay = 0.005
        while self.driver.running() and await self.driver.copy_in_flight(model_id, instance_id):
            if time.monotonic() > deadline:
                log.warning(
                    "data plane: requests to model %s on %s still in flight after %.0fs; unloading anyway",
                    model_id,
                    instance_id,
                    self._drain_timeout_s,
                    extra={"event": "drain_timeout", "model": model_id, "instance": instance_id},
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    # ---- supervision -------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            code = await self.driver.wait_exit()
            if self._stopping:
                return
            log.error("data-plane engine exited with %s; starting it again", code)
            await asyncio.sleep(RESTART_DELAY_S)
            try:
                # Under the sync lock: a route change meanwhile would reach the engine being replaced, or be
                # counted as given while the new one starts from the files written before it.
                async with self._sync_lock:
                    await self.driver.restart()
            except Exception:  # noqa: BLE001 - nothing serves the public ports now: say so loudly, retry
                log.exception("data-plane engine did not start again")
                continue
            self._seen, self._timed = {}, {}
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the follow task's next full resync gives it the routes
                log.exception("data plane: routes not given to the restarted engine")
