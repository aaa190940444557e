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
- **Measured** as one invocation of the runtime when it ends (modelmesh_invoke_model: from the call to its end;
  the size histograms: the bytes of all its messages each way). A stream the client cancels is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
        started = time.perf_counter()
        sent = received = 0
        call = lease.client.stream(method)(metadata=metadata, timeout=timeout)

        async def forward_requests() -> None:
            nonlocal sent
            named = target
            assert named is not None
            messages = requests if first is None else _prepend(first, requests)
            async for message in messages:
                body = dataplane.with_model_id(method, message, named, model_id, lease)
                sent += len(body)
                await call.write(body)
            await call.done_writing()

        writing = asyncio.create_task(forward_requests(), name=f"stream to {lease.instance_id}")
        try:
            async for response in call:
                received += len(response)
                yield response
            await _ended(writing)
            dataplane.invoked(method, model_id, started, sent, received)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                dataplane.invoked(method, model_id, started, sent)
            raise await dataplane.copy_failed(exc, model_id, lease) from exc
        finally:
            writing.cancel()
            call.cancel()  # a client that went away (the generator closed early) cancels the runtime's call
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await writing


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for message in rest:
        yield message


async def _ended(writing: asyncio.Task[None]) -> None:
    """The runtime finished answering: the client's side ends too (a write into a finished call fails, and
    that is no error of the stream's)."""
    if not writing.done():
        writing.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await writing
