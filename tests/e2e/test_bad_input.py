"""Malformed requests to a real `mesh serve`, over REST and gRPC: each gets the right status and a message that
says what was wrong, and the router goes on serving valid requests afterwards."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc

TIMEOUT_S = 30.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
VALID_INPUT = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}

pytestmark = pytest.mark.slow  # one shared `mesh serve`: a router and two runtime processes


def _infer_json(input_: dict[str, object]) -> bytes:
    return json.dumps({"inputs": [input_]}).encode()


def _assert_still_serving(rest: httpx.Client, channel: grpc.Channel) -> None:
    """A valid request succeeds over both front doors."""
    response = rest.post("/v2/models/echo/infer", json={"inputs": [VALID_INPUT]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1, 2]
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT_S)
    assert reply.outputs[0].name == "x"


def _assert_status(error: grpc.RpcError, code: grpc.StatusCode, fragments: list[str | tuple[str, ...]]) -> None:
    """The status, and a message holding every fragment (a tuple: one of its strings)."""
    actual, details = error.code(), error.details()  # type: ignore[attr-defined]
    assert actual == code, f"{actual.name}: {details}"
    for fragment in fragments:
        alternatives = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(a in details for a in alternatives), details


# ---- REST ---------------------------------------------------------------------------------------------------

REST_CASES = [
    pytest.param("/v2/models/echo/infer", b'{"inputs": [', {}, 400, ["not valid JSON"], id="malformed-json"),
    pytest.param("/v2/models/echo/infer", b"[1, 2]", {}, 400, ["JSON object"], id="json-not-an-object"),
    pytest.param("/v2/models/echo/infer", b"{}", {}, 400, ["'inputs'"], id="no-inputs"),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [1], "datatype": "FLOAT32", "data": [1.0]}),
        {},
        400,
        ["'x'", "unknown datatype 'FLOAT32'"],
        id="unknown-datatype",
    ),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [2], "datatype": "INT32", "data": ["a", "b"]}),
        {},
        400,
        ["'x'", "INT32", "integers"],
        id="string-for-int32",
    ),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [1], "datatype": "BOOL", "data": [3]}),
        {},
        400,
        ["'x'", "BOOL", "true or false"],
        id="number-for-bool",
    ),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}),
        {},
        400,
        ["'x'", "UINT8", "256"],
        id="out-of-range",
    ),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [3], "datatype": "INT32", "data": [1, 2]}),
        {},
        400,
        ["'x'", "2 elements", "shape [3]"],
        id="shape-data-mismatch",
    ),
    pytest.param(
        "/v2/models/echo/infer",
        _infer_json({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}),
        {"Inference-Header-Content-Length": "200"},
        400,
        ["Inference-Header-Content-Length", "200"],
        id="header-length-past-body",
    ),
    pytest.param(
        "/v2/models/iris-logreg/infer",
        _infer_json({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}),
        {},
        400,
        ["'x'", "[1, 3]", "[batch, 4]"],
        id="wrong-feature-count-for-model",
    ),
    pytest.param(
        "/v2/models/iris-logreg/infer",
        _infer_json({"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": [["a", "b", "c", "d"]]}),
        {},
        400,
        ["'x'", "integers or floats"],
        id="bytes-for-sklearn",
    ),
    pytest.param(
        "/v2/models/no-such-model-r5/infer",
        _infer_json(VALID_INPUT),
        {},
        404,
        ["no-such-model-r5"],
        id="unknown-model",
    ),  # fmt: skip
    pytest.param("/v2/models//infer", _infer_json(VALID_INPUT), {}, 404, ["/v2/models//infer"], id="no-model-named"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "fragments"), REST_CASES)
def test_rest_rejects_with_status_and_reason(
    rest: httpx.Client,
    channel: grpc.Channel,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragments: list[str],
) -> None:
    response = rest.post(path, content=body, headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error
    _assert_still_serving(rest, channel)


def test_rest_unknown_model_metadata_and_readiness_are_404(rest: httpx.Client, channel: grpc.Channel) -> None:
    for path in ("/v2/models/no-such-model-r6", "/v2/models/no-such-model-r6/ready"):
        response = rest.get(path)
        assert response.status_code == 404, path
        assert "no-such-model-r6" in response.json()["error"], path
    _assert_still_serving(rest, channel)


# ---- gRPC ---------------------------------------------------------------------------------------------------


def _request(model: str, datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def _string_for_int32() -> pb.ModelInferRequest:
    request = _request("echo", "INT32", [1])
    request.inputs[0].contents.bytes_contents.append(b"a")
    return request


def _non_utf8_text() -> pb.ModelInferRequest:
    request = _request("text-upper", "BYTES", [2])
    request.inputs[0].contents.bytes_contents.extend([b"fine", b"\xff\xfe"])
    return request


GRPC_CASES = [
    pytest.param(
        _request("echo", "FLOAT32", [1], b"\0" * 4),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'x'", "unknown datatype 'FLOAT32'"],
        id="unknown-datatype",
    ),
    pytest.param(
        _string_for_int32(), grpc.StatusCode.INVALID_ARGUMENT, ["'x'", "INT32", "int_contents"], id="string-for-int32"
    ),
    pytest.param(
        _request("echo", "FP32", [3], b"\0" * 8),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'x'", "12 bytes", "got 8"],
        id="shape-data-mismatch",
    ),
    pytest.param(_non_utf8_text(), grpc.StatusCode.INVALID_ARGUMENT, ["'x'", "element 1", "UTF-8"], id="text-not-utf8"),
    pytest.param(
        _request("no-such-model-g5", "FP32", [1], b"\0" * 4),
        grpc.StatusCode.NOT_FOUND,
        ["no-such-model-g5"],
        id="unknown-model",
    ),
    pytest.param(
        _request("", "FP32", [1], b"\0" * 4),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["names no model", "mm-model-id"],
        id="no-model-named",
    ),
]


@pytest.mark.parametrize(("request_message", "code", "fragments"), GRPC_CASES)
def test_grpc_rejects_with_status_and_reason(
    rest: httpx.Client,
    channel: grpc.Channel,
    request_message: pb.ModelInferRequest,
    code: grpc.StatusCode,
    fragments: list[str],
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_message, timeout=TIMEOUT_S)
    _assert_status(raised.value, code, fragments)
    _assert_still_serving(rest, channel)


# Bytes that are not a valid message. The first two break the top-level framing, which the router reads to find
# the model name; the others name a model correctly and break only inside, where the router does not look. The
# native engine reads field 1 where a later field runs past the end: the runtime then rejects the message.
UNPARSEABLE = [
    pytest.param(MODEL_INFER, b"\xff\xff\xff", ["malformed protobuf"], id="infer-truncated-tag"),
    pytest.param(
        MODEL_INFER, b"\n\x04echo\x12\x09ab", [("malformed protobuf", "ModelInferRequest")], id="infer-field-past-end"
    ),
    pytest.param(MODEL_INFER, b"\n\x02\xff\xfe", ["UTF-8"], id="infer-model-name-not-utf8"),
    pytest.param(MODEL_INFER, b"\n\x04echo*\x03\xff\xff\xff", ["ModelInferRequest"], id="infer-garbage-input-tensor"),
    pytest.param(MODEL_INFER, b"\n\x04echo\x1a\x02\xff\xfe", ["ModelInferRequest"], id="infer-id-not-utf8"),
    pytest.param(
        MODEL_METADATA, b"\n\x04echo\x12\x02\xff\xfe", ["ModelMetadataRequest"], id="metadata-version-not-utf8"
    ),
]


@pytest.mark.parametrize(("method", "body", "fragments"), UNPARSEABLE)
def test_grpc_unparseable_request_is_invalid_argument(
    rest: httpx.Client, channel: grpc.Channel, method: str, body: bytes, fragments: list[str]
) -> None:
    call = channel.unary_unary(method)  # no (de)serializers: the bytes go out exactly as given
    with pytest.raises(grpc.RpcError) as raised:
        call(body, timeout=TIMEOUT_S)
    _assert_status(raised.value, grpc.StatusCode.INVALID_ARGUMENT, fragments)
    _assert_still_serving(rest, channel)
