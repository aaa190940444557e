"""The memory a model's next copy is placed by, before it loads: what its last copy measured, else what a
runtime that takes it predicts (predictModelSize, host and device bytes), else that runtime's default."""

from __future__ import annotations

import grpc

from mesh.placement.instances import RuntimeClients
from mesh.placement.records import Footprint, ModelRecord
from mesh.placement.view import LocalView


async def size_to_place(view: LocalView, clients: RuntimeClients, model: ModelRecord, timeout_s: float) -> Footprint:
    placement = view.placements.get(model.model_id)
    if placement and placement.record.size_bytes:
        return placement.record.footprint
    candidates = [v.record for v in view.instances.values() if v.record.supports(model.model_type, model.labels)]
    if not candidates:
        return Footprint(0)
    try:
        predicted = await clients.get(candidates[0].instance_id).predict_size(model, timeout_s)
    except grpc.aio.AioRpcError:
        predicted = Footprint(0)
    return Footprint(predicted.size_bytes or candidates[0].default_model_size, predicted.device_bytes)
