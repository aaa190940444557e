"""Runtime-side errors (built-in runtime and adapters), in mesh's one hierarchy so the same gRPC mapping applies."""

from __future__ import annotations

import grpc

from mesh.errors import MeshError


class CopyGone(MeshError):
    """A request a native data plane sent here names a model this runtime does not hold (any more): its route was
    stale (an eviction or this runtime's restart the engine had not seen yet). UNAVAILABLE, so the client retries,
    where a router's own forward would have retried for it (the engine cannot: it forwards bodies it does not read
    back)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id} is not loaded on this runtime any more; retry")
        self.model_id = model_id


class ModelNotLoaded(MeshError):
    """The model is not loaded in this runtime (ModelInfer, ModelMetadata, modelSize)."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id} is not loaded")
        self.model_id = model_id


class ModelFileMissing(MeshError):
    """The model's file is absent: FAILED_PRECONDITION because no load was attempted (see the SPI contract)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfMemory(MeshError):
    """The runtime has no memory left for the model (whatever capacity it reported): the router makes room or
    places it elsewhere."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
