"""Routing reads model_name from raw bytes and splices a new one in; both must agree with protobuf itself."""

import pytest

from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.proxy import wire


def infer_request(name: str = "iris") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version="1", id="req-7")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.parameters["binary_data_size"].int64_param = 16
    request.raw_input_contents.append(b"\x00" * 16)
    request.outputs.add(name="predict")
    return request


def test_reads_model_name_like_protobuf_does():
    data = infer_request("sk/iris v2").SerializeToString()
    assert wire.read_string(data, 1) == "sk/iris v2"
    assert wire.read_string(data, 3) == "req-7"
    assert wire.read_string(pb.ModelInferRequest(id="x").SerializeToString(), 1) == ""


def test_the_last_occurrence_wins_as_in_protobuf():
    data = infer_request("first").SerializeToString() + pb.ModelInferRequest(model_name="second").SerializeToString()
    assert pb.ModelInferRequest.FromString(data).model_name == "second"
    assert wire.read_string(data, 1) == "second"


def test_replace_keeps_every_other_field_intact():
    original = infer_request()
    spliced = pb.ModelInferRequest.FromString(wire.replace_string(original.SerializeToString(), 1, "iris__v2"))
    assert spliced.model_name == "iris__v2"
    spliced.model_name = original.model_name
    assert spliced == original


def test_replace_when_absent_adds_the_field():
    request = pb.ModelInferRequest(id="x")
    spliced = pb.ModelInferRequest.FromString(wire.replace_string(request.SerializeToString(), 1, "m"))
    assert (spliced.model_name, spliced.id) == ("m", "x")


@pytest.mark.parametrize(
    "garbage",
    [b"\x0a\x05ab", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0b", b"\x00\x01", b"\x08"],
)
def test_malformed_bytes_are_invalid_argument(garbage):
    with pytest.raises(InvalidArgument, match="malformed"):
        wire.read_string(garbage, 1)


def test_model_name_that_is_not_utf8_is_rejected():
    with pytest.raises(InvalidArgument, match="UTF-8"):
        wire.read_string(b"\x0a\x02\xff\xfe", 1)
