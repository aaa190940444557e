"""One real router for the end-to-end hostile-input tests of a module: both front doors, a built-in runtime; once
with mesh's own doors on the public ports and once behind the native engine (HAProxy), so every hostile input is
also answered clearly with the engine in front.

Everything binds 127.0.0.1 port 0. The message limit is small (MAX_MESSAGE_BYTES) so that oversized requests
are cheap to send. The runtime is served the way `python -m adapters.builtin` serves it (unparseable requests
are INVALID_ARGUMENT), since truncated requests that name a registered model reach it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest_asyncio

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer
from adapters.builtin.settings import RuntimeSettings
from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.grpcutil import RejectingUnparseable
from mesh.placement.records import ModelRecord
from mesh.router import Router

MAX_MESSAGE_BYTES = 1024 * 1024
MODEL = "echo"


@dataclass
class HostileMesh:
    router: Router
    grpc_port: int
    rest_port: int
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    tmp: Path

    @property
    def management(self) -> mm_grpc.ModelMeshStub:
        return mm_grpc.ModelMeshStub(self.channel)

    def raw_unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A generic unary call: bytes in, bytes out, nothing parsed on the client side."""
        return self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["python", "haproxy"])
async def mesh(tmp_path_factory, request) -> AsyncIterator[HostileMesh]:  # type: ignore[no-untyped-def]
    engine = {"haproxy_binary": request.getfixturevalue("haproxy_binary")} if request.param == "haproxy" else {}
    tmp = tmp_path_factory.mktemp("hostile")
    runtime_settings = RuntimeSettings(instance_id="rt-a", capacity_bytes=64 * 1024 * 1024, max_loading_concurrency=4)
    core = BuiltinRuntime(runtime_settings)
    runtime = grpc.aio.server()
    rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, runtime_settings), RejectingUnparseable(runtime))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), RejectingUnparseable(runtime))
    runtime_port = runtime.add_insecure_port("127.0.0.1:0")
    await runtime.start()
    settings = Settings(
        grpc_port=0,
        rest_port=0,
        metrics_port=-1,
        kv="memory://",
        max_message_bytes=MAX_MESSAGE_BYTES,
        dataplane=request.param,
        **engine,
    )
    router = Router(settings)
    ports = await router.start()
    assert ports.rest is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.rest}", timeout=30)
    try:
        await router.add_instance("rt-a", f"127.0.0.1:{runtime_port}", ("echo",))
        (tmp / "echo.json").write_text(json.dumps({}))
        await router.registry.register(ModelRecord(MODEL, "echo", str(tmp / "echo.json")), load_now=True, sync=True)
        yield HostileMesh(router, ports.grpc, ports.rest, channel, http, tmp)
    finally:
        await http.aclose()
        await channel.close()
        await router.stop(grace=0)
        await runtime.stop(0)
