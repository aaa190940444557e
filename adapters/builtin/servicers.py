"""The two gRPC services over the core: they convert messages and map errors, nothing more."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc

import mesh
from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.models import MODEL_TYPES, TensorSpec
from adapters.builtin.models.base import Model
from adapters.builtin.settings import RuntimeSettings
from adapters.common.errors import CopyGone, ModelNotLoaded
from mesh.errors import MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.grpcutil import maps_errors

log = logging.getLogger(__name__)

SERVER_NAME = "mesh-builtin-runtime"
RUNTIME_VERSION = f"{SERVER_NAME}/{mesh.__version__}"
# The methods the router may forward here, each with the field path of its model name (field 1 in both).
MODEL_ID_HEADER = "mm-model-id"
FORWARDED_METHODS = (
    "inference.GRPCInferenceService/ModelInfer",
    "inference.GRPCInferenceService/ModelMetadata",
    "inference.GRPCInferenceService/ModelStreamInfer",
)


class RuntimeServicer(rt_grpc.ModelRuntimeServicer):
    """mmesh.ModelRuntime, the SPI the router drives."""

    def __init__(self, core: BuiltinRuntime, settings: RuntimeSettings) -> None:
        self._core = core
        self._settings = settings

    @maps_errors
    async def loadModel(self, request: rt.LoadModelRequest, context: grpc.aio.ServicerContext) -> rt.LoadModelResponse:
        log.debug("loadModel %s (type %s) requested", request.modelId, request.modelType)
        model = await self._core.load(request.modelId, request.modelType, request.modelPath)
        return rt.LoadModelResponse(sizeInBytes=model.size_bytes, meshDeviceSizeInBytes=model.device_bytes)

    @maps_errors
    async def unloadModel(
        self, request: rt.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> rt.UnloadModelResponse:
        self._core.unload(request.modelId)
        return rt.UnloadModelResponse()

    @maps_errors
    async def predictModelSize(
        self, request: rt.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> rt.PredictModelSizeResponse:
        size, device = self._core.predict_size(request.modelType, request.modelPath)
        return rt.PredictModelSizeResponse(sizeInBytes=size, meshDeviceSizeInBytes=device)

    @maps_errors
    async def modelSize(self, request: rt.ModelSizeRequest, context: grpc.aio.ServicerContext) -> rt.ModelSizeResponse:
        model = self._core.model(request.modelId)
        return rt.ModelSizeResponse(sizeInBytes=model.size_bytes, meshDeviceSizeInBytes=model.device_bytes)

    @maps_errors
    async def runtimeStatus(
        self, request: rt.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> rt.RuntimeStatusResponse:
        # The contract: the router calls this at its startup and assumes nothing is loaded once it says READY.
        self._core.purge()
        return status_response(self._settings)


def status_response(settings: RuntimeSettings) -> rt.RuntimeStatusResponse:
    """What this runtime is: capacity, concurrency, timeouts, and the methods the router may forward."""
    return rt.RuntimeStatusResponse(
        status=rt.RuntimeStatusResponse.READY,
        capacityInBytes=settings.capacity_bytes,
        maxLoadingConcurrency=settings.max_loading_concurrency,
        modelLoadingTimeoutMs=settings.load_timeout_ms,
        defaultModelSizeInBytes=settings.default_model_size_bytes,
        runtimeVersion=RUNTIME_VERSION,
        methodInfos={method: rt.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1]) for method in FORWARDED_METHODS},
        meshModelTypes=sorted(MODEL_TYPES),
        meshReadsModelIdHeader=True,
        meshLabels=settings.labels,
        meshDevices=[rt.DeviceMemory(capacityInBytes=c) for c in settings.device_capacity_bytes],
    )


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def model_id_header(context: grpc.aio.ServicerContext) -> str:
    """The model id a proxy put in the mm-model-id header ("" when none): it names the model before the body does
    (the body may name a vmodel; the native data plane forwards bodies unchanged)."""
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the loaded models (a model's name is its mesh model id)."""

    def __init__(self, core: BuiltinRuntime) -> None:
        self._core = core

    @maps_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @maps_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    @maps_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=mesh.__version__)

    @maps_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._core.is_loaded(request.name))

    @maps_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        header = model_id_header(context)
        name = header or request.name
        model = self._model(name, routed_by_header=bool(header))
        return pb.ModelMetadataResponse(
            name=name,
            platform=model.platform,
            inputs=_tensor_metadata(model.inputs),
            outputs=_tensor_metadata(model.outputs),
        )

    @maps_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        model_id = model_id_header(context)
        if model_id:
            self._model(model_id, routed_by_header=True)
            request.model_name = model_id
        return await self._core.infer(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's streaming extension: each request's responses in turn. A model that is not here ends the stream
        with its status (NOT_FOUND, or UNAVAILABLE when the engine named it by header), before any response, so
        that a router can look elsewhere; a request the model refuses gets an error_message in the stream, as
        Triton answers, and the stream goes on."""
        header = model_id_header(context)
        async for request in requests:
            if header:
                request.model_name = header
            try:
                self._model(request.model_name, routed_by_header=bool(header))
            except MeshError as exc:
                await context.abort(exc.grpc_code, exc.message)
            try:
                async for response in self._core.stream(request):
                    yield pb.ModelStreamInferResponse(infer_response=response)
            except MeshError as exc:
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                yield pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)

    def _model(self, model_id: str, routed_by_header: bool) -> Model:
        """The loaded model. Missing: NOT_FOUND, or UNAVAILABLE (CopyGone) for a request that named it in the
        mm-model-id header, which only the native data plane sends (a router's own forward strips it, and retries a
        NOT_FOUND itself)."""
        try:
            return self._core.model(model_id)
        except ModelNotLoaded:
            if routed_by_header:
                raise CopyGone(model_id) from None
            raise
