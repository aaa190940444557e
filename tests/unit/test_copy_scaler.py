"""Copies follow load (placement/scaling.py): a saturated model gets another copy, into free space only, and idle
extras go again, the oldest copy staying."""

from __future__ import annotations

import asyncio
import contextlib

from harness.fakes import MB, FakeRuntime

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
