"""Running a real adapter beside its real model server, behind an in-process router, for the runtime suites.

The model server runs from its own venv (adapters.common.envs, made on first use), launched by the adapter
itself (--launch), the same way a user runs one on a single machine. Every process is stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from mesh.config import Settings
from mesh.gen import mesh_admin_pb2 as ma
from mesh.gen import mesh_admin_pb2_grpc as ma_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.processes import python_module_command
from mesh.router import Ports, Router

REPO = Path(__file__).resolve().parents[2]
ADAPTER_START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


@dataclass
class AdapterProcess:
    """`python -m adapters.<runtime> ...` as a subprocess: its pid, SPI endpoint and output file."""

    process: subprocess.Popen[bytes]
    endpoint: str
    instance_id: str
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, a bounded wait, SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=10)


def start_adapter(runtime: str, workdir: Path, args: Sequence[str], instance_id: str | None = None) -> AdapterProcess:
    """Start an adapter on a free SPI port and wait for its port file (it writes it once its server is ready)."""
    instance_id = instance_id or f"{runtime}-0"
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{instance_id}.port"
    output = workdir / f"{instance_id}.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*python_module_command(f"adapters.{runtime}"), "--port", "0", "--port-file", str(port_file),
             "--instance-id", instance_id, "--parent-pid", str(os.getpid()), "--log-level", "DEBUG", *args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    adapter = AdapterProcess(process, "", instance_id, output)
    deadline = time.monotonic() + ADAPTER_START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            adapter.stop()
            raise RuntimeError(f"adapter {instance_id} did not start (exit {process.poll()}):\n{adapter.log()[-4000:]}")
        time.sleep(0.1)
    adapter.endpoint = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    return adapter


@contextlib.asynccontextmanager
async def router_over(
    workdir: Path, *adapters: AdapterProcess, **settings: object
) -> AsyncIterator[tuple[Router, Ports]]:
    """An in-process router on free ports (embedded store), or those `settings` name, with the adapters as its
    runtime instances."""
    defaults: dict[str, object] = {
        "grpc_port": 0, "rest_port": 0, "metrics_port": -1, "kv": "memory://", "data_dir": str(workdir / "router"),
    }  # fmt: skip
    router = Router(Settings(**(defaults | settings)))  # type: ignore[arg-type]
    ports = await router.start()
    try:
        for adapter in adapters:
            await router.add_instance(adapter.instance_id, adapter.endpoint)
        yield router, ports
    finally:
        await router.stop()


@dataclass
class MeshOverAdapter:
    """A router in front of adapters, as a runtime suite drives it: the management API over its gRPC door. Each
    suite subclasses it with the clients of its own server (inference through the router, the server directly)."""

    router: Router
    address: str  # the router's gRPC host:port
    channel: grpc.aio.Channel  # to it

    @property
    def admin(self) -> mm_grpc.ModelMeshStub:
        return mm_grpc.ModelMeshStub(self.channel)

    async def register(self, model_id: str, model_type: str, path: Path) -> None:
        info = mm.ModelInfo(type=model_type, path=str(path))
        await self.admin.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))

    async def unregister(self, model_id: str) -> None:
        await self.admin.unregisterModel(mm.UnregisterModelRequest(modelId=model_id))

    async def status(self, model_id: str) -> mm.ModelStatusInfo:
        return await self.admin.getModelStatus(mm.GetStatusRequest(modelId=model_id))

    async def size(self, model_id: str) -> int:
        """The size the router holds for the model (measured after a load)."""
        listing = await ma_grpc.MeshAdminStub(self.channel).ListModels(ma.ListModelsRequest())
        return next(m.sizeInBytes for m in listing.models if m.modelId == model_id)

    def data_endpoint(self, adapter: AdapterProcess) -> str:
        """Where the adapter's server takes inference itself (what the router forwards to)."""
        return self.router.manager.view.instances[adapter.instance_id].record.data_endpoint


@contextlib.asynccontextmanager
async def mesh_over(workdir: Path, *adapters: AdapterProcess) -> AsyncIterator[MeshOverAdapter]:
    """router_over, with a channel to the router's gRPC door."""
    async with router_over(workdir, *adapters) as (router, ports):
        address = f"127.0.0.1:{ports.grpc}"
        async with grpc.aio.insecure_channel(address) as channel:
            yield MeshOverAdapter(router, address, channel)
