"""Helpers for the placement tests: a router in the test's event loop before in-process built-in runtimes.

The runtimes are the real built-in runtime (real gRPC servers, real model loading); a server interceptor counts
the calls each receives, so tests can prove what the router asked of them.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer
from adapters.builtin.settings import RuntimeSettings
from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.placement.records import ModelRecord
from mesh.router import Router

LOAD = "/mmesh.ModelRuntime/loadModel"
UNLOAD = "/mmesh.ModelRuntime/unloadModel"


class CallCounter(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.calls[handler_call_details.method] += 1
        return await continuation(handler_call_details)


@dataclass
class Runtime:
    instance_id: str
    server: grpc.aio.Server
    endpoint: str
    counter: CallCounter

    @property
    def calls(self) -> Counter[str]:
        return self.counter.calls

    async def is_loaded(self, model_id: str) -> bool:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(pb.ModelReadyRequest(name=model_id))
            return reply.ready


async def start_runtime(
    instance_id: str, capacity_bytes: int, labels: tuple[str, ...] = (), devices: tuple[int, ...] = ()
) -> Runtime:
    """devices: the accelerator memory it reports, per device (simulated: echo models say what they hold)."""
    settings = RuntimeSettings(
        instance_id=instance_id,
        capacity_bytes=capacity_bytes,
        max_loading_concurrency=4,
        labels=labels,
        device_capacity_bytes=devices,
    )
    core = BuiltinRuntime(settings)
    counter = CallCounter()
    server = grpc.aio.server(interceptors=[counter])
    rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, settings), server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Runtime(instance_id, server, f"127.0.0.1:{port}", counter)


@dataclass
class Mesh:
    router: Router
    runtimes: list[Runtime]
    grpc_port: int
    tmp: Path
    make: Callable[..., Awaitable[Mesh]] | None = None
    channel: grpc.aio.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def register_echo(self, model_id: str, ballast_bytes: int = 0, device_bytes: int = 0) -> None:
        path = self.tmp / f"{model_id}.json"
        path.write_text(json.dumps({"ballast_bytes": ballast_bytes, "device_bytes": device_bytes}))
        await self.router.registry.register(ModelRecord(model_id, "echo", str(path)))

    async def infer(self, model_name: str, value: int = 7, metadata=()) -> pb.ModelInferResponse:  # type: ignore[no-untyped-def]
        return await self.inference.ModelInfer(echo_request(model_name, value), metadata=metadata, timeout=30)

    async def join(self) -> Mesh:
        """Another router over the same store and settings (the runtimes are registered once, by the first)."""
        assert self.make is not None
        settings = {f.name: getattr(self.router.settings, f.name) for f in fields(self.router.settings)}
        settings.pop("kv")
        return await self.make([], shared_kv=self.router.kv, **settings)

    def loads(self) -> int:
        return sum(r.calls[LOAD] for r in self.runtimes)


def echo_request(model_name: str, value: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model_name)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(value)
    return request


MakeMesh = Callable[..., Awaitable[Mesh]]


@contextlib.asynccontextmanager
async def meshes(tmp_path: Path, store: dict[str, str], **defaults: Any) -> AsyncIterator[MakeMesh]:
    """make(capacities=[...], durable=False, shared_kv=None, **settings): a router (settings: `defaults`, then the
    call's) plus in-process runtimes of those capacities; all stopped when the block ends. store: "kv" (ephemeral),
    "durable_kv" (outlives a router) and "kv_prefix"."""
    started: list[Mesh] = []

    async def make(capacities: list[int], durable: bool = False, shared_kv=None, devices=(), **overrides) -> Mesh:  # type: ignore[no-untyped-def]
        kv = store["durable_kv"] if durable else store["kv"]
        ports = {"grpc_port": 0, "rest_port": -1, "metrics_port": 0}
        settings = Settings(**{**ports, "kv": kv, "kv_prefix": store["kv_prefix"], **defaults, **overrides})
        router = Router(settings, kv=shared_kv)
        ports = await router.start()
        per_runtime = list(devices) + [()] * (len(capacities) - len(devices))  # devices[i]: runtime i's, if given
        runtimes = [
            await start_runtime(f"rt-{chr(97 + i)}", cap, devices=per_runtime[i]) for i, cap in enumerate(capacities)
        ]
        for runtime in runtimes:
            await router.add_instance(runtime.instance_id, runtime.endpoint, ("echo", "text", "sklearn", "tokens"))
        mesh = Mesh(router, runtimes, ports.grpc, tmp_path, make)
        started.append(mesh)
        return mesh

    try:
        yield make
    finally:
        for mesh in reversed(started):  # routers that share a store stop before the one that owns it
            await mesh.channel.close()
            await mesh.router.stop(grace=0)
            for runtime in mesh.runtimes:
                await runtime.server.stop(0)
