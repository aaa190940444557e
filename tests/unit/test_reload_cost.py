"""Eviction by reload cost (the "cost" policy: GDSF with each model's measured load time as its cost): a copy that
takes long to load again is kept over one that loads in a moment, though used less recently."""

from __future__ import annotations

from harness.fakes import MB, FakeRuntime

from mesh.placement import policy
from mesh.placement.records import InstanceRecord


def copy(model_id: str, last_used_ms: int, load_ms: int, uses: int = 1) -> policy.ResidentCopy:
    return policy.ResidentCopy(model_id, MB, last_used_ms, True, uses=uses, load_ms=load_ms)


def test_the_cheapest_to_reload_goes_first_not_the_least_recently_used() -> None:
    view = policy.InstanceView(
        InstanceRecord("rt", "x", 2 * MB, ("echo",)), [copy("slow", 1, load_ms=20_000), copy("fast", 2, load_ms=20)]
    )
    assert [v.model_id for v in policy.victims_for(view, MB, "lru") or ()] == ["slow"]
    assert [v.model_id for v in policy.victims_for(view, MB, "cost") or ()] == ["fast"]
    # Cost weighs use and size too: a slow model nobody uses is still worth less than a fast one used a lot.
    busy_fast = policy.InstanceView(view.record, [copy("slow", 1, load_ms=1000), copy("fast", 2, load_ms=20, uses=100)])
    assert [v.model_id for v in policy.victims_for(busy_fast, MB, "cost") or ()] == ["slow"]
    assert policy.gdsf_clock(0.0, [copy("fast", 2, load_ms=20)], "cost") == 20 / MB


async def test_the_router_measures_load_times_and_evicts_by_them(make_cluster) -> None:  # type: ignore[no-untyped-def]
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB, load_seconds={"slow": 0.05})
    router = await make_cluster(runtime, eviction_policy="cost").router()
    await router.register("slow", "fast", "new")
    await router.use("slow")
    await router.use("fast")  # the most recently used: LRU would evict slow for new
    assert router.manager.view.placements["slow"].record.load_ms >= 50
    await router.use("new")
    assert runtime.unloads == ["fast"]
