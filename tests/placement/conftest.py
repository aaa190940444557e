"""Fixtures for the placement tests (helpers live in tests/harness/router.py).

Every test runs twice: on the embedded store and on a real etcd (one server per session, a key prefix per
test), since placement must behave the same on both.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness.router import Mesh, start_runtime

from mesh.config import Settings
from mesh.router import Router


@pytest.fixture(params=["memory", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Settings naming the store: an ephemeral one ("kv") and one that outlives a router ("durable_kv")."""
    if request.param == "etcd":
        endpoint = request.getfixturevalue("etcd_server").endpoint
        url = f"etcd://{endpoint}"
        return {"kv": url, "durable_kv": url, "kv_prefix": f"test-{uuid.uuid4().hex[:12]}"}
    return {"kv": "memory://", "durable_kv": f"file://{tmp_path / 'kv.log'}", "kv_prefix": "mesh"}


@pytest.fixture
async def make_mesh(tmp_path: Path, store: dict[str, str]):  # type: ignore[no-untyped-def]
    """Start a router plus runtimes: make_mesh(capacities=[...], durable=False, **settings)."""
    started: list[Mesh] = []

    async def make(capacities: list[int], durable: bool = False, shared_kv=None, **overrides) -> Mesh:  # type: ignore[no-untyped-def]
        kv = store["durable_kv"] if durable else store["kv"]
        ports = {"grpc_port": 0, "rest_port": -1, "metrics_port": 0}
        settings = Settings(**{**ports, "kv": kv, "kv_prefix": store["kv_prefix"], **overrides})
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
