"""Loading on a miss (placement/loader.py, claims.py): single flight, one load across routers, stale claims, and
what each kind of runtime failure leads to."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from harness.fakes import MB, FakeRuntime, eventually

from mesh.errors import ModelLoadFailed, NoCapacity, Unavailable
from mesh.placement.records import CopyRecord, CopyState, Kind, PlacementRecord, now_ms


async def test_fifty_concurrent_misses_make_one_load(make_cluster):
    runtime = FakeRuntime("rt-a", gate=asyncio.Event())
    router = await make_cluster(runtime).router()
    await router.register("m")
    requests = [asyncio.create_task(router.use("m")) for _ in range(50)]
    await eventually(lambda: runtime.loads, "the load started")
    assert router.manager.waiting_for_load == 50
    runtime.gate.set()
    assert await asyncio.gather(*requests) == ["rt-a"] * 50
    assert runtime.loads == ["m"]
    assert router.manager.waiting_for_load == 0


async def test_two_routers_missing_at_once_load_once_and_both_serve_from_that_copy(make_cluster):
    runtimes = FakeRuntime("rt-a", gate=asyncio.Event()), FakeRuntime("rt-b", gate=asyncio.Event())
    cluster = make_cluster(*runtimes)
    first, second = await cluster.router(), await cluster.router()
    await first.register("m")
    await eventually(lambda: "m" in second.manager.view.models, "the second router sees the model")
    requests = [asyncio.create_task(router.use("m")) for router in (first, second) for _ in range(5)]
    await eventually(lambda: sum(len(r.loads) for r in runtimes) == 1, "one load started")
    for runtime in runtimes:
        runtime.gate.set()
    served = await asyncio.gather(*requests)
    assert len(set(served)) == 1
    assert sorted(load for r in runtimes for load in r.loads) == ["m"]


async def test_a_stale_claim_is_taken_over_and_the_dead_loaders_copy_unloaded(make_cluster):
    dead_loader, spare = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    router = await make_cluster(dead_loader, spare).router()
    await router.register("m")
    # A router that claimed the load on rt-a and died a minute ago: its claim was never renewed.
    stale = CopyRecord(CopyState.LOADING, now_ms() - 60_000, MB, dead_loader.started_ms)
    await router.manager.store.update(Kind.PLACEMENT, "m", lambda _: PlacementRecord({"rt-a": stale}))
    assert await router.use("m") == "rt-b"  # rt-a still counts the stale copy's bytes: rt-b has more room
    # Whatever the dead router's load may still leave on rt-a is unloaded.
    await eventually(lambda: dead_loader.unloads == ["m"], "the orphan copy is unloaded")
    assert set(router.manager.view.placements["m"].record.copies) == {"rt-b"}


async def test_a_live_claim_is_waited_for_not_duplicated(make_cluster):
    runtime = FakeRuntime("rt-a", gate=asyncio.Event())
    cluster = make_cluster(runtime, FakeRuntime("rt-b"))
    loading, waiting = await cluster.router(), await cluster.router()
    await loading.register("m")
    first = asyncio.create_task(loading.use("m"))
    await eventually(lambda: runtime.loads == ["m"], "the first router is loading")
    second = asyncio.create_task(waiting.use("m"))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the claimed load instead of loading on rt-b
    runtime.gate.set()
    assert await first == await second == "rt-a"
    assert cluster.runtimes["rt-b"].loads == []


async def test_a_failed_load_is_recorded_and_not_retried_within_the_backoff(make_cluster):
    runtime = FakeRuntime("rt-a", failing={"m": grpc.StatusCode.INTERNAL})
    router = await make_cluster(runtime).router()
    await router.register("m")
    with pytest.raises(ModelLoadFailed, match="INTERNAL"):
        await router.use("m")
    with pytest.raises(ModelLoadFailed, match="not retried for another"):
        await router.use("m")
    assert runtime.loads == ["m"]
    assert "rt-a" in router.manager.view.placements["m"].record.failures


async def test_a_runtime_that_does_not_answer_is_set_aside_and_the_next_one_loads(make_cluster):
    down, up = FakeRuntime("rt-a", capacity_bytes=20 * MB, alive=False), FakeRuntime("rt-b")
    router = await make_cluster(down, up).router()
    await router.register("m")
    assert await router.use("m") == "rt-b"
    assert down.loads == ["m"] and up.loads == ["m"]
    assert not router.manager.health.reachable("rt-a")
    # Not the model's fault: no failure recorded against it.
    assert router.manager.view.placements["m"].record.failures == {}


async def test_a_hung_load_is_abandoned_and_tried_on_another_instance(make_cluster):
    hung = FakeRuntime("rt-a", capacity_bytes=20 * MB, failing={"m": grpc.StatusCode.DEADLINE_EXCEEDED})
    router = await make_cluster(hung, FakeRuntime("rt-b")).router()
    await router.register("m")
    assert await router.use("m") == "rt-b"
    await eventually(lambda: hung.unloads == ["m"], "the hung load is undone (SPI: unload after a timeout)")


async def test_loads_failing_for_the_runtime_stop_after_three_instances(make_cluster):
    runtimes = [FakeRuntime(f"rt-{i}", failing={"m": grpc.StatusCode.DEADLINE_EXCEEDED}) for i in range(4)]
    router = await make_cluster(*runtimes).router()
    await router.register("m")
    with pytest.raises(ModelLoadFailed, match=r"\(3 attempts\)"):
        await router.use("m")
    assert sum(len(r.loads) for r in runtimes) == 3


async def test_out_of_memory_below_the_reported_capacity_caps_it_and_makes_room(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=10 * MB, memory_bytes=2 * MB)
    router = await make_cluster(runtime).router()
    await router.register("m1", "m2", "m3")
    for model_id in ("m1", "m2"):
        await router.use(model_id)
        await asyncio.sleep(0.002)  # distinct last-use times
    assert await router.use("m3") == "rt-a"
    assert runtime.unloads == ["m1"]  # the least recently used made room under the capped capacity
    assert set(runtime.loaded) == {"m2", "m3"}
    assert router.manager.health.weighed(runtime.record()).capacity_bytes == 2 * MB


async def test_a_model_bigger_than_every_instance_is_refused_with_the_reason(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=5 * MB, model_size=6 * MB)
    router = await make_cluster(runtime).router()
    await router.register("huge")
    with pytest.raises(NoCapacity, match="needs 6000000 bytes but the largest instance"):
        await router.use("huge")
    assert runtime.loads == []


async def test_with_every_runtime_unreachable_a_miss_is_unavailable(make_cluster):
    runtime = FakeRuntime("rt-a", alive=False)
    router = await make_cluster(runtime).router()
    await router.register("m")
    with pytest.raises(Unavailable, match="did not answer"):
        await router.use("m")
