"""The transport-agnostic inference core that both front doors call (implementation in progress)."""

from __future__ import annotations

from mesh.gen import grpc_predict_v2_pb2 as pb


class DataPlane:
    """Answers server-level calls itself and forwards model calls, as bytes, to a runtime copy."""

    async def server_live(self) -> bool: ...

    async def server_ready(self) -> bool: ...

    def server_metadata(self) -> pb.ServerMetadataResponse: ...

    async def model_ready(self, name: str, version: str = "") -> bool: ...

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse: ...

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse: ...
