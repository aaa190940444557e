"""Runtime-side errors (built-in runtime and adapters), in mesh's one hierarchy so the same gRPC mapping applies."""

from __future__ import annotations

import grpc

from mesh.errors import MeshError


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
