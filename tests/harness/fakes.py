"""Fakes for the unit tier: runtimes that live in the test's memory, and placement wired over them.

A FakeRuntime does what the runtime SPI promises (load returns a size, capacity is not its business, unload of an
unknown model is fine) and records every call; a test scripts its failures and can hold its loads at a gate. The
store is the real embedded one (MemoryKV, memory://), so claims, watches and compare-and-swap are the real code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc

from mesh.config import Settings
from mesh.kv.memory import MemoryKV
from mesh.metrics import RouterMetrics
from mesh.placement.manager import PlacementManager
from mesh.placement.records import Footprint, InstanceRecord, ModelRecord, now_ms
from mesh.registry import ModelRegistry

MB = 1_000_000


WAIT_S = 5.0
"""How long a unit test waits for something that happens in the background (it takes milliseconds)."""


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Until condition() is true, polled every 5 ms; fails saying `what` after WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.005)


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    """The error a real channel raises when the server answers `code`."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details or code.name)


@dataclass
class FakeRuntime:
    """One runtime instance: what it holds, every call it got, and the failures a test scripts."""

    instance_id: str
    capacity_bytes: int = 10 * MB
    model_size: int = MB
    loading_slots: int = 4
    loaded: dict[str, int] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    # model id → the status its next loads fail with (removed by the test to let them succeed).
    failing: dict[str, grpc.StatusCode] = field(default_factory=dict)
    # model id → size a load measures, when not model_size (predictModelSize always answers model_size).
    sizes: dict[str, int] = field(default_factory=dict)
    # Real memory, when below capacity_bytes: a load that would hold more fails RESOURCE_EXHAUSTED.
    memory_bytes: int | None = None
    # Accelerator memory it reports (0: none), what models need there (model id → bytes; predicted and measured
    # alike), and the real device memory when below what it reports (a load past it fails RESOURCE_EXHAUSTED).
    labels: tuple[str, ...] = ()
    # model id → how long its loads take (a slow model), else instant.
    load_seconds: dict[str, float] = field(default_factory=dict)
    device_capacity_bytes: int = 0
    device_sizes: dict[str, int] = field(default_factory=dict)
    device_memory_bytes: int | None = None
    # While set, loads wait here (a test opens it to let them finish).
    gate: asyncio.Event | None = None
    # Forwarded calls: path → reply; a callable may raise (an RpcError) instead.
    replies: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)
    forwarded: list[tuple[str, bytes]] = field(default_factory=list)
    alive: bool = True
    started_ms: int = field(default_factory=now_ms)
    # Takes the model id from an mm-model-id header (meshReadsModelIdHeader), as the built-in runtime does.
    reads_model_header: bool = False

    def record(self, model_types: tuple[str, ...] = ("echo",)) -> InstanceRecord:
        return InstanceRecord(
            self.instance_id,
            "127.0.0.1:1",  # never dialled: FakeClients finds a fake by its instance id
            self.capacity_bytes,
            model_types,
            loading_slots=self.loading_slots,
            default_model_size=self.model_size,
            load_timeout_ms=5000,
            started_ms=self.started_ms,
            reads_model_header=self.reads_model_header,
            device_capacity_bytes=self.device_capacity_bytes,
            labels=self.labels,
        )

    # ---- the SPI, as RuntimeClient offers it -----------------------------------------------------------------

    async def predict_size(self, model: ModelRecord, timeout: float) -> Footprint:
        return Footprint(self.model_size, self.device_sizes.get(model.model_id, 0))

    async def load(self, model: ModelRecord, timeout: float) -> Footprint:
        self.loads.append(model.model_id)
        if not self.alive:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if self.gate is not None:
            await self.gate.wait()
        if model.model_id in self.load_seconds:
            await asyncio.sleep(self.load_seconds[model.model_id])  # the model's load time, as a runtime spends it
        code = self.failing.get(model.model_id)
        if code is not None:
            raise rpc_error(code, f"{model.model_id} failed with {code.name}")
        size = self.sizes.get(model.model_id, self.model_size)
        if self.memory_bytes is not None and sum(self.loaded.values()) + size > self.memory_bytes:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory")
        device = self.device_sizes.get(model.model_id, 0)
        held_on_device = sum(self.device_sizes.get(m, 0) for m in self.loaded)
        if device and self.device_memory_bytes is not None and held_on_device + device > self.device_memory_bytes:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "CUDA out of memory")
        self.loaded[model.model_id] = size
        return Footprint(size, device)

    async def unload(self, model_id: str, timeout: float = 30) -> None:
        self.unloads.append(model_id)
        if not self.alive:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        self.loaded.pop(model_id, None)

    def method(self, path: str) -> Callable[..., object]:
        async def call(body: bytes, timeout: float | None = None, metadata: object = ()) -> bytes:
            self.forwarded.append((path, body))
            if not self.alive:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
            reply = self.replies.get(path)
            return reply(body) if reply is not None else b"reply:" + body

        return call

    async def answers(self, timeout: float) -> bool:
        return self.alive

    def cannot_connect(self) -> bool:
        return not self.alive

    async def close(self) -> None:
        pass


class FakeClients:
    """RuntimeClients over fake runtimes (shared by every router of a test, as real runtimes are)."""

    def __init__(self, runtimes: Mapping[str, FakeRuntime]) -> None:
        self.runtimes = runtimes
        self.tls = None

    def get(self, instance_id: str) -> FakeRuntime:
        return self.runtimes[instance_id]

    async def close(self) -> None:
        pass


@dataclass
class Placement:
    """One router's placement over fake runtimes: the façade and the registry on top of it."""

    manager: PlacementManager
    registry: ModelRegistry
    metrics: RouterMetrics

    async def register(self, *model_ids: str, model_type: str = "echo") -> None:
        for model_id in model_ids:
            await self.registry.register(ModelRecord(model_id, model_type, f"/models/{model_id}"))

    async def use(self, model_id: str) -> str:
        """A request for the model, as the data plane makes it: the instance it was served on."""
        lease = self.manager.loaded_copy(model_id) or await self.manager.await_copy(model_id)
        with lease:
            return lease.instance_id

    async def stop(self) -> None:
        await self.registry.close()
        await self.manager.stop()


class FakeCluster:
    """Fake runtimes, one embedded store, and as many routers over them as a test starts."""

    def __init__(self, *runtimes: FakeRuntime, **settings: object) -> None:
        self.runtimes = {r.instance_id: r for r in runtimes}
        self.kv = MemoryKV()
        self.settings = Settings(kv="memory://", last_used_flush_seconds=3600, **settings)  # type: ignore[arg-type]
        self.routers: list[Placement] = []

    async def router(self, publish: bool = True) -> Placement:
        """A router over the shared store; the first publishes the runtimes' records (as `mesh serve` does)."""
        metrics = RouterMetrics()
        manager = PlacementManager(self.kv, self.settings, metrics, clients=FakeClients(self.runtimes))  # type: ignore[arg-type]
        await manager.start()
        if publish and not self.routers:
            for runtime in self.runtimes.values():
                await manager.publish_instance(runtime.record())
        placement = Placement(manager, ModelRegistry(manager), metrics)
        self.routers.append(placement)
        return placement

    async def close(self) -> None:
        for router in reversed(self.routers):
            await router.stop()
        await self.kv.close()
