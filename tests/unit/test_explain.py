"""`mesh explain` (placement/explaining.py over the decision log, placement/decisions.py): why a copy is where it
is, what evicted a model, what a load would do now; the log kept in the store for every router."""

from __future__ import annotations

import grpc
import pytest
from harness.fakes import MB, FakeRuntime
from test_eviction import use_in_turn

from mesh.errors import ModelLoadFailed, ModelNotFound
from mesh.placement import decisions
from mesh.placement.explaining import as_text
from mesh.placement.records import now_ms


async def test_a_copy_says_why_it_is_there_and_an_evicted_model_what_evicted_it(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "c")
    await use_in_turn(router, "a", "b", "c")  # c evicts a, the least recently used

    c = await router.manager.explain("c")
    [copy] = c["copies"]
    assert (copy["instance"], copy["state"], copy["why"]) == ("rt-a", "LOADED", "evicted a to make room")
    assert copy["ranking"] == ["rt-a: would evict a"]

    a = await router.manager.explain("a")
    assert a["copies"] == []
    evicted, loaded = a["history"]  # newest first
    assert evicted["event"] == "evicted" and evicted["for_model"] == "c" and evicted["instance"] == "rt-a"
    assert evicted["idle_s"] is not None and evicted["idle_s"] < 60
    assert loaded["event"] == "loaded" and loaded["why"] == "fit in free memory"
    # a load of a now: rt-a, evicting b (the least recently used of b and c)
    assert a["next_load"]["instance"] == "rt-a" and a["next_load"]["evicts"] == ["b"]
    assert runtime.unloads == ["a"]  # the dry run changed nothing

    text = as_text(a, now_ms())
    assert "a load now would go to rt-a, evicting b" in text and "evicted (instance rt-a, for_model c" in text


async def test_the_next_load_names_every_instance_with_its_verdict(make_cluster):
    small = FakeRuntime("rt-small", capacity_bytes=MB // 2)
    typed = FakeRuntime("rt-full", capacity_bytes=MB)
    roomy = FakeRuntime("rt-roomy", capacity_bytes=4 * MB, failing={"x": grpc.StatusCode.INTERNAL})
    router = await make_cluster(small, typed, roomy, load_failure_backoff_seconds=60).router()
    await router.register("x", "held")
    await router.use("held")  # on rt-roomy (most free memory)
    with pytest.raises(ModelLoadFailed):
        await router.use("x")  # goes to rt-roomy (the most free memory) and fails there

    x = await router.manager.explain("x")
    verdicts = {row["instance"]: row["verdict"] for row in x["next_load"]["instances"]}
    assert verdicts["rt-small"].startswith("too small")
    assert verdicts["rt-full"] == "fits in free memory"
    assert verdicts["rt-roomy"].startswith("left out: failed to load it recently: INTERNAL: x failed with INTERNAL")
    assert x["next_load"]["instance"] == "rt-full"
    assert x["history"][0]["event"] == "load_failed" and "failed with INTERNAL" in x["history"][0]["error"]
    assert "rt-roomy" in x["failures"]

    held = await router.manager.explain("held")
    [copy] = held["copies"]  # chosen for the most free memory; the ranking of the moment is kept with the decision
    assert copy["ranking"][0] == "rt-roomy: fits in free memory"
    too_small = f"rt-small: too small: holds {MB // 2} bytes in all"
    assert set(copy["ranking"][1:]) == {"rt-full: fits in free memory", too_small}
    assert {row["instance"]: row["verdict"] for row in held["next_load"]["instances"]}["rt-roomy"] == (
        "left out: holds a copy"
    )


async def test_the_log_is_in_the_store_for_every_router_and_goes_with_the_model(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    cluster = make_cluster(runtime)
    first = await cluster.router()
    await first.register("a")
    await first.use("a")
    await first.manager.decisions.flush()
    second = await cluster.router()
    [loaded] = (await second.manager.explain("a"))["history"]
    assert loaded["event"] == "loaded" and loaded["router"] == first.manager.demand.router_id

    await second.registry.unregister("a")
    assert await cluster.kv.get(first.manager.decisions.key("a")) is None
    with pytest.raises(ModelNotFound):
        await second.manager.explain("a")


async def test_the_log_keeps_the_newest_events_of_each_model(make_cluster, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(decisions, "MAX_EVENTS", 3)
    router = await make_cluster(FakeRuntime("rt-a")).router()
    await router.register("a")
    log = router.manager.decisions
    for i in range(5):
        log.record("a", "unloaded", instance=f"rt-{i}")
        await log.flush()
    assert [e["instance"] for e in await log.history("a")] == ["rt-2", "rt-3", "rt-4"]
