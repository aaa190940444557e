"""The committed generated code is what the protos generate, and the protos stay wire-compatible with KServe."""

import importlib.util
import tempfile
from pathlib import Path

import tritonclient.grpc.service_pb2 as triton

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_runtime_pb2 as rt

ROOT = Path(__file__).resolve().parent.parent


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_the_protos():
    gen = _gen_module()
    with tempfile.TemporaryDirectory() as tmp:
        gen.generate(Path(tmp))
        assert gen.differences(ROOT / "mesh" / "gen", Path(tmp)) == []


def test_inference_messages_round_trip_through_tritons_own_definitions():
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    tensor = request.inputs.add(name="x", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"a", b"bc"])
    tensor.parameters["p"].double_param = 0.5
    request.parameters["q"].uint64_param = 7
    request.raw_input_contents.append(b"\x01\x02")
    request.outputs.add(name="y").parameters["binary_data"].bool_param = True
    theirs = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].contents.bytes_contents == [b"a", b"bc"]
    assert theirs.inputs[0].parameters["p"].double_param == 0.5
    assert theirs.parameters["q"].uint64_param == 7
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == request


def _fields(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_management_and_runtime_field_numbers_match_modelmesh():
    assert mm.DESCRIPTOR.package == rt.DESCRIPTOR.package == "mmesh"
    register = _fields(mm.RegisterModelRequest)
    assert {name: number for name, number in register.items() if number < 1000} == {
        "modelId": 1, "modelInfo": 2, "loadNow": 3, "sync": 4, "lastUsedTime": 5,
    }  # fmt: skip
    # mesh's own fields: numbers from 1000 on, named mesh*, so that ModelMesh's clients and servers skip them.
    extensions = {name: number for name, number in register.items() if number >= 1000}
    assert extensions == {
        "meshRequiredLabels": 1001,
        "meshPinned": 1002,
        "meshMinCopies": 1003,
        "meshPreferredLabels": 1004,
    }
    set_vmodel = _fields(mm.SetVModelRequest)
    assert {n: set_vmodel[n] for n in extensions} == extensions  # the same numbers where a vmodel registers
    assert all(n.startswith("mesh") for n, number in _fields(rt.RuntimeStatusResponse).items() if number >= 1000)
    assert _fields(mm.SetVModelRequest)["owner"] == 10
    assert _fields(mm.SetVModelRequest)["expectedTargetModelId"] == 9
    assert _fields(rt.RuntimeStatusResponse)["methodInfos"] == 8
    assert _fields(rt.RuntimeStatusResponse)["allowAnyMethod"] == 10
    assert [m.name for m in mm.DESCRIPTOR.services_by_name["ModelMesh"].methods] == [
        "registerModel", "unregisterModel", "getModelStatus", "ensureLoaded",
        "setVModel", "deleteVModel", "getVModelStatus",
    ]  # fmt: skip
    assert [m.name for m in rt.DESCRIPTOR.services_by_name["ModelRuntime"].methods] == [
        "loadModel", "unloadModel", "predictModelSize", "modelSize", "runtimeStatus",
    ]  # fmt: skip
