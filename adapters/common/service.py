"""An adapter process: mmesh.ModelRuntime over the adapter core, served by the shared runtime lifecycle."""

from __future__ import annotations

import logging

import grpc

from adapters.common.core import AdapterCore
from adapters.common.model_server import ModelServer
from adapters.common.process import serve_runtime
from adapters.common.settings import AdapterSettings
from adapters.puller import Puller
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.grpcutil import RejectingUnparseable, maps_errors

log = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 180.0
"""ModelMesh's MODEL_SERVICE_STARTUP_TIMEOUT_SECS: a JVM (TorchServe) or a big image can take a while."""


class AdapterServicer(rt_grpc.ModelRuntimeServicer):
    """Converts SPI messages to core calls; errors map to gRPC codes in one place (maps_errors)."""

    def __init__(self, core: AdapterCore) -> None:
        self._core = core

    @maps_errors
    async def loadModel(self, request: rt.LoadModelRequest, context: grpc.aio.ServicerContext) -> rt.LoadModelResponse:
        size = await self._core.load(request.modelId, request.modelType, request.modelPath, request.modelKey)
        return rt.LoadModelResponse(sizeInBytes=size)

    @maps_errors
    async def unloadModel(
        self, request: rt.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> rt.UnloadModelResponse:
        await self._core.unload(request.modelId)
        return rt.UnloadModelResponse()

    @maps_errors
    async def predictModelSize(
        self, request: rt.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> rt.PredictModelSizeResponse:
        return rt.PredictModelSizeResponse(sizeInBytes=self._core.predict_size(request.modelPath))

    @maps_errors
    async def modelSize(self, request: rt.ModelSizeRequest, context: grpc.aio.ServicerContext) -> rt.ModelSizeResponse:
        return rt.ModelSizeResponse(sizeInBytes=await self._core.model_size(request.modelId))

    @maps_errors
    async def runtimeStatus(
        self, request: rt.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> rt.RuntimeStatusResponse:
        # The contract: the router calls this at its startup and assumes nothing is loaded once it says READY.
        await self._core.purge()
        return self._core.status()


async def run_adapter(settings: AdapterSettings, server: ModelServer) -> None:
    """Wait for the model server, empty it, then serve the SPI until stopped; closes the server at the end."""
    try:
        await server.wait_ready(SERVER_START_TIMEOUT_S)
        puller = Puller(settings.models_dir, settings.storage_config_dir, settings.local_roots)
        core = AdapterCore(settings, server, puller)
        await core.purge()  # a restarted adapter finds its server holding what it loaded before

        def add_services(grpc_server: grpc.aio.Server) -> None:
            rt_grpc.add_ModelRuntimeServicer_to_server(AdapterServicer(core), RejectingUnparseable(grpc_server))

        log.info("adapter %s for %s at %s", settings.instance_id, server.runtime_version, server.data_endpoint)
        await serve_runtime(settings, core.status(), add_services)
    finally:
        await server.close()
