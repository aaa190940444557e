"""What mesh asks of a native data-plane engine. HAProxy implements it (haproxy.py); another engine (Envoy driven
over xDS, say) would implement the same few calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from mesh.engine.routes import RouteSet, RouteUpdate


@dataclass(frozen=True, slots=True)
class ModelTraffic:
    """What the engine counted for one model since it started: requests served, requests in flight now, and
    when it last served one (epoch ms)."""

    requests: int
    in_flight: int
    last_used_ms: int


@dataclass(frozen=True, slots=True)
class LatencyCounts:
    """How long the requests a runtime answered through the engine took, for one model, method path and gRPC status
    code, since the engine started: their count, the sum of their latencies (µs) and a count per latency bucket
    (haproxy_config.LATENCY_BOUNDS_US, then one for the rest)."""

    model: str
    path: str
    code: int
    count: int
    sum_us: int
    buckets: tuple[int, ...]


class EngineError(RuntimeError):
    """The engine could not be started or changed."""


class EngineDriver(Protocol):
    async def start(self) -> None:
        """Start the engine, serving the public ports; every request goes to mesh's doors until routes exist."""

    async def stop(self) -> None: ...

    def running(self) -> bool:
        """The engine's process is up."""

    def pid(self) -> int | None:
        """The engine's process id while it runs."""

    async def restart(self) -> None:
        """Start the engine again after it exited, with the instances and routes it had."""

    async def wait_exit(self) -> int:
        """Wait until the engine's process exits; its exit code."""

    async def set_instances(self, endpoints: Mapping[str, str]) -> None:
        """The runtime instances the engine may forward to: instance id → endpoint (HOST:PORT or unix:PATH)."""

    async def set_routes(self, routes: RouteSet) -> None:
        """Serve exactly these routes from now on (instances named must have been set)."""

    async def update_routes(self, update: RouteUpdate) -> None:
        """Change the routes of the keys the update names; the others stay as they are."""

    async def traffic(self) -> Mapping[str, ModelTraffic]:
        """Per model id, what the engine served natively."""

    async def copy_in_flight(self, model_id: str, instance_id: str) -> int:
        """Requests the engine has in flight to one copy now."""

    async def latency(self) -> list[LatencyCounts]:
        """The latency of what the engine served natively (empty where it does not time requests)."""
