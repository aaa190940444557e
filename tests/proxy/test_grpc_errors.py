"""The gRPC side of mesh's one error boundary (grpcutil.maps_errors), on a real server on loopback: an Overloaded
answer carries when to retry in its trailers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mesh.errors import Overloaded
from mesh.grpcutil import maps_errors

METHOD = "/test.Thrash/Call"


@maps_errors
async def _overloaded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise Overloaded("the thrash guard holds the models in use; retry in 2.2s", retry_after_s=2.2)


async def test_an_overloaded_status_carries_retry_after_and_grpc_pushback_trailers() -> None:
    handler = grpc.method_handlers_generic_handler(
        "test.Thrash", {"Call": grpc.unary_unary_rpc_method_handler(_overloaded)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary(METHOD)(b"", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
    finally:
        await server.stop(None)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 2.2s" in (refused.value.details() or "")
    trailers = dict(refused.value.trailing_metadata() or ())
    assert trailers["retry-after"] == "3" and trailers["grpc-retry-pushback-ms"] == "2200"
