"""Placement decisions shared through etcd by router processes: one load per miss, one cluster-wide LRU."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness.cluster import FLUSH_SECONDS, ClusterFactory, Router, describe, wait_until

from mesh.placement.records import now_ms

pytestmark = pytest.mark.slow

BALLAST = 1024 * 1024
REQUESTS = 200


async def test_concurrent_first_requests_through_three_routers_load_the_model_once(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(runtimes=3, routers=3)
    await cluster.register_echo("hot")
    await cluster.wait_registered(["hot"])

    results = await asyncio.gather(
        *(cluster.infer("hot", router=i % len(cluster.routers)) for i in range(REQUESTS)), return_exceptions=True
    )

    assert [describe(r) for r in results if r is not None] == []
    # A second load (a lost race, or an extra copy) would have been asked for by now.
    await asyncio.sleep(5 * FLUSH_SECONDS)
    loads = cluster.load_requests("hot")
    assert sum(loads.values()) == 1, loads
    [holder] = [instance for instance, count in loads.items() if count]
    assert await cluster.holders("hot") == {holder}
    await cluster.wait_copies("hot", {holder})


def _holder(layout: dict[str, set[str]], model_id: str) -> str:
    [instance] = [i for i, models in layout.items() if model_id in models]
    return instance


async def test_eviction_follows_the_cluster_wide_lru_order_the_routers_saw_through_etcd(
    make_cluster: ClusterFactory,
) -> None:
    # Room for two ballast models per runtime: six fill the cluster, the seventh and eighth each evict one.
    cluster = await make_cluster(runtimes=3, routers=3, capacity_bytes=int(2.5 * BALLAST))
    routers = len(cluster.routers)
    models = [f"m{i}" for i in range(8)]
    for i, model in enumerate(models):
        await cluster.register_echo(model, BALLAST, router=i % routers)
    await cluster.wait_registered(models)

    async def use(model_id: str, router: int) -> None:
        # One request, then wait until every router knows of it: the order below is the order every router sees.
        since = now_ms()
        await cluster.infer(model_id, router=router)
        await cluster.wait_used(model_id, since)

    # Use order m0..m5, each through another router than the one before, then m0 again through router 2.
    for i in range(6):
        await use(f"m{i}", router=i % routers)
    full = await cluster.layout(models)
    assert sorted(len(loaded) for loaded in full.values()) == [2, 2, 2], full
    assert set().union(*full.values()) == {f"m{i}" for i in range(6)}, full
    await use("m0", router=2)

    # Cluster-wide LRU is now m1, m2, m3, m4, m5, m0. Router 1 places m6. It never served m0: it knows of m0's
    # second use only through what router 2 flushed to etcd, so evicting m1, not m0, proves recency is shared.
    await use("m6", router=1)
    expected = {instance: set(loaded) for instance, loaded in full.items()}
    expected[_holder(full, "m1")] ^= {"m1", "m6"}
    assert await cluster.layout(models) == expected

    # Router 0 places m7, knowing of m6's use only through etcd: the least recently used copy left is m2.
    await cluster.infer("m7", router=0)
    expected[_holder(full, "m2")] ^= {"m2", "m7"}
    assert await cluster.layout(models) == expected

    for router in cluster.routers:

        async def agrees(router: Router = router) -> bool:
            listed = await router.instances()
            return {i: set(entry.models) for i, entry in listed.items()} == expected

        await wait_until(agrees, 5.0, f"{router.name}'s ListInstances shows {expected}")
    loads = {model: sum(cluster.load_requests(model).values()) for model in models}
    assert loads == dict.fromkeys(models, 1)


async def test_an_extra_copy_added_to_follow_load_is_not_retired_while_the_model_is_in_use(
    make_cluster: ClusterFactory,
) -> None:
    # Router 0 serves every request, and adds a copy as soon as one is in flight; it writes recency back every
    # 10 s, so not before this test ends (the default is 5 s: the same gap, shorter). Router 1 serves nothing; its
    # maintenance (retiring copies of models idle for idle_copy_seconds, 300 s by default) runs every 0.2 s.
    cluster = await make_cluster(
        runtimes=2,
        routers=2,
        env={"MESH_SCALE_UP_IN_FLIGHT": "0"},
        router_env=[{"MESH_LAST_USED_FLUSH_SECONDS": "10"}],
    )
    await cluster.register_echo("hot")
    await cluster.wait_registered(["hot"])

    async def two_copies() -> bool:
        await cluster.infer("hot", router=0)
        return len(await cluster.holders("hot")) == 2

    await wait_until(two_copies, 5.0, "hot has a copy on each runtime")
    in_use = time.monotonic()
    while time.monotonic() - in_use < 1.0:  # five of router 1's maintenance rounds
        await cluster.infer("hot", router=0)
        await asyncio.sleep(0.02)

    # The model was used all along: no router may call it idle, so each copy was loaded once and is still there.
    retired = [line for line in cluster.routers[1].log().splitlines() if "unloading idle extra copy" in line]
    assert retired == []
    assert cluster.load_requests("hot") == {"rt-0": 1, "rt-1": 1}
    assert await cluster.holders("hot") == {"rt-0", "rt-1"}
