"""Making room (placement/evictor.py and the policy it applies): which copies go, and which never do."""

from __future__ import annotations

import asyncio

import pytest
from harness.fakes import MB, FakeRuntime
from test_loading import eventually

from mesh.errors import Unavailable
from mesh.placement import loader


async def use_in_turn(router, *model_ids: str) -> None:  # type: ignore[no-untyped-def]
    """Requests one after another, a few ms apart, so their last-use times differ."""
    for model_id in model_ids:
        await router.use(model_id)
        await asyncio.sleep(0.003)


async def test_the_least_recently_used_copy_makes_room(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "c")
    await use_in_turn(router, "a", "b", "a")
    await router.use("c")
    assert runtime.unloads == ["b"]
    assert set(runtime.loaded) == {"a", "c"}
    assert set(router.manager.view.placements["b"].record.copies) == set()


async def test_the_lru_is_cluster_wide_not_per_instance(make_cluster):
    runtimes = FakeRuntime("rt-a", capacity_bytes=MB), FakeRuntime("rt-b", capacity_bytes=MB)
    router = await make_cluster(*runtimes).router()
    await router.register("a", "b", "c")
    await use_in_turn(router, "a", "b")
    held = {model: r.instance_id for r in runtimes for model in r.loaded}
    await use_in_turn(router, "a")  # now b is the oldest in the cluster
    assert await router.use("c") == held["b"]
    assert router.manager.copies.loaded_holder("a") == held["a"]


async def test_a_copy_serving_a_request_is_never_the_victim(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "c")
    await use_in_turn(router, "a", "b")
    with router.manager.loaded_copy("a"):  # a request on the oldest copy, still running
        await router.use("c")
    assert runtime.unloads == ["b"]


async def test_when_every_copy_is_busy_the_load_says_retry(make_cluster, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(loader, "BUSY_WAIT_S", 0.1)
    runtime = FakeRuntime("rt-a", capacity_bytes=MB)
    router = await make_cluster(runtime).router()
    await router.register("a", "b")
    await router.use("a")
    with router.manager.loaded_copy("a"), pytest.raises(Unavailable, match="busy loading or serving"):
        await router.use("b")
    assert runtime.unloads == []


async def test_a_copy_measured_larger_than_predicted_trims_the_instance(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=4 * MB, sizes={"c": 3 * MB})
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "c")
    await use_in_turn(router, "a", "b")
    await router.use("c")  # predicted 1 MB, fits beside a and b; measured 3 MB, which overflows
    assert runtime.unloads == ["a"]
    assert set(runtime.loaded) == {"b", "c"}


async def test_gdsf_keeps_a_small_popular_model_that_lru_would_evict(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=3 * MB, sizes={"big": 2 * MB})
    router = await make_cluster(runtime, eviction_policy="gdsf").router()
    await router.register("small", "big", "new")
    for _ in range(20):
        await router.use("small")
    await use_in_turn(router, "big")  # used last, but once, and twice the size
    await router.use("new")
    assert runtime.unloads == ["big"]


async def test_a_miss_waiting_for_a_load_slot_evicts_nothing_until_its_load_can_start(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB, loading_slots=1, gate=asyncio.Event())
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "c", "d")
    runtime.gate.set()
    await use_in_turn(router, "a", "b")
    runtime.gate.clear()
    loading_c = asyncio.create_task(router.use("c"))
    await eventually(lambda: runtime.loads[-1:] == ["c"], "c is loading")
    waiting_d = asyncio.create_task(router.use("d"))
    await asyncio.sleep(0.05)
    # d waits for the one load slot; deciding now would already have evicted b, which keeps serving meanwhile.
    assert runtime.unloads == ["a"] and "d" not in runtime.loads
    lease = router.manager.loaded_copy("b")
    assert lease is not None
    lease.release(lease.model_id, lease.instance_id)
    runtime.gate.set()
    assert (await loading_c, await waiting_d) == ("rt-a", "rt-a")
    assert len(runtime.unloads) == 2


async def test_a_copy_another_router_is_using_is_not_evicted(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    cluster = make_cluster(runtime)
    evicting, using = await cluster.router(), await cluster.router()
    await evicting.register("a", "b", "c")
    await use_in_turn(evicting, "a", "b")  # a is the least recently used
    await eventually(lambda: using.manager.copies.loaded_holder("a") == "rt-a", "the other router sees a's copy")
    with using.manager.loaded_copy("a"):  # a request on a, in flight on the other router
        await using.manager.demand.publish()
        await eventually(lambda: "a" in evicting.manager.demand.others(), "its demand reaches this router")
        await evicting.use("c")
    assert runtime.unloads == ["b"]
    await using.manager.demand.publish()
    await eventually(lambda: not evicting.manager.demand.others(), "a demand that ended is withdrawn")
