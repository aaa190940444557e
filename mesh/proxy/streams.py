"""Relaying streamed calls to a copy of their model, message by message: Triton's ModelStreamInfer and TorchServe's
StreamPredictions (routed by field 1 of their first message), and any other method carrying a routing header
(mm-model-id / mm-vmodel-id), whatever its cardinality.

- **In use while open**: the stream holds a lease on its copy from its first message to its last, so the copy
  counts as in flight for as long (never evicted, drained before an unload).
- **Backpressure**: each message is written to the runtime only once the previous one is taken (gRPC's flow
  control, end to end); responses are read from the runtime only as fast as the client takes them.
- **Cancel**: a client that goes away cancels the runtime's call.
- **A runtime that dies mid-stream** ends the stream with UNAVAILABLE naming the instance and the model, and its
  copy is dropped (as a unary call's would be). Streams are not resent: part of the answer may have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from mesh.access_log import AccessNote
from mesh.errors import InvalidArgument
from mesh.proxy import wire
from mesh.proxy.dataplane import DataPlane, Metadata, Target


async def relay(
    dataplane: DataPlane,
    method: str,
    requests: AsyncIterator[bytes],
    target: Target | None,
    metadata: Metadata,
    timeout: float | None,
    note: AccessNote,
) -> AsyncIterator[bytes]:
    """The runtime's responses to the client's messages (target None: named by field 1 of the first message)."""
    first: bytes | None = None
    if target is None:
        first = await anext(aiter(requests), None)
        if first is None:
            raise InvalidArgument(f"{method}: the stream ended before a message named a model")
        target = Target(wire.read_string(first, 1))
        if not target.name:
            raise InvalidArgument("the first message names no model: set model_name or an mm-model-id header")
    model_id = await dataplane.resolve(target)
    note.model_id = model_id
    lease, note.hit = await dataplane.copy_of(model_id)
    note.instance_id = lease.instance_id
    with lease:
        call = lease.client.stream(method)(metadata=metadata, timeout=timeout)

        async def forward_requests() -> None:
            named = target
            assert named is not None
            if first is not None:
                await call.write(dataplane.with_model_id(method, first, named, model_id, lease))
            async for message in requests:
                await call.write(dataplane.with_model_id(method, message, named, model_id, lease))
            await call.done_writing()

        writing = asyncio.create_task(forward_requests(), name=f"stream to {lease.instance_id}")
        try:
            async for response in call:
                yield response
            await _ended(writing)
        except grpc.aio.AioRpcError as exc:
            raise await dataplane.copy_failed(exc, model_id, lease) from exc
        finally:
            writing.cancel()
            call.cancel()  # a client that went away (the generator closed early) cancels the runtime's call
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await writing


async def _ended(writing: asyncio.Task[None]) -> None:
    """The runtime finished answering: the client's side ends too (a write into a finished call fails, and
    that is no error of the stream's)."""
    if not writing.done():
        writing.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await writing
