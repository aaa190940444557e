"""Pinned models: their copies are never evicted to make room, registered so through the management API; registering
the model again without the pin makes it evictable again."""

from __future__ import annotations

import json

from harness.router import UNLOAD, Mesh
from placement.test_manager import BALLAST, loaded, use

from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc


async def register(mesh: Mesh, model_id: str, pinned: bool = False) -> mm.ModelStatusInfo:
    path = mesh.tmp / f"{model_id}.json"
    path.write_text(json.dumps({"ballast_bytes": BALLAST}))
    info = mm.ModelInfo(type="echo", path=str(path))
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=info, meshPinned=pinned)
    return await mm_grpc.ModelMeshStub(mesh.channel).registerModel(request, timeout=30)


async def test_a_pinned_model_is_not_evicted_though_least_recently_used(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([int(BALLAST * 2.5)])  # room for two
    await register(mesh, "pinned", pinned=True)
    for model_id in ("a", "b", "c"):
        await register(mesh, model_id)
    assert mesh.router.manager.view.models["pinned"].record.pinned
    await use(mesh, "pinned", "a", "b")  # pinned is the least recently used of the two loaded
    assert await loaded(mesh, "pinned", "a", "b") == {"pinned": True, "a": False, "b": True}
    await use(mesh, "c")
    assert await loaded(mesh, "pinned", "b", "c") == {"pinned": True, "b": False, "c": True}
    assert mesh.runtimes[0].calls[UNLOAD] == 2  # a, then b: never the pinned model


async def test_registering_again_without_the_pin_unpins(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([int(BALLAST * 1.5)])  # room for one
    await register(mesh, "m", pinned=True)
    await register(mesh, "other")
    await use(mesh, "m")
    status = await register(mesh, "m", pinned=False)  # the same spec: accepted, and the pin is gone
    assert status.status == mm.ModelStatusInfo.LOADED
    assert not mesh.router.manager.view.models["m"].record.pinned
    await use(mesh, "other")
    assert await loaded(mesh, "m", "other") == {"m": False, "other": True}
