"""REST JSON and the binary-data extension ⇄ protobuf as pure functions, and tritonclient compatibility."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from codec_samples import OUTPUTS, assert_same, serialize_bytes

from mesh import codec
from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb

# One sample per datatype: JSON data (nested to the shape), the numpy array inputs_to_numpy must return.
SAMPLES: dict[str, tuple[list[int], list[Any], np.ndarray]] = {
    "BOOL": ([2, 2], [[True, False], [False, True]], np.array([[True, False], [False, True]])),
    "UINT8": ([2], [0, 255], np.array([0, 255], np.uint8)),
    "UINT16": ([2], [0, 65535], np.array([0, 65535], np.uint16)),
    "UINT32": ([2], [0, 2**32 - 1], np.array([0, 2**32 - 1], np.uint32)),
    "UINT64": ([2], [0, 2**64 - 1], np.array([0, 2**64 - 1], np.uint64)),
    "INT8": ([2], [-128, 127], np.array([-128, 127], np.int8)),
    "INT16": ([2], [-(2**15), 2**15 - 1], np.array([-(2**15), 2**15 - 1], np.int16)),
    "INT32": ([1, 3], [[-(2**31), 0, 2**31 - 1]], np.array([[-(2**31), 0, 2**31 - 1]], np.int32)),
    "INT64": ([2], [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], np.int64)),
    "FP16": ([3], [1.5, -2.25, 65504.0], np.array([1.5, -2.25, 65504.0], np.float16)),
    "FP32": ([2, 1], [[0.5], [-1e30]], np.array([[0.5], [-1e30]], np.float32)),
    "FP64": ([2], [1e300, -0.1], np.array([1e300, -0.1], np.float64)),
    # BF16 values exactly representable in bfloat16; inputs_to_numpy widens them to float32.
    "BF16": ([3], [1.0, -2.5, 3.0e38], np.array([1.0, -2.5, 3.0e38], ml_dtypes.bfloat16).astype(np.float32)),
    "BYTES": ([2, 2], [["a", "héllo"], ["", "z"]], np.array([[b"a", "héllo".encode()], [b"", b"z"]], object)),
}


def body_of(document: dict[str, Any], *parts: bytes) -> tuple[bytes, int | None]:
    """A REST body the way tritonclient builds it: JSON header, then the binary parts."""
    header = json.dumps(document).encode()
    return header + b"".join(parts), (len(header) if parts else None)


def decode(document: dict[str, Any], *parts: bytes) -> tuple[pb.ModelInferRequest, codec.OutputEncoding]:
    body, header_length = body_of(document, *parts)
    return codec.decode_infer_request(body, header_length, model_name="m")


# --- JSON → protobuf → numpy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_json_data_round_trips_to_numpy_for_every_datatype(datatype: str) -> None:
    shape, data, expected = SAMPLES[datatype]
    request, _ = decode({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})
    assert request.model_name == "m"
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == (datatype, shape)
    assert_same(codec.inputs_to_numpy(request)["x"], expected)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_flat_json_data_equals_nested_json_data(datatype: str) -> None:
    shape, data, expected = SAMPLES[datatype]
    flat = np.array(data, dtype=object).ravel().tolist()
    request, _ = decode({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": flat}]})
    assert_same(codec.inputs_to_numpy(request)["x"], expected)


@pytest.mark.parametrize(
    ("datatype", "field"),
    [("BOOL", "bool_contents"), ("UINT8", "uint_contents"), ("INT16", "int_contents")]
    + [("INT64", "int64_contents"), ("UINT64", "uint64_contents"), ("FP32", "fp32_contents")]
    + [("FP64", "fp64_contents"), ("BYTES", "bytes_contents")],
)
def test_json_only_requests_use_the_typed_contents_field(datatype: str, field: str) -> None:
    shape, data, expected = SAMPLES[datatype]
    request, _ = decode({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})
    assert not request.raw_input_contents
    assert len(getattr(request.inputs[0].contents, field)) == expected.size


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_datatypes_without_a_typed_field_force_every_input_to_raw(datatype: str) -> None:
    shape, data, _ = SAMPLES[datatype]
    inputs = [
        {"name": "a", "shape": [2], "datatype": "INT32", "data": [7, 8]},
        {"name": "b", "shape": shape, "datatype": datatype, "data": data},
    ]
    request, _ = decode({"inputs": inputs})
    assert len(request.raw_input_contents) == 2
    assert not request.inputs[0].HasField("contents")
    assert request.raw_input_contents[0] == np.array([7, 8], "<i4").tobytes()
    assert codec.inputs_to_numpy(request)["a"].tolist() == [7, 8]


def test_bf16_json_numbers_round_to_nearest_even_like_ml_dtypes() -> None:
    values = [1.00390625, 1.01171875, -3.3, 1e-40, 3.4e38]  # a tie to even down, a tie up, inexact, tiny, max
    request, _ = decode({"inputs": [{"name": "x", "shape": [5], "datatype": "BF16", "data": values}]})
    expected = np.array(values, np.float32).astype(ml_dtypes.bfloat16)
    assert request.raw_input_contents[0] == expected.tobytes()


def test_a_binary_input_sends_json_inputs_to_raw_too() -> None:
    inputs = [
        {"name": "bin", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "json", "shape": [2], "datatype": "BYTES", "data": ["x", "yz"]},
    ]
    request, _ = decode({"inputs": inputs}, np.array([1.5, 2.5], "<f4").tobytes())
    assert list(request.raw_input_contents) == [np.array([1.5, 2.5], "<f4").tobytes(), serialize_bytes([b"x", b"yz"])]
    assert not any(t.HasField("contents") for t in request.inputs)
    arrays = codec.inputs_to_numpy(request)
    assert arrays["bin"].tolist() == [1.5, 2.5]
    assert arrays["json"].tolist() == [b"x", b"yz"]


def test_binary_parts_are_consumed_in_input_order() -> None:
    inputs = [
        {"name": "s", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 4 * 3 + 6}},
        {"name": "i", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        {"name": "b", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
    ]
    parts = [serialize_bytes([b"ab", b"", b"\xff\x00cd"]), np.array([[-1, 2**40]], "<i8").tobytes(), b"\x01\x00\x07"]
    request, _ = decode({"inputs": inputs}, *parts)
    arrays = codec.inputs_to_numpy(request)
    assert arrays["s"].tolist() == [b"ab", b"", b"\xff\x00cd"]
    assert_same(arrays["i"], np.array([[-1, 2**40]], np.int64))
    assert arrays["b"].tolist() == [True, False, True]  # any non-zero byte is true
    assert arrays["b"].view(np.uint8).tolist() == [1, 0, 1]  # and a canonical numpy bool, not a stray 7
    assert "binary_data_size" not in request.inputs[0].parameters


@pytest.mark.parametrize("content_type", ["base64", "b64"])
def test_base64_bytes_input_is_decoded_and_not_forwarded(content_type: str) -> None:
    raw = [b"\x00\xff\xfe", b"plain"]
    data = [[base64.b64encode(item).decode()] for item in raw]
    tensor = {"name": "x", "shape": [2, 1], "datatype": "BYTES", "data": data}
    tensor["parameters"] = {"content_type": content_type, "keep": "me"}
    request, _ = decode({"inputs": [tensor]})
    assert codec.inputs_to_numpy(request)["x"].tolist() == [[raw[0]], [raw[1]]]
    assert set(request.inputs[0].parameters) == {"keep"}


def test_other_bytes_content_types_are_forwarded_and_data_kept_as_utf8() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["aGk="], "parameters": {"content_type": "str"}}
    request, _ = decode({"inputs": [tensor]})
    assert codec.inputs_to_numpy(request)["x"].tolist() == [b"aGk="]
    assert request.inputs[0].parameters["content_type"].string_param == "str"


def test_request_fields_parameters_and_outputs_are_forwarded_without_rest_only_keys() -> None:
    document = {
        "id": "req-1",
        "model_name": "ignored",
        "parameters": {"binary_data_output": True, "priority": 2, "big": 2**63, "t": 0.5, "s": "v", "f": False},
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False, "classification": 3}}, {"name": "z"}],
    }
    request, encoding = codec.decode_infer_request(
        json.dumps(document).encode(), None, model_name="path-model", model_version="4"
    )
    assert (request.model_name, request.model_version, request.id) == ("path-model", "4", "req-1")
    params = request.parameters
    assert "binary_data_output" not in params
    assert params["priority"].int64_param == 2
    assert params["big"].uint64_param == 2**63
    assert params["t"].double_param == 0.5
    assert params["s"].string_param == "v"
    assert params["f"].WhichOneof("parameter_choice") == "bool_param" and not params["f"].bool_param
    assert [o.name for o in request.outputs] == ["y", "z"]
    assert dict(request.outputs[0].parameters) == {"classification": pb.InferParameter(int64_param=3)}
    assert (encoding.is_binary("y"), encoding.is_binary("z"), encoding.is_binary("other")) == (False, True, True)


def test_output_binary_defaults_to_json() -> None:
    document = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    _, encoding = decode(document)
    assert (encoding.is_binary("y"), encoding.is_binary("z")) == (True, False)


def test_empty_tensors_decode_from_json_and_binary() -> None:
    inputs = [
        {"name": "j", "shape": [0, 3], "datatype": "INT8", "data": []},
        {"name": "b", "shape": [2, 0], "datatype": "BYTES", "parameters": {"binary_data_size": 0}},
    ]
    request, _ = decode({"inputs": inputs}, b"")
    arrays = codec.inputs_to_numpy(request)
    assert (arrays["j"].shape, arrays["j"].dtype) == ((0, 3), np.int8)
    assert (arrays["b"].shape, arrays["b"].dtype) == ((2, 0), object)


# --- numpy → protobuf → JSON --------------------------------------------------------------------------------------


def test_numpy_outputs_render_as_flat_json_data() -> None:
    response = codec.numpy_to_response("m", {name: array for name, (array, _, _) in OUTPUTS.items()})
    document, parts = codec.infer_response_to_json(response, codec.OutputEncoding())
    assert parts == []
    for output in document["outputs"]:
        array, datatype, data = OUTPUTS[output["name"]]
        assert output == {"name": output["name"], "datatype": datatype, "shape": list(array.shape), "data": data}
    assert (document["model_name"], document["model_version"], document["id"]) == ("m", "", "")


def test_numpy_outputs_survive_the_binary_extension_into_tritonclient() -> None:
    response = codec.numpy_to_response("m", {name: array for name, (array, _, _) in OUTPUTS.items()})
    body, header_length = codec.encode_infer_response(response, codec.OutputEncoding(binary_default=True))
    assert header_length is not None
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    for name, (array, _, _) in OUTPUTS.items():
        got = result.as_numpy(name)
        expected = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array)
        assert got.shape == array.shape
        assert got.tolist() == (expected.tolist() if array.dtype.kind in "OSU" else array.tolist())


def test_numpy_outputs_survive_json_into_tritonclient() -> None:
    arrays = {name: array for name, (array, _, _) in OUTPUTS.items() if name not in ("bf16", "obj", "str", "bytes")}
    body, header_length = codec.encode_infer_response(codec.numpy_to_response("m", arrays), codec.OutputEncoding())
    assert header_length is None
    result = httpclient.InferenceServerClient.parse_response_body(body)
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_non_utf8_bytes_outputs_render_as_base64_with_content_type() -> None:
    items = [b"\xff\xfe", b"ok"]
    response = codec.numpy_to_response("m", {"y": np.array(items, dtype=object)})
    document, _ = codec.infer_response_to_json(response, codec.OutputEncoding())
    output = document["outputs"][0]
    assert output["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(v) for v in output["data"]] == items


def test_typed_response_contents_render_as_json_and_as_binary() -> None:
    response = pb.ModelInferResponse(model_name="m", id="7")
    response.parameters["took_ms"].int64_param = 3
    tensor = response.outputs.add(name="y", datatype="FP32", shape=[2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    tensor.parameters["unit"].string_param = "m/s"
    response.outputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
    document, parts = codec.infer_response_to_json(response, codec.OutputEncoding(binary={"s": True}))
    assert document["id"] == "7" and document["parameters"] == {"took_ms": 3}
    assert document["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2],
        "data": [1.5, -2.0],
        "parameters": {"unit": "m/s"},
    }
    assert document["outputs"][1]["parameters"] == {"binary_data_size": 6}
    assert parts == [serialize_bytes([b"hi"])]


@pytest.mark.parametrize("binary", [False, True])
def test_a_runtimes_own_binary_parameters_do_not_reach_the_rest_answer(binary: bool) -> None:
    """KServe's servers pass `binary_data_size` / `binary_data` on in gRPC outputs' parameters; a REST client that
    read them would look for a binary part the answer does not have (or of another size)."""
    response = codec.numpy_to_response("m", {"y": np.array([[0.25, 0.75]], np.float32)})
    response.outputs[0].parameters["binary_data_size"].int64_param = 999
    response.outputs[0].parameters["binary_data"].bool_param = True
    response.outputs[0].parameters["unit"].string_param = "probability"
    body, header_length = codec.encode_infer_response(response, codec.OutputEncoding(binary_default=binary))
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert result.as_numpy("y").tolist() == [[0.25, 0.75]]
    expected = {"unit": "probability", **({"binary_data_size": 8} if binary else {})}
    assert result.get_output("y")["parameters"] == expected


def test_header_length_is_given_for_an_empty_binary_output() -> None:
    response = codec.numpy_to_response("m", {"y": np.zeros((0, 2), np.float32)})
    body, header_length = codec.encode_infer_response(response, codec.OutputEncoding(binary_default=True))
    assert header_length == len(body)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert result.as_numpy("y").shape == (0, 2)


@pytest.mark.parametrize("binary", [False, True])
def test_malformed_runtime_responses_are_internal_errors(binary: bool) -> None:
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="INT64", shape=[2])
    response.raw_output_contents.append(b"\x00" * 12)
    with pytest.raises(MeshError, match="runtime response: tensor 'y'.*needs 16 bytes, got 12") as caught:
        codec.infer_response_to_json(response, codec.OutputEncoding(binary_default=binary))
    assert not isinstance(caught.value, InvalidArgument)
    response.outputs.add(name="z", datatype="INT64", shape=[0])
    with pytest.raises(MeshError, match="1 raw contents for 2 outputs"):
        codec.infer_response_to_json(response, codec.OutputEncoding())


# --- tritonclient builds the request ------------------------------------------------------------------------------

TRITON_INPUTS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([1, 255], np.uint8),
    "UINT16": np.array([65535], np.uint16),
    "UINT32": np.array([2**32 - 1], np.uint32),
    "UINT64": np.array([2**64 - 1], np.uint64),
    "INT8": np.array([-128, 5], np.int8),
    "INT16": np.array([-300], np.int16),
    "INT32": np.array([[1, 2], [3, -4]], np.int32),
    "INT64": np.array([2**62], np.int64),
    "FP16": np.array([0.5, 1024], np.float16),
    "FP32": np.array([[1.25], [-7.5]], np.float32),
    "FP64": np.array([np.pi]),
    "BF16": np.array([1.5, -0.125], ml_dtypes.bfloat16),
    "BYTES": np.array([[b"\x00\xffbin"], ["t\u00e9xt".encode()]], dtype=object),
}


def triton_request(binary: bool, datatypes: list[str]) -> tuple[bytes, int | None]:
    inputs = []
    for datatype in datatypes:
        array = TRITON_INPUTS[datatype]
        tensor = httpclient.InferInput(datatype.lower(), list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary or datatype == "BF16")
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=False)]
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="t1")


@pytest.mark.parametrize(
    ("binary", "excluded", "raw"),
    [
        (True, set(), True),
        # tritonclient's JSON needs UTF-8 BYTES and sends BF16 only binary; FP16 has no typed field.
        (False, {"BYTES", "BF16", "FP16"}, False),
        (False, {"BYTES", "BF16"}, True),  # FP16 turns every JSON input raw
        (False, {"BYTES"}, True),  # so does the binary BF16
    ],
)
def test_tritonclient_request_bodies_decode_to_the_original_arrays(binary: bool, excluded: set[str], raw: bool) -> None:
    datatypes = [d for d in TRITON_INPUTS if d not in excluded]
    body, header_length = triton_request(binary, datatypes)
    request, encoding = codec.decode_infer_request(body, header_length, model_name="m")
    assert request.id == "t1" and not encoding.is_binary("y")
    assert len(request.raw_input_contents) == (len(datatypes) if raw else 0)
    arrays = codec.inputs_to_numpy(request)
    for datatype in datatypes:
        original = TRITON_INPUTS[datatype]
        expected = original.astype(np.float32) if datatype == "BF16" else original
        assert_same(arrays[datatype.lower()], expected)


def test_tritonclient_json_bytes_input_decodes_as_utf8() -> None:
    tensor = httpclient.InferInput("s", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(["h\u00e9", "x"], dtype=object), binary_data=False)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    request, encoding = codec.decode_infer_request(body, header_length, model_name="m")
    assert codec.inputs_to_numpy(request)["s"].tolist() == ["h\u00e9".encode(), b"x"]
    assert encoding.is_binary("anything")  # no outputs listed: tritonclient asks for binary_data_output


# --- bad REST requests ------------------------------------------------------------------------------------------


def one_input(**fields: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]} | fields
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


BAD_DOCUMENTS: list[tuple[str, dict[str, Any], list[bytes], str]] = [
    ("no inputs", {}, [], "needs 'inputs' as a JSON array"),
    ("inputs not a list", {"inputs": {"x": 1}}, [], "needs 'inputs' as a JSON array"),
    ("input not an object", {"inputs": [3]}, [], "non-empty string 'name'"),
    ("empty name", one_input(name=""), [], "non-empty string 'name'"),
    ("unknown datatype", one_input(datatype="FP99"), [], "'x': unknown datatype 'FP99'"),
    ("missing datatype", one_input(datatype=None), [], "'x': 'datatype' must be a string"),
    ("shape not a list", one_input(shape=2), [], "'x': shape must be a list of 64-bit integers"),
    ("huge shape", one_input(shape=[2**63, 0]), [], "'x': shape must be a list of 64-bit integers"),
    ("float shape", one_input(shape=[2.0]), [], "'x': shape must be a list of 64-bit integers"),
    ("negative shape", one_input(shape=[-1, 2]), [], "'x': shape [-1, 2] has a negative dimension"),
    ("no data", one_input(data=None), [], "'x': needs 'data' as a JSON array"),
    ("scalar data", one_input(shape=[1], data=5), [], "'x': needs 'data' as a JSON array"),
    ("flat count", one_input(shape=[3]), [], "'x': data of shape [2] (2 elements) does not match shape [3]"),
    ("nested mismatch", one_input(shape=[2, 2], data=[[1, 2, 3], [4]]), [], "'x': data is ragged"),
    ("nested shape", one_input(shape=[3, 2], data=[[1, 2, 3], [4, 5, 6]]), [], "does not match shape [3, 2]"),
    ("string for int", one_input(data=["1", "2"]), [], "'x': INT32 data must be integers"),
    ("float for int", one_input(data=[3.5, 1]), [], "'x': INT32 data must be integers"),
    ("bool for int", one_input(data=[True, False]), [], "'x': INT32 data must be integers"),
    ("int too big", one_input(datatype="INT8", data=[128, 0]), [], "'x': values [0, 128] do not fit INT8"),
    ("negative uint", one_input(datatype="UINT8", data=[-1, 0]), [], "do not fit UINT8"),
    ("beyond uint64", one_input(datatype="UINT64", data=[2**64, 0]), [], "values [0, 18446744073709551616] do not fit"),
    ("mixed int and float", one_input(datatype="UINT64", data=[2**64 - 1, 0.5]), [], "UINT64 data must be integers"),
    ("huge int", one_input(datatype="INT64", data=[-1, 2**63]), [], "'x': values [-1, 9223372036854775808] do not fit"),
    ("null", one_input(datatype="FP32", data=[None, 1.0]), [], "'x': FP32 data must be numbers"),
    ("bool for float", one_input(datatype="FP32", data=[True, False]), [], "'x': FP32 data must be numbers"),
    ("int for bool", one_input(datatype="BOOL", data=[1, 0]), [], "'x': BOOL data must be true or false"),
    ("lone surrogate", one_input(datatype="BYTES", data=["\ud800", "a"]), [], "'x': data is not valid Unicode"),
    ("number for bytes", one_input(datatype="BYTES", data=[1, "a"]), [], "'x': BYTES data must be JSON strings"),
    (
        "bad base64",
        one_input(datatype="BYTES", data=["!!", "aGk="], parameters={"content_type": "base64"}),
        [],
        "'x': data is not valid base64",
    ),
    (
        "data and binary",
        one_input(parameters={"binary_data_size": 8}),
        [b"\x00" * 8],
        "'x': has both 'data' and parameter 'binary_data_size'",
    ),
    (
        "negative binary size",
        one_input(data=None, parameters={"binary_data_size": -1}),
        [b""],
        "'x': binary_data_size must be a non-negative integer",
    ),
    (
        "binary past end",
        one_input(data=None, parameters={"binary_data_size": 8}),
        [b"\x00" * 4],
        "'x': binary_data_size 8 runs past the 4 bytes of binary data",
    ),
    (
        "binary left over",
        one_input(data=None, parameters={"binary_data_size": 8}),
        [b"\x00" * 12],
        "binary data has 12 bytes but the inputs' binary_data_size total 8",
    ),
    (
        "binary wrong for shape",
        one_input(data=None, parameters={"binary_data_size": 4}),
        [b"\x00" * 4],
        "'x': INT32 shape [2] needs 8 bytes, got 4",
    ),
    (
        "bytes prefix cut",
        one_input(datatype="BYTES", data=None, parameters={"binary_data_size": 7}),
        [serialize_bytes([b"ab"]) + b"\x01"],
        "'x': BYTES data ends inside a 4-byte length prefix",
    ),
    (
        "bytes element overruns",
        one_input(datatype="BYTES", data=None, parameters={"binary_data_size": 6}),
        [struct.pack("<I", 9) + b"ab"],
        "'x': BYTES element of 9 bytes runs past the end",
    ),
    (
        "bytes count",
        one_input(datatype="BYTES", data=None, parameters={"binary_data_size": 5}),
        [serialize_bytes([b"a"])],
        "'x': shape needs 2 BYTES elements, data has 1",
    ),
    ("shared memory", one_input(parameters={"shared_memory_region": "r"}), [], "'x': shared memory is not supported"),
    ("duplicate", {"inputs": one_input()["inputs"] * 2}, [], "input 'x' appears more than once"),
    ("id not a string", one_input() | {"id": 5}, [], "'id' must be a string"),
    ("parameters not an object", one_input() | {"parameters": [1]}, [], "request parameters must be a JSON object"),
    ("parameter a list", one_input() | {"parameters": {"p": [1]}}, [], "request: parameter 'p' must be a bool"),
    ("binary_data_output", one_input() | {"parameters": {"binary_data_output": 1}}, [], "must be true or false"),
    ("outputs not a list", one_input() | {"outputs": {}}, [], "'outputs' must be a JSON array"),
    ("output without name", one_input() | {"outputs": [{}]}, [], "with a string 'name'"),
    (
        "output binary_data",
        one_input() | {"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        [],
        "output 'y': parameter 'binary_data' must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("document", "parts", "message"), [c[1:] for c in BAD_DOCUMENTS], ids=[c[0] for c in BAD_DOCUMENTS]
)
def test_bad_rest_requests_raise_invalid_argument_with_a_useful_message(
    document: dict[str, Any], parts: list[bytes], message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(document, *parts)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "request body is not valid JSON"),
        (b"\xff\xfe", None, "request body is not valid JSON"),
        (b"[1, 2]", None, "request body must be a JSON object"),
        (b'{"inputs": []}\x00\x01', None, "request body is not valid JSON"),  # binary tail without the header
        (b'{"inputs": []}', 99, "Inference-Header-Content-Length 99 is outside the 14-byte request body"),
        (b'{"inputs": []}', -1, "Inference-Header-Content-Length -1 is outside"),
    ],
)
def test_malformed_bodies_raise_invalid_argument(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.decode_infer_request(body, header_length, model_name="m")


# --- metadata ---------------------------------------------------------------------------------------------------


def test_model_and_server_metadata_render_as_v2_json() -> None:
    metadata = pb.ModelMetadataResponse(name="m", versions=["1", "2"], platform="sklearn")
    metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    metadata.outputs.add(name="y", datatype="INT64", shape=[-1])
    assert codec.model_metadata_to_json(metadata) == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "sklearn",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
    }
    server = pb.ServerMetadataResponse(name="mesh", version="0.1.0", extensions=["binary_tensor_data"])
    assert codec.server_metadata_to_json(server) == {
        "name": "mesh",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
