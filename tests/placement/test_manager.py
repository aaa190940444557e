"""Placement through a real router and real runtimes: load on miss, single flight, LRU, failures, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from harness.router import LOAD, UNLOAD, Mesh

from mesh.placement.records import ModelRecord
from mesh.registry import ModelState

BALLAST = 10_000  # bytes each test model holds; config and bookkeeping add well under 1,000 more


async def use(mesh: Mesh, *model_ids: str) -> None:
    """Request each model in turn, a few ms apart so their last-used times differ."""
    for model_id in model_ids:
        reply = await mesh.infer(model_id)
        assert reply.outputs[0].name == "x"
        await asyncio.sleep(0.005)


async def loaded(mesh: Mesh, *model_ids: str) -> dict[str, bool]:
    """What the runtimes themselves say is loaded (not the router's view)."""
    result = {}
    for model_id in model_ids:
        result[model_id] = any([await r.is_loaded(model_id) for r in mesh.runtimes])
    return result


async def test_fifty_concurrent_first_requests_make_one_load(make_mesh):
    mesh = await make_mesh([10_000_000])
    await mesh.register_echo("popular")
    replies = await asyncio.gather(*(mesh.infer("popular", value=i) for i in range(50)))
    assert [r.raw_output_contents[0] for r in replies] == [i.to_bytes(4, "little") for i in range(50)]
    assert mesh.runtimes[0].calls[LOAD] == 1


async def test_least_recently_used_model_is_evicted_when_an_instance_is_full(make_mesh):
    # Room for three ballast models, not four.
    mesh = await make_mesh([int(BALLAST * 3.5)])
    for i in range(5):
        await mesh.register_echo(f"m{i}", BALLAST)
    await use(mesh, "m0", "m1", "m2", "m0", "m3")
    assert await loaded(mesh, "m0", "m1", "m2", "m3") == {"m0": True, "m1": False, "m2": True, "m3": True}
    await use(mesh, "m4")
    assert await loaded(mesh, "m0", "m1", "m2", "m3", "m4") == {
        "m0": True, "m1": False, "m2": False, "m3": True, "m4": True,
    }  # fmt: skip
    assert mesh.runtimes[0].calls[UNLOAD] == 2
    assert mesh.router.registry.status("m1").state is ModelState.NOT_LOADED
    # An evicted model comes back on its next request.
    await use(mesh, "m1")
    assert (await loaded(mesh, "m1"))["m1"]


async def test_eviction_takes_the_cluster_wide_oldest_copy(make_mesh):
    mesh = await make_mesh([int(BALLAST * 2.5), int(BALLAST * 2.5)])
    for i in range(5):
        await mesh.register_echo(f"m{i}", BALLAST)
    await use(mesh, "m0", "m1", "m2", "m3")  # fills both instances, two models each
    await use(mesh, "m0")  # now m1 is the least recently used anywhere
    await use(mesh, "m4")
    assert await loaded(mesh, "m0", "m1", "m2", "m3", "m4") == {
        "m0": True, "m1": False, "m2": True, "m3": True, "m4": True,
    }  # fmt: skip


async def test_a_failed_load_is_recorded_and_not_retried_in_a_tight_loop(make_mesh, tmp_path: Path):
    mesh = await make_mesh([10_000_000], load_failure_backoff_seconds=1.0)
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"this is not a pickle")
    await mesh.router.registry.register(ModelRecord("broken", "sklearn", str(broken)))
    with pytest.raises(grpc.aio.AioRpcError) as first:
        await mesh.infer("broken")
    assert first.value.code() is grpc.StatusCode.INTERNAL
    assert "broken" in first.value.details() and "rt-a" in first.value.details()
    assert "failed to load sklearn model" in first.value.details()
    status = mesh.router.registry.status("broken")
    assert status.state is ModelState.LOADING_FAILED
    assert status.errors and "failed to load sklearn model" in status.errors[0]
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await mesh.infer("broken")
        assert "not retried" in again.value.details()
    assert mesh.runtimes[0].calls[LOAD] == 1
    await asyncio.sleep(1.1)
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.infer("broken")
    assert mesh.runtimes[0].calls[LOAD] == 2  # retried once the backoff passed
    # The router keeps serving other models.
    await mesh.register_echo("fine")
    await use(mesh, "fine")


async def test_unregister_unloads_every_copy(make_mesh):
    mesh = await make_mesh([10_000_000])
    await mesh.register_echo("gone-soon")
    await use(mesh, "gone-soon")
    assert (await loaded(mesh, "gone-soon"))["gone-soon"]
    await mesh.router.registry.unregister("gone-soon")
    assert not (await loaded(mesh, "gone-soon"))["gone-soon"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.infer("gone-soon")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND and "gone-soon" in err.value.details()


async def test_a_model_bigger_than_every_instance_is_refused_with_the_reason(make_mesh):
    mesh = await make_mesh([5_000])
    await mesh.register_echo("huge", 50_000)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.infer("huge")
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "huge" in err.value.details() and "5000" in err.value.details()
    assert mesh.runtimes[0].calls[LOAD] == 0


async def test_a_dead_runtime_is_routed_around(make_mesh):
    mesh = await make_mesh([10_000_000, 10_000_000])
    await mesh.register_echo("survivor")
    await use(mesh, "survivor")
    holder, other = mesh.runtimes if await mesh.runtimes[0].is_loaded("survivor") else mesh.runtimes[::-1]
    await holder.server.stop(0)
    await use(mesh, "survivor")  # served: the lost copy is dropped and the model loads on the other instance
    assert await other.is_loaded("survivor")


async def test_with_every_runtime_gone_requests_fail_unavailable(make_mesh):
    mesh = await make_mesh([10_000_000])
    await mesh.register_echo("orphan")
    await use(mesh, "orphan")
    await mesh.runtimes[0].server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.infer("orphan")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "orphan" in err.value.details()


async def test_registrations_survive_a_router_restart(make_mesh):
    first = await make_mesh([10_000_000], durable=True)
    await first.register_echo("durable")
    await use(first, "durable")
    await first.router.stop(grace=0)
    second = await make_mesh([10_000_000], durable=True)
    assert [m.model_id for m in second.router.registry.models()] == ["durable"]
    await use(second, "durable")
    assert second.runtimes[0].calls[LOAD] == 1


async def test_vmodel_routes_to_its_active_model_and_switches_after_the_target_loads(make_mesh):
    mesh = await make_mesh([10_000_000])
    await mesh.register_echo("v1")
    await mesh.register_echo("v2")
    registry = mesh.router.registry
    await registry.set_vmodel("alias", "v1", sync=True)
    for metadata in ((("mm-vmodel-id", "alias"),), ()):
        reply = await mesh.infer("alias", metadata=metadata)
        assert reply.model_name == "v1"  # the runtime saw the concrete id the router injected
    status = await registry.set_vmodel("alias", "v2", sync=True)
    assert (status.active_model_id, status.target_model_id) == ("v2", "v2")
    assert (await mesh.infer("alias")).model_name == "v2"
    with pytest.raises(Exception, match="still used by vmodel"):
        await registry.unregister("v2")


async def test_both_routing_headers_at_once_is_invalid(make_mesh):
    mesh = await make_mesh([10_000_000])
    await mesh.register_echo("m")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.infer("m", metadata=(("mm-model-id", "m"), ("mm-vmodel-id", "m")))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_routers_sharing_a_store_load_a_model_once(make_mesh):
    # Scale-up thresholds out of reach: this test is about the first load only.
    first = await make_mesh([10_000_000, 10_000_000], scale_up_in_flight=10_000)
    second = await first.join()  # a second router over the same store, seeing the same runtimes
    await first.register_echo("shared")  # routable through the second router at once, watch event or not
    replies = await asyncio.gather(*(mesh.infer("shared", value=i) for i in range(40) for mesh in (first, second)))
    assert len(replies) == 80
    assert first.loads() == 1
    assert second.router.registry.status("shared").state is ModelState.LOADED


async def until(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


async def test_a_copy_another_router_is_serving_is_not_evicted(make_mesh):
    # Room for two ballast models; the least recently used one is in use on the other router.
    first = await make_mesh([int(BALLAST * 2.5)])
    second = await first.join()
    for model_id in ("a", "b", "c"):
        await first.register_echo(model_id, BALLAST)
    await use(first, "a", "b")
    await until(lambda: second.router.manager.copies.loaded_holder("a") is not None, "the second router sees a")
    with second.router.manager.loaded_copy("a"):  # a request on a, still running on the second router
        await second.router.manager.demand.publish()
        await until(lambda: "a" in first.router.manager.demand.others(), "its demand reaches the first router")
        await use(first, "c")
    assert await loaded(first, "a", "b", "c") == {"a": True, "b": False, "c": True}


async def copies_on(mesh: Mesh, model_id: str) -> int:
    return sum([await r.is_loaded(model_id) for r in mesh.runtimes])


async def test_copies_follow_load_and_idle_extras_are_retired(make_mesh):
    mesh = await make_mesh(
        [10_000_000, 10_000_000], scale_up_in_flight=2, idle_copy_seconds=0.3, last_used_flush_seconds=0.1
    )
    await mesh.register_echo("hot")
    await use(mesh, "hot")
    assert await copies_on(mesh, "hot") == 1
    for _ in range(20):  # bursts of concurrent requests saturate the one copy
        await asyncio.gather(*(mesh.infer("hot", value=i) for i in range(24)))
        if await copies_on(mesh, "hot") == 2:
            break
    assert await copies_on(mesh, "hot") == 2
    assert mesh.router.registry.status("hot").state is ModelState.LOADED
    assert len(mesh.router.registry.status("hot").copies) == 2
    for _ in range(40):  # idle now: the extra copy goes, one stays
        await asyncio.sleep(0.1)
        if await copies_on(mesh, "hot") == 1:
            break
    assert await copies_on(mesh, "hot") == 1
    await use(mesh, "hot")


async def test_an_extra_copy_never_evicts_another_model(make_mesh):
    mesh = await make_mesh([int(BALLAST * 1.5), int(BALLAST * 1.5)], scale_up_in_flight=1)
    await mesh.register_echo("busy", BALLAST)
    await mesh.register_echo("other", BALLAST)
    await use(mesh, "busy", "other")  # one on each instance, each instance full
    for _ in range(5):
        await asyncio.gather(*(mesh.infer("busy", value=i) for i in range(16)))
    assert await loaded(mesh, "busy", "other") == {"busy": True, "other": True}
    assert await copies_on(mesh, "busy") == 1


async def test_admin_api_lists_instances_with_their_copies(make_mesh):
    from mesh.gen import mesh_admin_pb2 as admin
    from mesh.gen import mesh_admin_pb2_grpc as admin_grpc

    mesh = await make_mesh([100_000, 200_000])
    await mesh.register_echo("listed", BALLAST)
    await use(mesh, "listed")
    listing = await admin_grpc.MeshAdminStub(mesh.channel).ListInstances(admin.ListInstancesRequest())
    by_id = {i.instanceId: i for i in listing.instances}
    assert set(by_id) == {"rt-a", "rt-b"}
    holder = by_id["rt-b"]  # the instance with the most free space took the first model
    assert list(holder.models) == ["listed"] and holder.usedInBytes >= BALLAST and holder.reachable
    assert (holder.capacityInBytes, by_id["rt-a"].usedInBytes, list(by_id["rt-a"].models)) == (200_000, 0, [])
    assert holder.endpoint == mesh.runtimes[1].endpoint and holder.startedTime > 0


async def test_gdsf_keeps_a_frequently_used_model_that_lru_would_evict(make_mesh):
    mesh = await make_mesh([int(BALLAST * 3.5)], eviction_policy="gdsf")
    for i in range(4):
        await mesh.register_echo(f"m{i}", BALLAST)
    await use(mesh, "m0", "m0", "m0", "m0", "m1", "m2", "m3")
    assert await loaded(mesh, "m0", "m1", "m2", "m3") == {"m0": True, "m1": False, "m2": True, "m3": True}


async def test_an_unknown_eviction_policy_is_refused_at_start(make_mesh):
    with pytest.raises(ValueError, match="fifo"):
        await make_mesh([BALLAST], eviction_policy="fifo")
