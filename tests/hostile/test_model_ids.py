"""Model ids, vmodel ids, types and paths in registrations: what no registration may hold is INVALID_ARGUMENT,
naming the problem, through the gRPC management API (what `mesh register` calls) and the registry library alike.

The rules (mesh/registry/ids.py): ids and types are 1 to MAX_ID_BYTES (512) bytes of UTF-8, paths at most
MAX_PATH_BYTES (4096); none may hold a control character (Unicode Cc: U+0000-U+001F, U+007F-U+009F).
"""

from __future__ import annotations

import unicodedata

import grpc
import pytest
from harness.hostile import MODEL, HostileMesh
from hostile_strategies import bounded
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.placement.records import ModelRecord
from mesh.registry import MAX_ID_BYTES, MAX_PATH_BYTES

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD_IDS = [
    ("", "must not be empty"),
    ("a\x00b", "control character U+0000 at position 1"),
    ("line\nbreak", "control character U+000A"),
    ("esc\x1b[31m", "control character U+001B"),
    ("del\x7f", "control character U+007F"),
    ("nel\x85", "control character U+0085"),
    ("x" * (MAX_ID_BYTES + 1), f"{MAX_ID_BYTES + 1} bytes long; the limit is {MAX_ID_BYTES} bytes"),
    ("é" * (MAX_ID_BYTES // 2 + 1), f"{MAX_ID_BYTES + 2} bytes long"),
]
GOOD_IDS = ["x" * MAX_ID_BYTES, "模型-ü", "../not-a-path", "a/b c", "predictor__isvc-0123456789"]


def info(mesh: HostileMesh, path: str | None = None, model_type: str = "echo") -> mm.ModelInfo:
    return mm.ModelInfo(type=model_type, path=str(mesh.tmp / "echo.json") if path is None else path)


async def grpc_error(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize(("model_id", "message"), BAD_IDS)
async def test_register_model_refuses_bad_ids_naming_the_problem(
    mesh: HostileMesh, model_id: str, message: str
) -> None:
    code, details = await grpc_error(
        mesh.management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info(mesh)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelId" in details and message in details
    with pytest.raises(InvalidArgument, match="modelId"):
        await mesh.router.registry.register(ModelRecord(model_id, "echo", str(mesh.tmp / "echo.json")))
    assert model_id not in {m.model_id for m in mesh.router.registry.models()}


@pytest.mark.parametrize("model_id", GOOD_IDS)
async def test_register_model_accepts_long_unicode_and_slashed_ids(mesh: HostileMesh, model_id: str) -> None:
    await mesh.management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info(mesh)))
    try:
        listed = await admin_grpc.MeshAdminStub(mesh.channel).ListModels(admin.ListModelsRequest(), timeout=10)
        assert model_id in {entry.modelId for entry in listed.models}
        # Servable under that exact id, by the request body's name and by the routing header.
        request = pb.ModelInferRequest(
            model_name=model_id,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])],
            raw_input_contents=[(7).to_bytes(4, "little")],
        )
        reply = await pb_grpc.GRPCInferenceServiceStub(mesh.channel).ModelInfer(request, timeout=30)
        assert reply.model_name == model_id and reply.raw_output_contents == [(7).to_bytes(4, "little")]
        by_header = pb.ModelInferRequest(inputs=request.inputs, raw_input_contents=request.raw_input_contents)
        header = "mm-model-id-bin" if not model_id.isascii() else "mm-model-id"
        value: str | bytes = model_id.encode() if header.endswith("-bin") else model_id
        reply = await pb_grpc.GRPCInferenceServiceStub(mesh.channel).ModelInfer(
            by_header, metadata=[(header, value)], timeout=30
        )
        assert reply.raw_output_contents == [(7).to_bytes(4, "little")]
    finally:
        await mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId=model_id))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/models/a\x00b.json", "control character U+0000 at position 9"),
        ("/models/a\rb", "control character U+000D"),
        ("/" + "p" * MAX_PATH_BYTES, f"{MAX_PATH_BYTES + 1} bytes long; the limit is {MAX_PATH_BYTES} bytes"),
    ],
)
async def test_register_model_refuses_paths_with_control_characters_or_too_long(
    mesh: HostileMesh, path: str, message: str
) -> None:
    request = mm.RegisterModelRequest(modelId="pathological", modelInfo=info(mesh, path))
    code, details = await grpc_error(mesh.management.registerModel(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo.path" in details and message in details


async def test_register_model_refuses_a_type_with_a_control_character(mesh: HostileMesh) -> None:
    request = mm.RegisterModelRequest(modelId="typed", modelInfo=info(mesh, model_type="echo\n"))
    code, details = await grpc_error(mesh.management.registerModel(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "modelInfo.type" in details and "U+000A" in details


@pytest.mark.parametrize(("bad_id", "message"), BAD_IDS[1:])
async def test_set_vmodel_refuses_bad_vmodel_and_target_ids(mesh: HostileMesh, bad_id: str, message: str) -> None:
    for request, what in [
        (mm.SetVModelRequest(vModelId=bad_id, targetModelId=MODEL), "vModelId"),
        (mm.SetVModelRequest(vModelId="v", targetModelId=bad_id, modelInfo=info(mesh)), "targetModelId"),
    ]:
        code, details = await grpc_error(mesh.management.setVModel(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and what in details and message in details
    assert mesh.router.registry.vmodels() == []


async def test_set_vmodel_refuses_a_target_path_with_a_nul(mesh: HostileMesh) -> None:
    request = mm.SetVModelRequest(vModelId="v", targetModelId="new-target", modelInfo=info(mesh, "/m\x00"))
    code, details = await grpc_error(mesh.management.setVModel(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "U+0000" in details


async def test_ensure_loaded_of_a_huge_id_is_invalid_argument_not_a_trailer_too_large(mesh: HostileMesh) -> None:
    code, details = await grpc_error(mesh.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="x" * 900_000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200


def _valid(model_id: str) -> bool:
    return 0 < len(model_id.encode()) <= MAX_ID_BYTES and not any(unicodedata.category(c) == "Cc" for c in model_id)


@bounded(100)
@given(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
    | st.text(st.sampled_from("aé模\x00\x1f\x7f\x9f\u2028"), min_size=MAX_ID_BYTES // 3, max_size=MAX_ID_BYTES)
)
async def test_an_id_registers_exactly_when_it_is_valid(mesh: HostileMesh, model_id: str) -> None:
    registry = mesh.router.registry
    try:
        await registry.register(ModelRecord(model_id, "echo", str(mesh.tmp / "echo.json")))
    except InvalidArgument:
        assert not _valid(model_id)
        return
    assert _valid(model_id)
    if model_id != MODEL:
        await registry.unregister(model_id)
