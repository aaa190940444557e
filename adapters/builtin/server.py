"""The built-in runtime process: its two services over one core, run by the shared runtime-process lifecycle."""

from __future__ import annotations

import logging

import grpc

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.metrics import RuntimeMetrics
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer, status_response
from adapters.builtin.settings import RuntimeSettings
from adapters.common.process import serve_runtime
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.grpcutil import RejectingUnparseable

log = logging.getLogger(__name__)


async def serve(settings: RuntimeSettings) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully and removes the port file."""
    metrics = RuntimeMetrics()
    core = BuiltinRuntime(settings, metrics)

    def add_services(server: grpc.aio.Server) -> None:
        rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, settings), RejectingUnparseable(server))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), RejectingUnparseable(server))

    log.info("built-in runtime %s, capacity %d bytes", settings.instance_id, settings.capacity_bytes)
    await serve_runtime(settings, status_response(settings), add_services, metrics.registry)
