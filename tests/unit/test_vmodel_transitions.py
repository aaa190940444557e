"""vmodel moves (mesh/registry/transitions.py): the vmodel switches only once the target has as many loaded
copies as the active model had, and a move written in the store is finished by any router, the one that started
it gone or not."""

from __future__ import annotations

import contextlib

import grpc
from harness.fakes import FakeRuntime, eventually

from mesh.cli.vmodels import vmodel_text
from mesh.gen import model_mesh_pb2 as mm
from mesh.placement.records import Kind, VModelRecord
from mesh.registry.status import VModelState


async def test_a_vmodel_switches_only_once_its_target_has_the_active_models_copies(make_cluster) -> None:  # type: ignore[no-untyped-def]
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b"), FakeRuntime("rt-c")
    router = await make_cluster(*runtimes, scale_up_in_flight=1).router()
    await router.register("v1", "v2")
    await router.registry.set_vmodel("alias", "v1", load_now=True, sync=True)
    manager = router.manager
    with contextlib.ExitStack() as held:  # busy enough for a second copy
        for _ in range(2):
            held.enter_context(manager.loaded_copy("v1"))
        await eventually(lambda: len(manager.copies.loaded_copies("v1")) == 2, "v1 never had two copies")

    copies_at_switch: list[int] = []

    def on_change(kind: Kind, record_id: str) -> None:
        known = manager.view.vmodels.get("alias")
        if kind is Kind.VMODEL and known is not None and known.record.active_model_id == "v2":
            copies_at_switch.append(len(manager.copies.loaded_copies("v2")))

    manager.view.on_change.append(on_change)
    moving = await router.registry.set_vmodel("alias", "v2")
    assert moving.state is VModelState.TRANSITIONING and moving.copies_wanted == 2
    assert moving.active_model_id == "v1"
    await eventually(lambda: router.registry.vmodel_status("alias").state is VModelState.DEFINED, "never switched")
    assert copies_at_switch and copies_at_switch[0] == 2  # not one copy earlier
    done = router.registry.vmodel_status("alias")
    assert (done.active_model_id, done.copies_wanted) == ("v2", 0)


async def test_a_target_that_cannot_get_every_copy_moves_with_what_it_has(make_cluster) -> None:  # type: ignore[no-untyped-def]
    refusing = FakeRuntime("rt-b")
    refusing.failing["v2"] = grpc.StatusCode.INTERNAL
    router = await make_cluster(FakeRuntime("rt-a"), refusing).router()
    await router.register("v1", "v2")
    # A move that wants two copies of v2 (its active model had two); only one instance takes v2.
    await router.manager.store.update(
        Kind.VMODEL, "alias", lambda _: VModelRecord("alias", "v1", "v2", copies_wanted=2)
    )
    await router.registry.resume_moves()
    await eventually(lambda: router.registry.vmodel_status("alias").state is VModelState.DEFINED, "never switched")
    assert [i for i, _ in router.manager.copies.loaded_copies("v2")] == ["rt-a"]


async def test_a_move_another_router_started_is_finished_by_this_one(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(FakeRuntime("rt-a"))  # maintenance never runs here: only start() resumes
    starter = await cluster.router()
    await starter.register("v1", "v2")
    await starter.registry.set_vmodel("alias", "v1", load_now=True, sync=True)
    # The router that set the vmodel wrote the move and died before driving it (its tasks never ran).
    await starter.manager.store.update(
        Kind.VMODEL, "alias", lambda current: VModelRecord("alias", "v1", "v2", copies_wanted=1)
    )
    other = await cluster.router()
    other.registry.start()
    await eventually(lambda: other.registry.vmodel_status("alias").state is VModelState.DEFINED, "never resumed")
    assert other.registry.vmodel_status("alias").active_model_id == "v2"
    assert other.manager.copies.loaded_copies("v2")


def test_the_cli_shows_a_moves_progress_in_copies() -> None:
    loaded = mm.ModelStatusInfo.LOADED
    target = mm.ModelStatusInfo(
        status=loaded, modelCopyInfos=[mm.ModelStatusInfo.ModelCopyInfo(location="rt-a", copyStatus=loaded)]
    )
    info = mm.VModelStatusInfo(
        status=mm.VModelStatusInfo.TRANSITIONING,
        activeModelId="v1",
        targetModelId="v2",
        activeModelStatus=mm.ModelStatusInfo(status=loaded),
        targetModelStatus=target,
        meshTargetCopiesWanted=2,
    )
    assert (
        vmodel_text(info) == "TRANSITIONING -> v1 (LOADED), moving to v2 (LOADED [rt-a=LOADED]), 1 of 2 copies loaded"
    )
