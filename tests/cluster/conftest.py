"""The `make_cluster` fixture (processes in cluster_harness.py), and every process's output on a failing test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from pathlib import Path

import pytest
from cluster_harness import Cluster, ClusterFactory
from etcd_server import EtcdServer

CLUSTERS_KEY = pytest.StashKey[list[Cluster]]()


@pytest.fixture
async def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_server: EtcdServer
) -> AsyncIterator[ClusterFactory]:
    """make_cluster(runtimes=, routers=, capacity_bytes=, env=, router_env=, etcd=): start a Cluster, once running.

    `env` holds MESH_* settings for every router, `router_env[k]` those for router k alone. The cluster uses the
    session's etcd under a key prefix of its own, unless `etcd` names another (a test that restarts etcd passes
    `restartable_etcd`, requested before this fixture so that it stops after the processes do). Every process
    started is stopped by pid at teardown, whatever the test did.
    """
    clusters: list[Cluster] = []
    request.node.stash[CLUSTERS_KEY] = clusters

    async def make(
        runtimes: int = 3,
        routers: int = 3,
        capacity_bytes: int = 64 * 1024 * 1024,
        env: Mapping[str, str] | None = None,
        router_env: Sequence[Mapping[str, str]] = (),
        etcd: EtcdServer | None = None,
    ) -> Cluster:
        directory = tmp_path / f"cluster-{len(clusters)}"
        directory.mkdir()
        cluster = Cluster(etcd or etcd_server, f"cluster-{uuid.uuid4().hex[:12]}", directory)
        clusters.append(cluster)
        await cluster.start(runtimes, routers, capacity_bytes, env or {}, router_env)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            await cluster.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """Attaches the output of every process of the test's clusters to a failing report."""
    report = yield
    assert isinstance(report, pytest.TestReport)
    if report.failed:
        for cluster in item.stash.get(CLUSTERS_KEY, []):
            for name, text in cluster.logs():
                report.sections.append((f"{cluster.prefix}: {name}", text or "(nothing)"))
    return report
