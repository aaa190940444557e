"""A draining instance (told to stop) hands its recently used models to the others before it leaves: the routers'
side (mesh/placement/scaling.py, CopyScaler.hand_off) and the runtime's (adapters/common/handoff.py), over fake
runtimes and the real embedded store."""

from __future__ import annotations

import dataclasses

from harness.fakes import FakeRuntime, eventually

from adapters.common.handoff import models_to_hand_off
from mesh.placement.records import now_ms


async def test_a_draining_instance_hands_its_recently_used_models_to_the_others(make_cluster) -> None:  # type: ignore[no-untyped-def]
    stopping, staying = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    window_s = 1.0
    cluster = make_cluster(stopping, working_set_seconds=window_s)
    router = await cluster.router()
    manager = router.manager
    await router.register("hot", "warm", "cold", "new")
    await router.use("cold")
    cold_used_ms = now_ms()
    await eventually(lambda: now_ms() > cold_used_ms + window_s * 1000, "time never passed")
    await router.use("hot")
    await router.use("warm")
    cluster.runtimes["rt-b"] = staying  # a second runtime joins: every copy is on the first
    await manager.publish_instance(staying.record())
    await manager.usage.flush()  # the runtime reads last uses from the store

    me = dataclasses.replace(stopping.record(), draining=True)
    await manager.publish_instance(me)
    await eventually(
        lambda: all(any(i == "rt-b" for i, _ in manager.copies.loaded_copies(m)) for m in ("hot", "warm")),
        "the recently used models were never loaded on the staying instance",
    )
    assert [i for i, _ in manager.copies.loaded_copies("cold")] == ["rt-a"]  # unused lately: left to go with it
    assert await models_to_hand_off(cluster.kv, manager.keys, me, recent_s=window_s) == []
    # Meanwhile the draining instance serves what it holds, and takes nothing new.
    assert await router.use("cold") == "rt-a"
    assert await router.use("new") == "rt-b"


async def test_the_runtime_waits_for_its_recent_models_only_where_another_instance_can_take_them(make_cluster) -> None:  # type: ignore[no-untyped-def]
    stopping = FakeRuntime("rt-a")
    cluster = make_cluster(stopping, FakeRuntime("rt-text"))
    router = await cluster.router()
    manager = router.manager
    await manager.publish_instance(dataclasses.replace(cluster.runtimes["rt-text"].record(("text",))))
    await router.register("echo-model")
    await router.use("echo-model")
    await manager.usage.flush()
    me = stopping.record()
    # Only rt-a loads echo models: nothing can take it, so the runtime need not wait for it.
    assert await models_to_hand_off(cluster.kv, manager.keys, me, recent_s=60) == []
    await manager.publish_instance(dataclasses.replace(cluster.runtimes["rt-text"].record(("text", "echo"))))
    assert await models_to_hand_off(cluster.kv, manager.keys, me, recent_s=60) == ["echo-model"]
