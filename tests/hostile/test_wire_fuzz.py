"""The routing peek (mesh/proxy/wire.py) on raw bytes: it agrees with protobuf or raises InvalidArgument.

`read_string` runs on every gRPC request before anything else has looked at it; `replace_string` rewrites what the
runtime receives, so what it makes of a valid message must be a valid message.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hostile_strategies import bounded, infer_requests
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.proxy import wire

# Groups (wire types 3 and 4, deprecated since proto2) parse as unknown fields in protobuf; the peek refuses them,
# since no KServe message has one and skipping one means walking its contents.
GROUP = "unsupported wire type"


def peek(data: bytes) -> str | None:
    """read_string(data, 1), or None when it raises InvalidArgument."""
    try:
        return wire.read_string(data, 1)
    except InvalidArgument as err:
        assert err.message.startswith(("malformed protobuf message", "field 1 is not valid UTF-8"))
        return None


def parse(data: bytes) -> pb.ModelInferRequest | None:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None


def without_name(request: pb.ModelInferRequest) -> bytes:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(request)
    copy.ClearField("model_name")
    return copy.SerializeToString(deterministic=True)


@bounded(500)
@given(st.binary(max_size=100))
def test_random_bytes_read_like_protobuf_or_raise_invalid_argument(data: bytes) -> None:
    name = peek(data)
    parsed = parse(data)
    if parsed is not None and name is None:
        with pytest.raises(InvalidArgument, match=GROUP):
            wire.read_string(data, 1)
    if parsed is not None and name is not None:
        assert name == parsed.model_name


@bounded(300)
@given(infer_requests(), st.data())
def test_truncated_requests_read_like_protobuf_or_raise_invalid_argument(
    request: pb.ModelInferRequest, data: st.DataObject
) -> None:
    serialized = request.SerializeToString()
    cut = serialized[: data.draw(st.integers(0, len(serialized)))]
    name = peek(cut)
    parsed = parse(cut)
    if parsed is not None:
        assert name == parsed.model_name


@bounded(300)
@given(infer_requests(), st.lists(infer_requests(), max_size=2), st.text(max_size=20))
def test_replace_string_of_a_valid_request_is_a_valid_request(
    request: pb.ModelInferRequest, more: list[pb.ModelInferRequest], new_name: str
) -> None:
    # Concatenated messages are one valid message (protobuf merges them), with field 1 repeated.
    data = b"".join(r.SerializeToString() for r in [request, *more])
    merged = pb.ModelInferRequest.FromString(data)
    assert wire.read_string(data, 1) == merged.model_name
    replaced = wire.replace_string(data, 1, new_name)
    reparsed = pb.ModelInferRequest.FromString(replaced)
    assert reparsed.model_name == new_name == wire.read_string(replaced, 1)
    assert without_name(reparsed) == without_name(merged)


@bounded(300)
@given(st.binary(max_size=100), st.text(max_size=8))
def test_replace_string_on_random_bytes_raises_only_invalid_argument(data: bytes, new_name: str) -> None:
    try:
        replaced = wire.replace_string(data, 1, new_name)
    except InvalidArgument:
        return
    assert wire.read_string(replaced, 1) == new_name
    if parse(data) is not None:
        assert parse(replaced) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a",  # tag, no length
        b"\x0a\x05ab",  # length past the end
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a 2**64-ish length
        b"\x0a" + b"\xff" * 11,  # varint longer than 10 bytes
        b"\x00\x00",  # field number 0
        b"\x0f",  # wire type 7
        b"\x0b\x0c\x0a\x01m",  # a group
        b"\x11\x00\x00",  # fixed64 cut short
    ],
)
def test_malformed_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        wire.read_string(data, 1)
    with pytest.raises(InvalidArgument):
        wire.replace_string(data, 1, "m")


def test_a_model_name_that_is_not_utf8_is_invalid_argument_and_can_be_replaced() -> None:
    with pytest.raises(InvalidArgument, match="not valid UTF-8"):
        wire.read_string(b"\x0a\x02\xff\xfe", 1)
    assert wire.replace_string(b"\x0a\x02\xff\xfe", 1, "m") == b"\x0a\x01m"
