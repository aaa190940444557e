"""Fixtures for the placement tests (helpers live in tests/harness/router.py).

Every test runs twice: on the embedded store and on a real etcd (one server per session, a key prefix per
test), since placement must behave the same on both.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness.router import meshes


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
    async with meshes(tmp_path, store) as make:
        yield make
