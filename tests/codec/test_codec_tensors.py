"""protobuf ⇄ numpy: inputs_to_numpy, outputs_to_numpy and numpy_to_response as pure functions."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from codec_samples import OUTPUTS, assert_same, serialize_bytes

from mesh import codec
from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb

# --- protobuf → numpy ---------------------------------------------------------------------------------------------


def test_raw_input_contents_decode_to_writable_arrays() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="f", datatype="FP16", shape=[2, 2])
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.extend([np.arange(4, dtype="<f2").tobytes(), serialize_bytes([b"\x80", b"ok"])])
    arrays = codec.inputs_to_numpy(request)
    assert_same(arrays["f"], np.arange(4, dtype=np.float16).reshape(2, 2))
    assert arrays["s"].tolist() == [b"\x80", b"ok"]
    arrays["f"][0, 0] = 9  # model code may work in place
    assert arrays["f"][0, 0] == 9


def test_typed_contents_decode_with_the_narrow_integer_widths() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="u", datatype="UINT16", shape=[2]).contents.uint_contents.extend([1, 65535])
    request.inputs.add(name="i", datatype="INT8", shape=[1]).contents.int_contents.extend([-5])
    arrays = codec.inputs_to_numpy(request)
    assert_same(arrays["u"], np.array([1, 65535], np.uint16))
    assert_same(arrays["i"], np.array([-5], np.int8))


def _bad_pb(kind: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[2])
    if kind == "count":
        tensor.contents.int_contents.extend([1, 2, 3])
    elif kind == "wrong_field":
        tensor.contents.fp32_contents.extend([1, 2])
    elif kind == "range":
        tensor.datatype = "UINT8"
        tensor.contents.uint_contents.extend([1, 300])
    elif kind == "fp16_typed":
        tensor.datatype = "FP16"
        tensor.contents.fp32_contents.extend([1, 2])
    elif kind == "unknown":
        tensor.datatype = "FP99"
    elif kind == "raw_count":
        request.inputs.add(name="y", datatype="INT32", shape=[1])
        request.raw_input_contents.append(b"\x00" * 8)
    elif kind == "raw_size":
        request.raw_input_contents.append(b"\x00" * 7)
    elif kind == "mixed":
        tensor.contents.int_contents.extend([1, 2])
        request.raw_input_contents.append(b"\x00" * 8)
    elif kind == "negative_shape":
        del tensor.shape[:]
        tensor.shape.extend([-1, 2])
    elif kind == "duplicate":
        tensor.contents.int_contents.extend([1, 2])
        request.inputs.add(name="x", datatype="INT32", shape=[0])
    return request


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("count", "needs 2 elements in int_contents, got 3"),
        ("wrong_field", "needs 2 elements in int_contents, got 0"),
        ("range", "do not fit UINT8"),
        ("fp16_typed", "FP16 has no typed contents"),
        ("unknown", "unknown datatype 'FP99'"),
        ("raw_count", "1 raw contents for 2 inputs"),
        ("raw_size", "needs 8 bytes, got 7"),
        ("mixed", "has typed contents but the message uses raw contents"),
        ("negative_shape", "negative dimension"),
        ("duplicate", "appears more than once"),
    ],
)
def test_bad_protobuf_inputs_raise_invalid_argument(kind: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="'x'|inputs") as caught:
        codec.inputs_to_numpy(_bad_pb(kind))
    assert message in caught.value.message
    assert caught.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT


# --- numpy → protobuf ---------------------------------------------------------------------------------------------


def test_numpy_outputs_become_raw_contents_with_derived_datatypes() -> None:
    response = codec.numpy_to_response(
        "m", {name: array for name, (array, _, _) in OUTPUTS.items()}, model_version="2", request_id="r"
    )
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r")
    assert len(response.raw_output_contents) == len(OUTPUTS)
    for tensor in response.outputs:
        array, datatype, _ = OUTPUTS[tensor.name]
        assert (tensor.datatype, list(tensor.shape)) == (datatype, list(array.shape))
    assert response.raw_output_contents[list(OUTPUTS).index("i32")] == np.array([1, -2, 3, 4], "<i4").tobytes()
    assert response.raw_output_contents[list(OUTPUTS).index("obj")] == serialize_bytes([b"a", "b\u00e9".encode()])


def test_numpy_to_response_writes_little_endian_c_order_for_any_layout() -> None:
    big_endian = np.array([1, 2, 3], dtype=">i4")
    transposed = np.arange(6, dtype=np.int16).reshape(2, 3).T
    response = codec.numpy_to_response("m", {"be": big_endian, "t": transposed})
    assert response.raw_output_contents[0] == np.array([1, 2, 3], "<i4").tobytes()
    assert response.raw_output_contents[1] == np.array([[0, 3], [1, 4], [2, 5]], "<i2").tobytes()
    assert list(response.outputs[1].shape) == [3, 2]
    assert codec.outputs_to_numpy(response)["t"].tolist() == transposed.tolist()


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.array([1j]), "complex128 has no v2 datatype"), (np.array([b"a", None], dtype=object), "NoneType")],
)
def test_unencodable_model_outputs_are_internal_errors_not_the_callers_fault(array: np.ndarray, message: str) -> None:
    with pytest.raises(MeshError, match=message) as caught:
        codec.numpy_to_response("m", {"y": array})
    assert not isinstance(caught.value, InvalidArgument)
    assert caught.value.grpc_code == grpc.StatusCode.INTERNAL
