"""One router process: the KV store, placement, and both front doors, started and stopped together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health

from mesh.config import Settings
from mesh.engine.frontdoor import INTERNAL_HOST, NativeFrontDoor, native_engine, start_front_door
from mesh.health import Readiness
from mesh.kv import open_kv
from mesh.kv.base import KV
from mesh.metrics import RouterMetrics, start_metrics_server
from mesh.payload_log import PayloadLog, parse_sinks
from mesh.placement.gauges import PlacementGauges
from mesh.placement.manager import PlacementManager
from mesh.placement.records import Kind
from mesh.proxy.dataplane import INFERENCE_SERVICE, DataPlane
from mesh.proxy.grpc_server import HEALTH_NOT_SERVING, HEALTH_SERVING, start_grpc_server
from mesh.proxy.rest_server import start_rest_server
from mesh.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    grpc: int
    rest: int | None
    metrics: int | None = None


class Router:
    """Assembles the library core; `mesh serve` and the tests both run exactly this."""

    def __init__(self, settings: Settings, kv: KV | None = None, runtime_metrics_dir: Path | None = None) -> None:
        """runtime_metrics_dir: the prometheus_client multiprocess directory of the runtime processes this router
        started, aggregated into its /metrics."""
        self.settings = settings
        self._kv = kv
        self._owns_kv = kv is None
        self._runtime_metrics_dir = runtime_metrics_dir
        self.metrics: RouterMetrics
        self._metrics_server: web.AppRunner | None = None
        self.manager: PlacementManager
        self.registry: ModelRegistry
        self.dataplane: DataPlane
        self.payloads: PayloadLog
        self._grpc: grpc.aio.Server | None = None
        self._rest: web.AppRunner | None = None
        self._health: health.aio.HealthServicer | None = None
        self.readiness: Readiness
        self.engine: NativeFrontDoor | None = None

    async def start(self, hold_ready: str | None = None) -> Ports:
        """Open the store and both front doors. hold_ready: readiness stays false, saying this, until
        `self.readiness.release(hold_ready)`: for an assembler that has more to do before clients come."""
        settings = self.settings
        if self._kv is None:
            self._kv = open_kv(settings.kv_url(), settings.etcd_tls())
        self.metrics = RouterMetrics(settings.metrics_per_model)
        metrics_port = None
        if settings.metrics_port >= 0:  # first: a port already taken (2112 by default) fails before anything runs
            self._metrics_server, metrics_port = await start_metrics_server(
                settings.host, settings.metrics_port, self.metrics.collectors, self._runtime_metrics_dir
            )
        self.manager = PlacementManager(self._kv, settings, self.metrics)
        await self.manager.start()
        self.registry = ModelRegistry(self.manager)
        self.registry.start()
        self.metrics.collectors.register(PlacementGauges(self.manager, self.registry))
        view = self.manager.view
        self.metrics.label_models(lambda name: name in view.models or name in view.vmodels)
        self.readiness = Readiness(self._kv, self.manager, settings.health_check_seconds)
        tls = settings.front_door_tls()
        self.payloads = PayloadLog(
            parse_sinks(settings.payload_log), self.metrics.payload_dropped, self.manager.demand.router_id
        )
        self.payloads.start()
        self.dataplane = DataPlane(
            self.registry, self.manager, self.readiness, self.metrics, settings.access_log, self.payloads
        )
        engine = native_engine(settings)
        # Behind an engine, mesh's doors are internal: any free loopback port, called by the engine only, which
        # terminates TLS.
        host = INTERNAL_HOST if engine else settings.host
        if engine:
            tls = None
        self._grpc, grpc_port, self._health = await start_grpc_server(
            self.dataplane,
            self.registry,
            self.manager,
            self.metrics,
            host,
            0 if engine else settings.grpc_port,
            settings.max_message_bytes,
            tls,
        )
        rest_port = None
        if settings.rest_port >= 0:
            self._rest, rest_port = await start_rest_server(
                self.dataplane, self.metrics, host, 0 if engine else settings.rest_port, settings.max_message_bytes, tls
            )
        if engine:
            self.engine = await start_front_door(engine, settings, self.manager, self.metrics, grpc_port, rest_port)
            log.info("data plane: haproxy in front of mesh's doors (gRPC %d, REST %s)", grpc_port, rest_port)
            grpc_port, rest_port = self.engine.grpc_port, self.engine.rest_port
            self.readiness.add_condition(self.engine.problem)
        self.readiness.on_change.append(self._publish_health)
        self.manager.view.on_change.append(self._on_change)
        if hold_ready is not None:
            self.readiness.hold(hold_ready)
        await self.readiness.start()
        log.info(
            "mesh router serving gRPC on %s:%d, REST on %s",
            settings.host,
            grpc_port,
            f"{settings.host}:{rest_port}" if rest_port else "(disabled)",
        )
        return Ports(grpc_port, rest_port, metrics_port)

    @property
    def kv(self) -> KV:
        """The store this router runs on (another router may share it)."""
        assert self._kv is not None, "start() first"
        return self._kv

    async def add_instance(
        self,
        instance_id: str,
        endpoint: str,
        model_types: tuple[str, ...] = (),
        tls: bool | None = None,
        labels: tuple[str, ...] = (),
    ) -> None:
        await self.manager.add_instance(instance_id, endpoint, model_types, tls, labels)
        await self.readiness.check()

    async def remove_instance(self, instance_id: str) -> None:
        """Take a runtime this router registered out of routing (its process exited)."""
        await self.manager.remove_instance(instance_id)

    def _on_change(self, kind: Kind, record_id: str) -> None:
        if kind is Kind.INSTANCE:
            self.readiness.check_soon()

    async def _publish_health(self, ready: bool) -> None:
        if self._health is None:
            return
        state = HEALTH_SERVING if ready else HEALTH_NOT_SERVING
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, state)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, then placement, then the store; safe to call twice."""
        rest, self._rest = self._rest, None
        server, self._grpc = self._grpc, None
        metrics, self._metrics_server = self._metrics_server, None
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.stop()
        if rest is not None:
            await rest.cleanup()
        if metrics is not None:
            await metrics.cleanup()
        if server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # NOT_SERVING while in-flight calls finish
        await server.stop(grace)
        await self.payloads.stop()
        await self.readiness.stop()
        await self.registry.close()
        await self.manager.stop()
        if self._kv is not None and self._owns_kv:
            await self._kv.close()
