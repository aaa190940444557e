"""The engine as a sidecar (the router pod's form in Kubernetes): a haproxy that mesh does not start, run the way
deploy/ runs it, sharing a directory with mesh: mesh has it reload its config, routes through its runtime API,
notices when it restarts and gives it the routes again; the sidecar keeps serving loaded models while mesh
restarts.

Where requests went is proven as in test_native_routing.py: the runtime's count of calls against the engine's own
count of what it routed natively.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine.test_native_routing import eventually, native_count, routed, runtime_infers, value
from harness.engine import SidecarEngine, free_port
from harness.router import Mesh, Runtime, start_runtime

from mesh.config import Settings
from mesh.router import Router

MB = 1024 * 1024


@dataclass
class SidecarSetup:
    sidecar: SidecarEngine
    directory: Path
    runtime: Runtime
    tmp: Path
    grpc_port: int

    async def router(self) -> Mesh:
        """A router driving the sidecar (its store: a file, so that registrations outlive it)."""
        settings = Settings(
            host="127.0.0.1",
            grpc_port=self.grpc_port,
            rest_port=-1,
            metrics_port=-1,
            kv=f"file://{self.tmp / 'kv.log'}",
            dataplane="haproxy-sidecar",
            dataplane_dir=str(self.directory),
        )
        router = Router(settings)
        await router.start()
        await router.add_instance(self.runtime.instance_id, self.runtime.endpoint, ("echo",))
        return Mesh(router, [self.runtime], self.grpc_port, self.tmp)


@pytest.fixture
async def setup(tmp_path: Path, haproxy_binary: str) -> AsyncIterator[SidecarSetup]:
    directory = tmp_path / "engine"
    directory.mkdir()
    sidecar = SidecarEngine(directory, haproxy_binary)
    sidecar.start()  # before mesh, as a pod's containers may: it waits for mesh's config
    runtime = await start_runtime("rt-a", 64 * MB)
    try:
        yield SidecarSetup(sidecar, directory, runtime, tmp_path, free_port())
    finally:
        sidecar.kill()
        await runtime.server.stop(0)


async def stopped(mesh: Mesh) -> None:
    await mesh.channel.close()
    await mesh.router.stop(grace=0)


async def test_mesh_routes_through_a_sidecar_it_does_not_own(setup: SidecarSetup) -> None:
    mesh = await setup.router()
    try:
        await mesh.register_echo("m")
        assert value(await mesh.infer("m", 1)) == 1  # a miss: the sidecar hands it to mesh's door
        await eventually(lambda: routed(mesh, "m"), "the route to m published to the sidecar")
        for n in range(5):
            assert value(await mesh.infer("m", n)) == n
        assert await native_count(mesh, "m") == 5
        assert runtime_infers(mesh) == 6
    finally:
        await stopped(mesh)
    assert setup.sidecar.popen is not None and setup.sidecar.popen.poll() is None, "mesh stopped its sidecar"


async def test_a_restarted_sidecar_gets_the_routes_again(setup: SidecarSetup) -> None:
    mesh = await setup.router()
    try:
        await mesh.register_echo("m")
        await mesh.infer("m")
        await eventually(lambda: routed(mesh, "m"), "the route to m published")
        assert mesh.router.engine is not None
        first = mesh.router.engine.control.driver.pid()
        setup.sidecar.kill()  # the engine container dies, and its restart starts from the files on disk
        setup.sidecar.start()
        driver = mesh.router.engine.control.driver

        async def serving_again() -> bool:
            return driver.running() and driver.pid() != first and await routed(mesh, "m")

        await eventually(serving_again, "mesh noticed the new sidecar and gave it the route again", timeout=30)
        before = runtime_infers(mesh)
        for n in range(3):
            assert value(await mesh.infer("m", n)) == n
        assert runtime_infers(mesh) - before == 3
        assert await native_count(mesh, "m") == 3  # the new worker's count: natively served
    finally:
        await stopped(mesh)


async def test_loaded_models_are_served_while_mesh_restarts(setup: SidecarSetup) -> None:
    mesh = await setup.router()
    await mesh.register_echo("m")
    await mesh.infer("m")
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    await stopped(mesh)

    # No mesh now: the sidecar still holds the route, and the runtime the copy.
    during = Mesh(mesh.router, [setup.runtime], setup.grpc_port, setup.tmp)
    try:
        assert value(await during.infer("m", 42)) == 42
    finally:
        await during.channel.close()

    again = await setup.router()  # the next mesh reloads the sidecar with its own config
    try:
        await again.register_echo("n")
        assert value(await again.infer("n", 2)) == 2  # a miss: reaches the new mesh's door
        await eventually(lambda: routed(again, "n"), "the new mesh's route to n published")
        assert value(await again.infer("n", 3)) == 3
        assert await native_count(again, "n") == 1
    finally:
        await stopped(again)
