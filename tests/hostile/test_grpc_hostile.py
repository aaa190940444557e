"""The gRPC door of a real router under hostile bytes: a status that names the client's mistake, never UNKNOWN or
INTERNAL, and it keeps serving.

Random bytes often read as some model name (field 1 is a length-delimited field, 0x0a): a name nobody registered
is NOT_FOUND, and one no registration could have is INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
import pytest
from harness.hostile import MAX_MESSAGE_BYTES, MODEL, HostileMesh
from hostile_strategies import bounded, infer_requests
from hypothesis import given
from hypothesis import strategies as st

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.registry import MAX_ID_BYTES

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
CLIENT_MISTAKES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def good_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(7)
    return request


async def call(mesh: HostileMesh, data: bytes, method: str = MODEL_INFER, metadata=()) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await mesh.raw_unary(method)(data, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as err:
        assert "Traceback" not in (err.details() or ""), err.details()
        return err.code()
    return grpc.StatusCode.OK


async def assert_still_serving(mesh: HostileMesh) -> None:
    reply = pb.ModelInferResponse.FromString(await mesh.raw_unary(MODEL_INFER)(good_request().SerializeToString()))
    assert list(reply.outputs[0].contents.int_contents) or reply.raw_output_contents


@bounded(80)
@given(st.binary(max_size=200), st.sampled_from([MODEL_INFER, MODEL_METADATA]))
async def test_random_bytes_are_client_errors(mesh: HostileMesh, data: bytes, method: str) -> None:
    assert await call(mesh, data, method) in CLIENT_MISTAKES
    await assert_still_serving(mesh)


@bounded(80)
@given(infer_requests(), st.data())
async def test_truncated_requests_for_a_registered_model_are_served_or_invalid_argument(
    mesh: HostileMesh, request: pb.ModelInferRequest, data: st.DataObject
) -> None:
    request.model_name = MODEL
    serialized = request.SerializeToString()
    cut = serialized[: data.draw(st.integers(0, len(serialized)))]
    assert await call(mesh, cut) in {grpc.StatusCode.OK, *CLIENT_MISTAKES}
    await assert_still_serving(mesh)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x04echo\x2a\x05",  # inputs cut inside their length
        b"\x0a\x04echo\x2a\x03\x0a\x01",  # an input cut inside its name
        b"\x0a\x04echo\x0b",  # a group after the name
        b"\x0a\x02\xff\xfe",  # model_name not UTF-8
        b"\x0a\x03a\x00b",  # model_name no model can have
        pb.ModelInferRequest(model_name="x" * (MAX_ID_BYTES + 1)).SerializeToString(),
        pb.ModelInferRequest(model_name="x" * 900_000).SerializeToString(),  # its echo would not fit a trailer
    ],
    ids=["cut-inputs", "cut-input-name", "group", "not-utf8", "nul", "long-name", "900k-name"],
)
async def test_malformed_requests_are_invalid_argument(mesh: HostileMesh, data: bytes) -> None:
    assert await call(mesh, data) == grpc.StatusCode.INVALID_ARGUMENT
    await assert_still_serving(mesh)


async def test_messages_over_the_limit_are_resource_exhausted(mesh: HostileMesh) -> None:
    request = good_request()
    request.raw_input_contents.append(b"\0" * MAX_MESSAGE_BYTES)
    assert await call(mesh, request.SerializeToString()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    await assert_still_serving(mesh)


async def test_a_binary_routing_header_that_is_not_utf8_is_invalid_argument(mesh: HostileMesh) -> None:
    metadata = (("mm-model-id-bin", b"\xff\xfe"),)
    assert await call(mesh, good_request().SerializeToString(), metadata=metadata) == grpc.StatusCode.INVALID_ARGUMENT
