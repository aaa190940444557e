"""The REST codec and the tensor decoder under hostile input: a request is converted or refused with InvalidArgument.

Any other exception would reach the REST door as a 500 (or kill a runtime's handler). What the codec accepts the
runtime side (`inputs_to_numpy`) must accept too, or the router would forward what it should have refused.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hostile_strategies import (
    binary_parts,
    bounded,
    datatypes,
    deep_json,
    dims,
    hostile_json_bodies,
    nested,
    rest_bodies,
)
from hypothesis import given
from hypothesis import strategies as st

from mesh.codec import decode_infer_request, inputs_to_numpy
from mesh.codec.tensors import MAX_DIMS, raw_to_array
from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb


def decode_or_refuse(body: bytes, header_length: int | None) -> pb.ModelInferRequest | None:
    """The request the codec makes of a body, or None when it refuses it with InvalidArgument."""
    try:
        request, _ = decode_infer_request(body, header_length, model_name="m")
    except InvalidArgument as err:
        assert err.message
        return None
    assert request.model_name == "m"
    return request


def accepted_by_the_runtime_too(request: pb.ModelInferRequest) -> None:
    parsed = pb.ModelInferRequest.FromString(request.SerializeToString())
    assert set(inputs_to_numpy(parsed)) == {t.name for t in request.inputs}


@bounded(300)
@given(rest_bodies())
def test_request_shaped_bodies_convert_or_raise_invalid_argument(body: tuple[bytes, int | None]) -> None:
    request = decode_or_refuse(*body)
    if request is not None:
        accepted_by_the_runtime_too(request)


@bounded(200)
@given(hostile_json_bodies, st.none() | st.integers(min_value=-1, max_value=80))
def test_arbitrary_bodies_convert_or_raise_invalid_argument(body: bytes, header_length: int | None) -> None:
    request = decode_or_refuse(body, header_length)
    if request is not None:
        accepted_by_the_runtime_too(request)


@bounded(40)
@given(deep_json)
def test_deeply_nested_json_is_invalid_argument(body: str) -> None:
    assert decode_or_refuse(body.encode(), None) is None


def test_json_nested_past_the_parsers_recursion_limit_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        decode_infer_request(nested(100_000).encode(), None, model_name="m")


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "\\ud800", "inputs": []}',
        b'{"parameters": {"\\udfff": 1}, "inputs": []}',
        b'{"parameters": {"p": "a\\ud800b"}, "inputs": []}',
        b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"p": "\\ud800"}}]}',
        b'{"inputs": [], "outputs": [{"name": "\\udc00"}]}',
        b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"\\ud800": true}}]}',
    ],
)
def test_lone_surrogates_in_names_ids_and_parameters_are_invalid_argument(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        decode_infer_request(body, None, model_name="m")


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
@pytest.mark.parametrize(
    "shape",
    [[0, 2**62, 2**62], [0, 2**61], [2**31, 2**31, 2**31], [1] * (MAX_DIMS + 1), [1] * 100],
    ids=["zero-times-overflow", "zero-times-2**61", "product-over-2**63", "one-dim-too-many", "100-dims"],
)
def test_shapes_numpy_cannot_hold_are_invalid_argument_even_without_elements(datatype: str, shape: list[int]) -> None:
    data = [] if 0 in shape else ["a" if datatype == "BYTES" else 1]
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}'.replace("'", '"')
    with pytest.raises(InvalidArgument, match="dimensions"):
        decode_infer_request(body.encode(), None, model_name="m")
    with pytest.raises(InvalidArgument, match="dimensions"):
        raw_to_array("x", datatype, shape, b"")


def test_the_largest_shapes_numpy_can_hold_still_convert() -> None:
    body = b'{"inputs":[{"name":"x","datatype":"FP64","shape":[0,576460752303423487],"data":[]}]}'
    request, _ = decode_infer_request(body, None, model_name="m")
    assert inputs_to_numpy(request)["x"].shape == (0, 2**59 - 1)
    assert raw_to_array("x", "INT8", [1] * MAX_DIMS, b"\x07").shape == (1,) * MAX_DIMS


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"datatype": "FP32", "shape": [-1], "data": []}, "negative dimension"),
        ({"datatype": "FP32", "shape": [2], "data": [1.0]}, "does not match shape"),
        ({"datatype": "FP32", "shape": [2**63], "data": [1.0]}, "64-bit integers"),
        ({"datatype": "FP8", "shape": [1], "data": [1.0]}, "unknown datatype 'FP8'"),
        ({"datatype": "INT8", "shape": [1], "data": [float("nan")]}, "must be integers"),
        ({"datatype": "INT8", "shape": [1], "data": [128]}, "do not fit INT8"),
        ({"datatype": "UINT64", "shape": [1], "data": [2**64]}, "do not fit UINT64"),
        ({"datatype": "BYTES", "shape": [1], "data": ["no*base64"], "parameters": {"content_type": "b64"}}, "base64"),
        ({"datatype": "BYTES", "shape": [1], "data": [1]}, "JSON strings"),
    ],
)
def test_named_json_mistakes_are_invalid_argument(item: dict[str, object], message: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", **item}]}, allow_nan=True).encode()
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request(body, None, model_name="m")


def test_nan_and_infinity_are_floats_not_errors() -> None:
    body = b'{"inputs":[{"name":"x","datatype":"FP64","shape":[3],"data":[NaN, Infinity, -Infinity]}]}'
    values = inputs_to_numpy(decode_infer_request(body, None, model_name="m")[0])["x"]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf


# ---- binary data, for REST's extension and for raw contents on the gRPC path -----------------------------------


@bounded(300)
@given(datatypes, st.lists(dims, max_size=4), binary_parts)
def test_raw_contents_decode_or_raise_invalid_argument(datatype: str, shape: list[int], raw: bytes) -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    try:
        request.inputs.add(name="x", datatype=datatype, shape=shape)
    except ValueError:  # a dimension past int64: protobuf itself refuses it, no request can carry it
        return
    try:
        array = inputs_to_numpy(request)["x"]
    except InvalidArgument:
        return
    assert list(array.shape) == shape


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00\x00\x00abc", "runs past the end"),
        (b"\xff\xff\xff\xffabc", "runs past the end"),
        (b"\x01\x00", "inside a 4-byte length prefix"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", "needs 1 BYTES elements, data has 2"),
    ],
)
def test_bytes_length_prefixes_that_run_past_the_buffer_are_invalid_argument(raw: bytes, message: str) -> None:
    header = b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":%d}}]}' % len(raw)
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request(header + raw, len(header), model_name="m")


def test_non_utf8_bytes_pass_through_binary_data_unchanged() -> None:
    raw = struct.pack("<I", 3) + b"\xff\xc3\xed"
    header = b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":7}}]}'
    request, _ = decode_infer_request(header + raw, len(header), model_name="m")
    assert inputs_to_numpy(request)["x"].tolist() == [b"\xff\xc3\xed"]


@bounded(300)
@given(st.binary(max_size=200))
def test_random_protobuf_requests_decode_or_raise_invalid_argument(data: bytes) -> None:
    """What a runtime does with whatever a client sent (the router forwards it unread)."""
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    try:
        inputs_to_numpy(request)
    except InvalidArgument:
        pass
