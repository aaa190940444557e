"""Fixtures for the placement tests (helpers live in router_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from router_harness import Mesh, start_runtime

from mesh.config import Settings
from mesh.router import Router


@pytest.fixture
async def make_mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a router plus runtimes: make_mesh(capacities=[...], kv=..., **settings)."""
    started: list[Mesh] = []

    async def make(capacities: list[int], kv: str = "memory://", shared_kv=None, **overrides) -> Mesh:  # type: ignore[no-untyped-def]
        settings = Settings(**{"grpc_port": 0, "rest_port": -1, "kv": kv, **overrides})
        router = Router(settings, kv=shared_kv)
        ports = await router.start()
        runtimes = [await start_runtime(f"rt-{chr(97 + i)}", cap) for i, cap in enumerate(capacities)]
        for runtime in runtimes:
            await router.add_instance(runtime.instance_id, runtime.endpoint, ("echo", "text", "sklearn"))
        mesh = Mesh(router, runtimes, ports.grpc, tmp_path, make)
        started.append(mesh)
        return mesh

    yield make
    for mesh in reversed(started):  # routers that share a store stop before the one that owns it
        await mesh.channel.close()
        await mesh.router.stop(grace=0)
        for runtime in mesh.runtimes:
            await runtime.server.stop(0)
