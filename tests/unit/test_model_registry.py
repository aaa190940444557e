"""The model registry (mesh/registry): registration rules, name resolution, statuses and vmodel transitions."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from harness.fakes import FakeRuntime

from mesh.errors import AlreadyExists, Conflict, InvalidArgument, ModelNotFound
from mesh.placement.records import ModelRecord
from mesh.registry import ModelState, Naming, VModelState


async def test_registering_the_same_spec_twice_is_a_no_op_and_another_spec_is_refused(make_cluster):
    router = await make_cluster(FakeRuntime("rt-a")).router()
    first = ModelRecord("m", "echo", "/models/m")
    await router.registry.register(first)
    registered_ms = router.manager.view.models["m"].record.registered_ms
    await router.registry.register(first)
    assert router.manager.view.models["m"].record.registered_ms == registered_ms
    with pytest.raises(AlreadyExists, match="already registered with type 'echo' and path '/models/m'"):
        await router.registry.register(ModelRecord("m", "echo", "/models/other"))


@pytest.mark.parametrize(
    ("model_id", "why"),
    [("", "must not be empty"), ("a\nb", "control character U\\+000A"), ("x" * 513, "513 bytes long")],
)
async def test_ids_that_cannot_name_a_model_are_refused_with_the_reason(make_cluster, model_id: str, why: str):
    router = await make_cluster(FakeRuntime("rt-a")).router()
    with pytest.raises(InvalidArgument, match=why):
        await router.registry.register(ModelRecord(model_id, "echo", "/models/m"))
    assert router.registry.models() == []


async def test_a_name_resolves_by_where_it_came_from(make_cluster):
    router = await make_cluster(FakeRuntime("rt-a")).router()
    await router.register("m", "shadowed")
    await router.registry.set_vmodel("v", "m")
    await router.registry.set_vmodel("shadowed", "m")  # a vmodel named like a model wins in the body
    resolve = router.registry.resolve
    assert resolve("v") == resolve("v", Naming.VMODEL_HEADER) == "m"
    assert resolve("shadowed") == "m" and resolve("shadowed", Naming.MODEL_HEADER) == "shadowed"
    with pytest.raises(ModelNotFound):
        resolve("v", Naming.MODEL_HEADER)
    with pytest.raises(ModelNotFound):
        resolve("m", Naming.VMODEL_HEADER)


async def test_status_follows_the_copies(make_cluster):
    runtime = FakeRuntime("rt-a", failing={"broken": grpc.StatusCode.INTERNAL})
    router = await make_cluster(runtime).router()
    await router.register("m", "broken")
    assert router.registry.status("m").state is ModelState.NOT_LOADED
    assert router.registry.status("nope").state is ModelState.NOT_FOUND
    assert (await router.registry.ensure_loaded("m", sync=True)).state is ModelState.LOADED
    failed = await router.registry.ensure_loaded("broken", sync=True)
    assert failed.state is ModelState.LOADING_FAILED
    assert failed.errors == ["rt-a: INTERNAL: broken failed with INTERNAL"]


async def test_unregister_unloads_every_copy_and_a_model_in_use_by_a_vmodel_stays(make_cluster):
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    router = await make_cluster(*runtimes).router()
    await router.register("m", "target")
    await router.use("m")
    await router.manager.await_copy("m")
    await router.registry.set_vmodel("v", "target")
    with pytest.raises(Conflict, match="still used by vmodel"):
        await router.registry.unregister("target")
    await router.registry.unregister("m")
    assert [u for r in runtimes for u in r.unloads] == ["m"]
    assert "m" not in router.manager.view.models and "m" not in router.manager.view.placements


async def test_a_vmodel_switches_only_once_its_new_target_has_loaded(make_cluster):
    runtime = FakeRuntime("rt-a", gate=asyncio.Event())
    router = await make_cluster(runtime).router()
    await router.register("v1", "v2")
    runtime.gate.set()
    await router.registry.set_vmodel("v", "v1", sync=True)
    runtime.gate.clear()
    status = await router.registry.set_vmodel("v", "v2")
    assert status.state is VModelState.TRANSITIONING
    assert router.registry.resolve("v") == "v1"  # the old target serves while the new one loads
    runtime.gate.set()
    deadline = asyncio.get_running_loop().time() + 5
    while router.registry.vmodel_status("v").state is not VModelState.DEFINED:
        assert asyncio.get_running_loop().time() < deadline, "the transition did not finish"
        await asyncio.sleep(0.005)
    assert router.registry.resolve("v") == "v2"


async def test_a_vmodel_whose_target_fails_keeps_serving_the_old_one(make_cluster):
    runtime = FakeRuntime("rt-a", failing={"bad": grpc.StatusCode.INTERNAL})
    router = await make_cluster(runtime).router()
    await router.register("good", "bad")
    await router.registry.set_vmodel("v", "good", sync=True)
    status = await router.registry.set_vmodel("v", "bad", sync=True)
    assert status.state is VModelState.TRANSITION_FAILED
    assert router.registry.resolve("v") == "good"
