"""The unit tier: placement, the data plane and the registry in the test's event loop, over fake runtimes and the
real embedded store (tests/harness/fakes.py). No processes, no sockets: each test runs in milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from harness.fakes import FakeCluster, FakeRuntime


@pytest.fixture
async def make_cluster() -> AsyncIterator[Callable[..., FakeCluster]]:
    """make_cluster(*runtimes, **settings): a FakeCluster closed when the test ends, however it ends."""
    made: list[FakeCluster] = []

    def make(*runtimes: FakeRuntime, **settings: object) -> FakeCluster:
        cluster = FakeCluster(*runtimes, **settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        await cluster.close()
