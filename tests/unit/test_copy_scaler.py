"""Copies follow load (placement/scaling.py): a saturated model gets another copy, into free space only, and so
does one whose cluster-wide rate passes the threshold or that is in regular use; minimum copies are kept loaded,
evicting to make room; idle extras go again, the oldest copy (or the minimum) staying."""

from __future__ import annotations

import asyncio
import contextlib

from harness.fakes import MB, FakeRuntime

from mesh.placement.records import ModelRecord
from mesh.placement.scaling import UseStreaks

WAIT_S = 5.0


async def copies_of(router, model_id: str, count: int) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while len(router.manager.copies.loaded_copies(model_id)) != count:
        assert asyncio.get_running_loop().time() < deadline, f"{model_id} never had {count} copies"
        await asyncio.sleep(0.005)


async def test_a_saturated_model_gets_a_second_copy_on_another_instance(make_cluster):
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    router = await make_cluster(*runtimes, scale_up_in_flight=2).router()
    await router.register("hot")
    await router.use("hot")
    with contextlib.ExitStack() as held:
        for _ in range(3):  # the third request in flight on the only copy passes the threshold
            held.enter_context(router.manager.loaded_copy("hot"))
        await copies_of(router, "hot", 2)
    assert sorted(load for r in runtimes for load in r.loads) == ["hot", "hot"]


async def test_an_extra_copy_never_evicts_another_model(make_cluster):
    runtimes = FakeRuntime("rt-a", capacity_bytes=MB), FakeRuntime("rt-b", capacity_bytes=MB)
    router = await make_cluster(*runtimes, scale_up_in_flight=1).router()
    await router.register("hot", "other")
    await router.use("other")
    await router.use("hot")
    with router.manager.loaded_copy("hot"), router.manager.loaded_copy("hot"):
        await router.manager.maintain()
        await asyncio.sleep(0.05)  # give a wrongly started extra copy time to show
    assert [u for r in runtimes for u in r.unloads] == []
    assert len(router.manager.copies.loaded_copies("hot")) == 1


async def test_idle_extra_copies_are_retired_and_the_oldest_stays(make_cluster):
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    router = await make_cluster(*runtimes, scale_up_in_flight=1, idle_copy_seconds=0.05).router()
    await router.register("m")
    first = await router.use("m")
    with router.manager.loaded_copy("m"), router.manager.loaded_copy("m"):
        await copies_of(router, "m", 2)
    await asyncio.sleep(0.1)  # idle for longer than idle_copy_seconds, and so is the newer copy
    await router.manager.maintain()
    assert [i for i, _ in router.manager.copies.loaded_copies("m")] == [first]


async def test_the_rate_that_adds_a_copy_is_the_clusters(make_cluster):
    cluster = make_cluster(FakeRuntime("rt-a"), FakeRuntime("rt-b"), scale_up_rpm=2000)
    here, there = await cluster.router(), await cluster.router()
    await here.register("hot")
    await here.use("hot")
    here.manager.usage.take_request_counts()  # this router saw no request in its window: only the other did

    async def other_router_measured(rpm: float) -> None:
        there.manager.demand.set_rates({"hot": rpm})
        await there.manager.demand.publish()
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while here.manager.demand.cluster_rates().get("hot") != rpm:
            assert asyncio.get_running_loop().time() < deadline, "the other router's rate never reached this one"
            await asyncio.sleep(0.005)
        await here.manager.maintain()
        await here.manager.copies_settled()

    await other_router_measured(1500.0)  # below the threshold: one copy is enough
    assert len(here.manager.copies.loaded_copies("hot")) == 1
    await other_router_measured(2500.0)
    assert len(here.manager.copies.loaded_copies("hot")) == 2


async def test_a_model_in_regular_use_gets_a_second_copy(make_cluster):
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    # A rate over windows of milliseconds is high: only the in-use rule may add the copy here.
    router = await make_cluster(*runtimes, second_copy_after_seconds=0.05, scale_up_rpm=1e12).router()
    await router.register("regular", "once")
    await router.use("once")
    await router.manager.maintain()
    started = asyncio.get_running_loop().time()
    while len(router.manager.copies.loaded_copies("regular")) < 2:
        assert asyncio.get_running_loop().time() - started < WAIT_S, "no second copy for a model in regular use"
        await router.use("regular")
        await router.manager.maintain()
        await router.manager.copies_settled()
    # Not before it had been in use that long (less the wall clock's millisecond steps the streaks count in).
    assert asyncio.get_running_loop().time() - started >= 0.05 - 0.002
    assert len(router.manager.copies.loaded_copies("once")) == 1  # used once, long enough ago: no second copy


def test_a_use_streak_counts_from_its_first_use_and_a_long_pause_starts_it_over():
    minute = 60_000
    t0 = 1_000_000 * minute  # wall-clock milliseconds
    streaks = UseStreaks(max_gap_ms=40 * minute)
    assert streaks.seen_in_use("m", t0) == 0
    assert streaks.seen_in_use("m", t0 + 30 * minute) == 30 * minute  # a pause shorter than the longest allowed
    assert streaks.seen_in_use("m", t0 + 71 * minute) == 0  # 41 minutes without use: it starts over
    assert streaks.seen_in_use("m", t0 + 72 * minute) == minute
    # First seen by this router: the store's last use starts the streak when recent enough, not when too old.
    assert streaks.seen_in_use("seen-elsewhere", t0 + 100 * minute, last_used_ms=t0 + 90 * minute) == 10 * minute
    assert streaks.seen_in_use("long-ago", t0 + 100 * minute, last_used_ms=t0 + 10 * minute) == 0
    assert streaks.seen_in_use("never", t0 + 100 * minute, last_used_ms=0) == 0
    streaks.forget_paused(now=t0 + 200 * minute)  # every streak ended: the next use starts one
    assert streaks.seen_in_use("m", t0 + 200 * minute, last_used_ms=t0 + 190 * minute) == 10 * minute


async def test_min_copies_load_without_a_request_and_are_never_evicted(make_cluster):
    runtimes = FakeRuntime("rt-a", capacity_bytes=2 * MB), FakeRuntime("rt-b", capacity_bytes=2 * MB)
    router = await make_cluster(*runtimes, idle_copy_seconds=0.0).router()
    await router.registry.register(ModelRecord("kept", "echo", "/models/kept", min_copies=2))
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while len(router.manager.copies.loaded_copies("kept")) < 2:  # one copy per round: the first, then another
        assert asyncio.get_running_loop().time() < deadline, "min copies never loaded"
        await router.manager.maintain()
        await router.manager.copies_settled()
    await router.register("a", "b", "c", "d")
    for model_id in ("a", "b", "c", "d", "a"):  # each runtime has room for one more: every use evicts
        await router.use(model_id)
    await router.manager.maintain()  # idle for longer than idle_copy_seconds: extra copies retired, not these
    assert len(router.manager.copies.loaded_copies("kept")) == 2
    assert "kept" not in [u for r in runtimes for u in r.unloads]
    assert [load for r in runtimes for load in r.loads].count("kept") == 2


async def test_min_copies_may_evict_to_make_room(make_cluster):
    runtimes = FakeRuntime("rt-a", capacity_bytes=MB), FakeRuntime("rt-b", capacity_bytes=MB)
    router = await make_cluster(*runtimes).router()
    await router.register("a", "b")
    await router.use("a")
    await router.use("b")
    await router.registry.register(ModelRecord("kept", "echo", "/models/kept", min_copies=1))
    await router.manager.maintain()
    await router.manager.copies_settled()
    assert len(router.manager.copies.loaded_copies("kept")) == 1
    assert sorted(u for r in runtimes for u in r.unloads) == ["a"]  # the least recently used made room
