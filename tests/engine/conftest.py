"""The native data plane's suites: a real HAProxy in front of in-process routers and runtimes.

make_mesh is the placement suites' factory with dataplane=haproxy: the port a Mesh's channel dials is the engine's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.router import meshes


@pytest.fixture
async def make_mesh(tmp_path: Path, haproxy_binary: str):  # type: ignore[no-untyped-def]
    store = {"kv": "memory://", "durable_kv": f"file://{tmp_path / 'kv.log'}", "kv_prefix": "mesh"}
    async with meshes(tmp_path, store, dataplane="haproxy", haproxy_binary=haproxy_binary) as make:
        yield make
