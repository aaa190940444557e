"""The gRPC front door: KServe v2 inference (forwarded as bytes), the ModelMesh management API, health.

Inference methods go through one generic handler with identity (de)serializers, so a request body is never
decoded here; only the routing headers and, lacking those, field 1 of the body are read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cachetools import LRUCache
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.access_log import AccessNote
from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.grpcutil import Behavior, RejectingUnparseable, WrapBehavior, maps_errors
from mesh.metrics import RouterMetrics, method_label
from mesh.placement.manager import PlacementManager
from mesh.placement.records import ModelRecord, checked_labels
from mesh.proxy import wire
from mesh.proxy.dataplane import INFERENCE_SERVICE, ROUTED_BY_FIELD_1, STREAMED_BY_FIELD_1, DataPlane, Target
from mesh.proxy.streams import relay
from mesh.registry import ModelRegistry, ModelStatus, Naming, VModelStatus
from mesh.registry.ids import check_id
from mesh.tls import ServerTLS

log = logging.getLogger(__name__)

MODEL_ID_HEADERS = ("mm-model-id", "mm-model-id-bin")
VMODEL_ID_HEADERS = ("mm-vmodel-id", "mm-vmodel-id-bin")
# Headers that steer mesh itself and are not passed on to the runtime.
ROUTING_HEADERS = frozenset(MODEL_ID_HEADERS + VMODEL_ID_HEADERS)
# Set by gRPC on each hop; forwarding the client's would clash with the router's own.
HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding", "grpc-timeout"})


def _header_value(key: str, value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"the {key} header is not UTF-8 (byte {exc.start})") from None


def header_target(metadata: Any) -> Target | None:
    """The model named by mm-model-id / mm-vmodel-id metadata, if any; both at once is an error."""
    model = vmodel = None
    for key, value in metadata or ():
        if key in MODEL_ID_HEADERS:
            model = _header_value(key, value)
        elif key in VMODEL_ID_HEADERS:
            vmodel = _header_value(key, value)
    if model and vmodel:
        raise InvalidArgument("send only one of the mm-model-id and mm-vmodel-id headers")
    if vmodel:
        return Target(vmodel, Naming.VMODEL_HEADER)
    if model:
        return Target(model, Naming.MODEL_HEADER)
    return None


def observing(metrics: RouterMetrics) -> WrapBehavior:
    """A handler decorator reporting each call's method, status code and latency (modelmesh_api_request_*)."""

    def wrap(method: str, behavior: Behavior) -> Behavior:
        label = method_label(method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                code = grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                metrics.request(label, code, started)

        return call

    return wrap


class InferenceHandler(grpc.GenericRpcHandler):
    """Routes GRPCInferenceService calls, and any unary call carrying a routing header, to a runtime copy."""

    def __init__(self, dataplane: DataPlane, metrics: RouterMetrics) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        observe = observing(metrics)
        local: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]] = {
            f"/{INFERENCE_SERVICE}/ServerLive": self._server_live,
            f"/{INFERENCE_SERVICE}/ServerReady": self._server_ready,
            f"/{INFERENCE_SERVICE}/ServerMetadata": self._server_metadata,
            f"/{INFERENCE_SERVICE}/ModelReady": self._model_ready,
        }
        self._local = {path: grpc.unary_unary_rpc_method_handler(observe(path, fn)) for path, fn in local.items()}
        # Bounded: with a routing header any method path is forwarded, and clients choose the paths.
        self._forwarders: LRUCache[str, grpc.RpcMethodHandler] = LRUCache(maxsize=256)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        handler = self._local.get(method)
        if handler is not None:
            return handler
        header_routed = any(k in ROUTING_HEADERS for k, _ in details.invocation_metadata or ())
        if method in ROUTED_BY_FIELD_1 or method in STREAMED_BY_FIELD_1 or header_routed:
            handler = self._forwarders.get(method)
            if handler is None:
                label = method_label(method)
                if method in ROUTED_BY_FIELD_1:
                    handler = grpc.unary_unary_rpc_method_handler(functools.partial(self._forward, method, label))
                else:
                    handler = grpc.stream_stream_rpc_method_handler(functools.partial(self._relay, method, label))
                self._forwarders[method] = handler
            return handler
        return None

    async def _relay(
        self, method: str, label: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """A streamed call (or one routed by header alone), relayed to a copy (streams.py); one access line at
        its end."""
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        note = AccessNote()
        sent = received = 0
        target: Target | None = None
        try:
            metadata = context.invocation_metadata()
            target = header_target(metadata)
            if target is None and method not in STREAMED_BY_FIELD_1:
                raise InvalidArgument(f"{method} needs an mm-model-id or mm-vmodel-id header")
            passed = tuple((k, v) for k, v in metadata or () if k not in ROUTING_HEADERS and k not in HOP_HEADERS)

            async def counted() -> AsyncIterator[bytes]:
                nonlocal received
                async for message in requests:
                    received += len(message)
                    yield message

            responses = relay(self._dataplane, method, counted(), target, passed, context.time_remaining(), note)
            async for response in responses:
                sent += len(response)
                yield response
            code = grpc.StatusCode.OK
        except MeshError as exc:
            code = exc.grpc_code
            await context.abort(exc.grpc_code, exc.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            name = target.name if target is not None else note.model_id
            self._metrics.request(label, code, started, name)
            if self._dataplane.access_log:
                self._dataplane.log_access(method, name, note, code.name, started, received, sent)

    @maps_errors
    async def _forward(self, method: str, label: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        name = ""
        try:
            metadata = context.invocation_metadata()
            target = header_target(metadata)
            if target is None:
                if method not in ROUTED_BY_FIELD_1:
                    raise InvalidArgument(f"{method} needs an mm-model-id or mm-vmodel-id header")
                target = Target(wire.read_string(request, 1))
                if not target.name:
                    raise InvalidArgument("the request names no model: set model_name or an mm-model-id header")
            name = target.name
            remaining = context.time_remaining()
            passed = tuple((k, v) for k, v in metadata or () if k not in ROUTING_HEADERS and k not in HOP_HEADERS)
            response = await self._dataplane.forward(method, request, target, remaining, passed)
            code = grpc.StatusCode.OK
            return response
        except MeshError as exc:
            code = exc.grpc_code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._metrics.request(label, code, started, name)

    async def _server_live(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=await self._dataplane.server_live()).SerializeToString()

    async def _server_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=await self._dataplane.server_ready()).SerializeToString()

    async def _server_metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._dataplane.server_metadata().SerializeToString()

    @maps_errors
    async def _model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            parsed = pb.ModelReadyRequest.FromString(request)
        except Exception as exc:  # protobuf's DecodeError has no stable public home
            raise InvalidArgument(f"unparseable ModelReadyRequest: {exc}") from exc
        target = header_target(context.invocation_metadata())
        ready = await self._dataplane.model_ready(target.name if target else parsed.name, parsed.version)
        return pb.ModelReadyResponse(ready=ready).SerializeToString()


def status_info(status: ModelStatus) -> mm.ModelStatusInfo:
    return mm.ModelStatusInfo(
        status=status.state.value,
        errors=status.errors,
        modelCopyInfos=[
            mm.ModelStatusInfo.ModelCopyInfo(location=c.instance_id, copyStatus=c.state.value, time=c.time_ms)
            for c in status.copies
        ],
    )


def vmodel_status_info(status: VModelStatus) -> mm.VModelStatusInfo:
    return mm.VModelStatusInfo(
        status=status.state.value,
        activeModelId=status.active_model_id,
        targetModelId=status.target_model_id,
        activeModelStatus=status_info(status.active),
        targetModelStatus=status_info(status.target),
        owner=status.owner,
        meshTargetCopiesWanted=status.copies_wanted,
    )


def _model_record(
    model_id: str, info: mm.ModelInfo, request: mm.RegisterModelRequest | mm.SetVModelRequest
) -> ModelRecord:
    """The model a registerModel (or a setVModel with modelInfo) describes, mesh's extension fields included."""
    try:
        required = checked_labels(request.meshRequiredLabels)
    except ValueError as exc:
        raise InvalidArgument(f"model '{model_id}': required {exc}") from None
    try:
        preferred = checked_labels(request.meshPreferredLabels)
    except ValueError as exc:
        raise InvalidArgument(f"model '{model_id}': preferred {exc}") from None
    return ModelRecord(
        model_id,
        info.type,
        info.path,
        info.key,
        labels=required,
        pinned=request.meshPinned,
        min_copies=request.meshMinCopies,
        preferred_labels=preferred,
    )


class ManagementServicer(mm_grpc.ModelMeshServicer):
    """mmesh.ModelMesh: converts messages and calls the registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    @maps_errors
    async def registerModel(self, request: mm.RegisterModelRequest, context: Any) -> mm.ModelStatusInfo:
        model = _model_record(request.modelId, request.modelInfo, request)
        return status_info(await self._registry.register(model, request.loadNow, request.sync))

    @maps_errors
    async def unregisterModel(self, request: mm.UnregisterModelRequest, context: Any) -> mm.UnregisterModelResponse:
        await self._registry.unregister(request.modelId)
        return mm.UnregisterModelResponse()

    @maps_errors
    async def getModelStatus(self, request: mm.GetStatusRequest, context: Any) -> mm.ModelStatusInfo:
        return status_info(self._registry.status(request.modelId))

    @maps_errors
    async def ensureLoaded(self, request: mm.EnsureLoadedRequest, context: Any) -> mm.ModelStatusInfo:
        return status_info(await self._registry.ensure_loaded(request.modelId, request.sync))

    @maps_errors
    async def setVModel(self, request: mm.SetVModelRequest, context: Any) -> mm.VModelStatusInfo:
        status = await self._registry.set_vmodel(
            request.vModelId,
            request.targetModelId,
            model=_model_record(request.targetModelId, request.modelInfo, request)
            if request.HasField("modelInfo")
            else None,
            update_only=request.updateOnly,
            auto_delete=request.autoDeleteTargetModel,
            load_now=request.loadNow,
            force=request.force,
            sync=request.sync,
            expected_target=request.expectedTargetModelId,
            owner=request.owner,
        )
        return vmodel_status_info(status)

    @maps_errors
    async def deleteVModel(self, request: mm.DeleteVModelRequest, context: Any) -> mm.DeleteVModelResponse:
        await self._registry.delete_vmodel(request.vModelId, request.owner)
        return mm.DeleteVModelResponse()

    @maps_errors
    async def getVModelStatus(self, request: mm.GetVModelStatusRequest, context: Any) -> mm.VModelStatusInfo:
        return vmodel_status_info(self._registry.vmodel_status(request.vModelId, request.owner))


class AdminServicer(admin_grpc.MeshAdminServicer):
    """meshadmin.MeshAdmin: listings the KServe API has no call for."""

    def __init__(self, registry: ModelRegistry, manager: PlacementManager) -> None:
        self._registry = registry
        self._manager = manager

    @maps_errors
    async def ListModels(self, request: admin.ListModelsRequest, context: Any) -> admin.ListModelsResponse:
        registry = self._registry
        models = [
            admin.ModelEntry(
                modelId=m.model_id,
                modelInfo=mm.ModelInfo(type=m.model_type, path=m.path, key=m.key),
                status=status_info(registry.status(m.model_id)),
                sizeInBytes=registry.size_bytes(m.model_id),
                lastUsedTime=registry.last_used_ms(m.model_id),
                requiredLabels=m.labels,
                pinned=m.pinned,
                minCopies=m.min_copies,
                preferredLabels=m.preferred_labels,
            )
            for m in sorted(registry.models(), key=lambda m: m.model_id)
        ]
        vmodels = [
            admin.VModelEntry(vModelId=v.vmodel_id, status=vmodel_status_info(registry.vmodel_status(v.vmodel_id)))
            for v in sorted(registry.vmodels(), key=lambda v: v.vmodel_id)
        ]
        return admin.ListModelsResponse(models=models, vmodels=vmodels)

    @maps_errors
    async def ExplainModel(self, request: admin.ExplainModelRequest, context: Any) -> admin.ExplainModelResponse:
        check_id(request.modelId, "modelId")
        return admin.ExplainModelResponse(json=json.dumps(await self._manager.explain(request.modelId)))

    @maps_errors
    async def ListInstances(self, request: admin.ListInstancesRequest, context: Any) -> admin.ListInstancesResponse:
        manager = self._manager
        return admin.ListInstancesResponse(
            instances=[
                admin.InstanceEntry(
                    instanceId=v.record.instance_id,
                    endpoint=v.record.endpoint,
                    capacityInBytes=v.record.capacity_bytes,
                    usedInBytes=v.used_bytes,
                    modelTypes=v.record.model_types,
                    labels=v.record.labels,
                    models=sorted(c.model_id for c in v.copies),
                    loadsInFlight=v.loads_in_flight,
                    startedTime=v.record.started_ms,
                    reachable=manager.health.answering(v.record.instance_id),
                    deviceCapacityInBytes=v.record.device_capacity_bytes,
                    deviceUsedInBytes=v.used_device_bytes,
                    draining=v.record.draining,
                )
                for v in sorted(manager.instance_views(), key=lambda v: v.record.instance_id)
            ]
        )


async def start_grpc_server(
    dataplane: DataPlane,
    registry: ModelRegistry,
    manager: PlacementManager,
    metrics: RouterMetrics,
    host: str,
    port: int,
    max_message_bytes: int,
    tls: ServerTLS | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Bind and start (TLS only, when tls is given); returns the server, the bound port (port 0 picks one) and
    the health servicer."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )
    observe = observing(metrics)
    mm_grpc.add_ModelMeshServicer_to_server(ManagementServicer(registry), RejectingUnparseable(server, observe))
    admin_grpc.add_MeshAdminServicer_to_server(AdminServicer(registry, manager), RejectingUnparseable(server, observe))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers([InferenceHandler(dataplane, metrics)])
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    return server, bound, health_servicer


HEALTH_SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTH_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
