"""The transport-agnostic inference core that both front doors call.

Server-level calls are answered here. Model calls are forwarded as bytes to a runtime copy: the request is
never decoded; at most the model id is spliced into field 1 when the runtime knows the model by another name
(a vmodel, or a header-routed request whose body names something else).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from mesh import __version__, access_log
from mesh.access_log import AccessNote
from mesh.errors import MeshError, ModelNotFound, RuntimeFailure, Unavailable
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.health import Readiness
from mesh.metrics import RouterMetrics
from mesh.payload_log import Payload, PayloadLog
from mesh.placement.copies import CopyLease
from mesh.placement.manager import PlacementManager
from mesh.proxy import wire
from mesh.registry import ModelRegistry, ModelState, Naming

INFERENCE_SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{INFERENCE_SERVICE}/ModelInfer"
MODEL_METADATA = f"/{INFERENCE_SERVICE}/ModelMetadata"
# Methods whose request names the model in field 1 (ModelInferRequest.model_name, ModelMetadataRequest.name).
# TorchServe's own Predictions too, as ModelMesh's dataplane config has it: its model_name is field 1 as well.
TORCHSERVE_PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
ROUTED_BY_FIELD_1 = frozenset({MODEL_INFER, MODEL_METADATA, TORCHSERVE_PREDICTIONS})
# Streamed methods whose messages name the model in field 1 (the first message routes the stream): Triton's
# ModelStreamInfer, TorchServe's StreamPredictions. Every other method carrying a routing header is relayed as a
# stream too (mesh/proxy/streams.py): a unary call is a stream of one message each way on the wire.
MODEL_STREAM_INFER = f"/{INFERENCE_SERVICE}/ModelStreamInfer"
TORCHSERVE_STREAM_PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions"
STREAMED_BY_FIELD_1 = frozenset({MODEL_STREAM_INFER, TORCHSERVE_STREAM_PREDICTIONS})
# Runtime answers that mean "that copy is not there any more": retry once on another copy or a fresh load.
COPY_GONE = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE})
# The methods sent again after such an answer: inference and metadata, which change nothing in the server, so a
# second run of a request the dead copy may have run already is harmless. Any other method (routed by header)
# gets the UNAVAILABLE, for its client to decide.
RETRIED = frozenset(
    {
        MODEL_INFER,
        MODEL_METADATA,
        TORCHSERVE_PREDICTIONS,
        "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelInfer",
        "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelMetadata",
    }
)

ANSWER_CHECK_S = 0.5
"""After an UNAVAILABLE, how long the runtime's channel gets to (re)connect before the instance counts as down."""

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True, slots=True)
class Target:
    """What a request names: a model or vmodel id, and where the name came from."""

    name: str
    naming: Naming = Naming.BODY


class DataPlane:
    """The inference core both front doors call: server-level answers (live, ready, metadata) and forwarding a
    model's request bytes to a copy. Owns no state of its own: names are the registry's, copies placement's; it
    owns the rules of a forward (which field names the model, the one retry when a copy turns out gone, how a
    runtime's error reaches the client)."""

    def __init__(
        self,
        registry: ModelRegistry,
        manager: PlacementManager,
        readiness: Readiness,
        metrics: RouterMetrics,
        access_log: bool = False,
        payloads: PayloadLog | None = None,
    ) -> None:
        self._registry = registry
        self._manager = manager
        self._readiness = readiness
        self._metrics = metrics
        self._access_log = access_log
        self._payloads = payloads or PayloadLog(())

    async def server_live(self) -> bool:
        """Live while the process serves, ready or not: liveness is not readiness."""
        return True

    async def server_ready(self) -> bool:
        """Ready when the store answers and a runtime instance is reachable: the answer gRPC health gives too."""
        return self._readiness.ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="mesh", version=__version__, extensions=["binary_tensor_data"])

    async def model_ready(self, name: str, version: str = "") -> bool:
        """A registered model is servable (mesh loads it on demand) unless its loads are failing."""
        model_id = await self._registry.resolve_fresh(name)
        return self._registry.status(model_id).state is not ModelState.LOADING_FAILED

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=name, version=version).SerializeToString()
        return pb.ModelMetadataResponse.FromString(await self.forward(MODEL_METADATA, request, Target(name)))

    async def model_infer(self, request: pb.ModelInferRequest, metadata: Metadata = ()) -> pb.ModelInferResponse:
        data = await self.forward(MODEL_INFER, request.SerializeToString(), Target(request.model_name), None, metadata)
        return pb.ModelInferResponse.FromString(data)

    async def forward(
        self, method: str, request: bytes, target: Target, timeout: float | None = None, metadata: Metadata = ()
    ) -> bytes:
        """Send request bytes to a copy of the target model (loading one if needed); the response bytes."""
        if not (self._access_log or self._payloads.enabled):
            return await self._forward(method, request, target, timeout, metadata, None)
        started, note, code, response = time.perf_counter(), AccessNote(), "OK", b""
        try:
            response = await self._forward(method, request, target, timeout, metadata, note)
            return response
        except MeshError as exc:
            code = exc.grpc_code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            if self._access_log:
                self.log_access(method, target.name, note, code, started, len(request), len(response))
            if code == "OK" and self._payloads.enabled:
                self._offer_payload(method, request, response, target.name, note, metadata)

    def _offer_payload(
        self, method: str, request: bytes, response: bytes, asked: str, note: AccessNote, metadata: Metadata
    ) -> None:
        def payload() -> Payload:
            headers = {k: v for k, v in metadata if isinstance(v, str)}
            return Payload(method, asked, note.model_id, note.instance_id, request, response, headers)

        self._payloads.offer(payload, asked, note.model_id)

    async def resolve(self, target: Target) -> str:
        """The model id a request's target names (its vmodel's, its namespace's), or ModelNotFound."""
        try:
            return self._registry.resolve(target.name, target.naming)
        except ModelNotFound:
            return await self._registry.resolve_fresh(target.name, target.naming)

    async def copy_of(self, model_id: str) -> tuple[CopyLease, bool]:
        """A lease on a copy of the model (loading one if needed), and whether it was loaded already."""
        lease = self._manager.loaded_copy(model_id)
        return (lease, True) if lease is not None else (await self._manager.await_copy(model_id), False)

    def invoked(self, method: str, model_id: str, started: float, sent: int, received: int = -1) -> None:
        """A runtime's call ended: its time and bytes (received -1: with an error status), as modelmesh_invoke_model
        and the size histograms count them."""
        self._metrics.invoked(method, model_id, started, sent, received)

    async def copy_failed(self, exc: grpc.aio.AioRpcError, model_id: str, lease: CopyLease) -> Exception:
        """What a runtime's failed call means for its copy, as the error to give the client. A NOT_FOUND or
        UNAVAILABLE drops the copy (it is gone, or its instance is), unless the server still answers: then its
        UNAVAILABLE was its own (a handler's error, a full queue), and the copy and the instance stay."""
        if exc.code() in COPY_GONE and not (
            exc.code() is grpc.StatusCode.UNAVAILABLE and await lease.client.answers(ANSWER_CHECK_S)
        ):
            await self._manager.copy_lost(
                model_id, lease.instance_id, exc.details() or exc.code().name, exc.code() is grpc.StatusCode.UNAVAILABLE
            )
        return _runtime_error(exc, model_id, lease)

    @property
    def access_log(self) -> bool:
        return self._access_log

    def log_access(
        self, method: str, asked: str, note: AccessNote, code: str, started: float, received: int, sent: int
    ) -> None:
        """One access line (mesh/access_log.py), with the model's size as placed (0: unknown)."""
        model_bytes = self._registry.size_bytes(note.model_id) if note.model_id else 0
        access_log.write(method, asked, note, code, started, received, sent, model_bytes)

    async def _forward(
        self,
        method: str,
        request: bytes,
        target: Target,
        timeout: float | None,
        metadata: Metadata,
        note: AccessNote | None,
    ) -> bytes:
        try:
            model_id = self._registry.resolve(target.name, target.naming)
        except ModelNotFound:
            model_id = await self._registry.resolve_fresh(target.name, target.naming)
        metrics = self._metrics
        attempts = (1, 2) if method in RETRIED else (1,)
        for attempt in attempts:
            lease = self._manager.loaded_copy(model_id)
            if note is not None:
                note.model_id, note.hit = model_id, lease is not None and attempt == 1
            lease = lease or await self._manager.await_copy(model_id)
            if note is not None:
                note.instance_id = lease.instance_id
            with lease:
                body = self.with_model_id(method, request, target, model_id, lease)
                started = time.perf_counter()
                try:
                    response = await lease.client.method(method)(body, timeout=timeout, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in COPY_GONE:
                        metrics.invoked(method, model_id, started, len(body))
                        raise _runtime_error(exc, model_id, lease) from exc
                    error = await self.copy_failed(exc, model_id, lease)
                    if attempt < attempts[-1]:
                        continue  # a unary call that failed returned no response: sending it again is safe
                    raise error from exc
                metrics.invoked(method, model_id, started, len(body), len(response))
                return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def with_model_id(method: str, request: bytes, target: Target, model_id: str, lease: CopyLease) -> bytes:
        """The request with the concrete model id where the runtime reads it, if it names something else."""
        if target.naming is Naming.BODY and target.name == model_id:
            return request
        path = lease.methods.get(method.lstrip("/"))
        if path is None and (method in ROUTED_BY_FIELD_1 or method in STREAMED_BY_FIELD_1):
            path = (1,)
        if path != (1,):
            return request  # nested injection paths arrive with the adapters that need them
        if wire.read_string(request, 1) == model_id:
            return request
        return wire.replace_string(request, 1, model_id)


def _runtime_error(exc: grpc.aio.AioRpcError, model_id: str, lease: CopyLease) -> Exception:
    code = exc.code()
    if code in COPY_GONE:
        return Unavailable(
            f"runtime instance '{lease.instance_id}' serving model '{model_id}' is unavailable: {exc.details()}"
        )
    return RuntimeFailure(code, exc.details() or code.name)
