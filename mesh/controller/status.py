"""An InferenceService's status as KServe writes it for ModelMesh predictors: modelStatus, URLs, conditions.

mesh's vmodel status (mmesh.VModelStatusInfo) maps onto KServe's fields as modelmesh-serving maps ModelMesh's:
NOT_LOADED is Standby (registered, loads on its first request), LOADING Loading, LOADED Loaded, LOADING_FAILED
FailedToLoad; a vmodel moving to a new model is InProgress, or BlockedByFailedLoad when the new one failed. A
predictor that is not registered yet is Pending. Standby and Loaded predictors are Ready: both answer requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mesh.gen import model_mesh_pb2 as mm

PENDING, STANDBY, LOADING, LOADED, FAILED_TO_LOAD = "Pending", "Standby", "Loading", "Loaded", "FailedToLoad"
UP_TO_DATE, IN_PROGRESS, BLOCKED, INVALID_SPEC = "UpToDate", "InProgress", "BlockedByFailedLoad", "InvalidSpec"
MODEL_LOAD_FAILED = "ModelLoadFailed"
INVALID_PREDICTOR_SPEC = "InvalidPredictorSpec"

_STATES = {
    mm.ModelStatusInfo.NOT_FOUND: PENDING,
    mm.ModelStatusInfo.NOT_LOADED: STANDBY,
    mm.ModelStatusInfo.LOADING: LOADING,
    mm.ModelStatusInfo.LOADED: LOADED,
    mm.ModelStatusInfo.LOADING_FAILED: FAILED_TO_LOAD,
    mm.ModelStatusInfo.UNKNOWN: PENDING,
}
_TRANSITIONS = {
    mm.VModelStatusInfo.DEFINED: UP_TO_DATE,
    mm.VModelStatusInfo.TRANSITIONING: IN_PROGRESS,
    mm.VModelStatusInfo.TRANSITION_FAILED: BLOCKED,
}
READY_STATES = (LOADED, STANDBY)
# States that change without any event the controller sees: worth looking at again soon.
UNSETTLED_STATES = (PENDING, LOADING)


@dataclass(frozen=True)
class Urls:
    grpc: str
    rest: str


def invalid(reason: str, message: str) -> dict[str, Any]:
    """modelStatus of a predictor that cannot be served as it is (spec, or no runtime for it)."""
    return {
        "transitionStatus": INVALID_SPEC,
        "states": {"activeModelState": FAILED_TO_LOAD},
        "copies": {"failedCopies": 0, "totalCopies": 0},
        "lastFailureInfo": {"reason": reason, "message": message},
    }


def pending() -> dict[str, Any]:
    """modelStatus of a predictor not registered yet (its runtime is starting, or mesh is not reachable)."""
    return {
        "transitionStatus": IN_PROGRESS,
        "states": {"activeModelState": PENDING},
        "copies": {"failedCopies": 0, "totalCopies": 0},
    }


def from_vmodel(vmodel: mm.VModelStatusInfo) -> dict[str, Any]:
    """modelStatus of a registered predictor, from its vmodel's status."""
    active = vmodel.activeModelStatus
    states = {"activeModelState": _STATES.get(active.status, PENDING)}
    transition = _TRANSITIONS.get(vmodel.status, IN_PROGRESS)
    failing = active
    if vmodel.targetModelId and vmodel.targetModelId != vmodel.activeModelId:
        states["targetModelState"] = _STATES.get(vmodel.targetModelStatus.status, PENDING)
        failing = vmodel.targetModelStatus
        failing_id = vmodel.targetModelId
    else:
        failing_id = vmodel.activeModelId
    copies = active.modelCopyInfos
    result: dict[str, Any] = {
        "transitionStatus": transition,
        "states": states,
        "copies": {
            "failedCopies": sum(1 for c in copies if c.copyStatus == mm.ModelStatusInfo.LOADING_FAILED),
            "totalCopies": sum(1 for c in copies if c.copyStatus == mm.ModelStatusInfo.LOADED),
        },
    }
    if failing.status == mm.ModelStatusInfo.LOADING_FAILED and failing.errors:
        # mesh reports each failure as "<instance>: <message>".
        location, _, message = failing.errors[0].partition(": ")
        info = {"reason": MODEL_LOAD_FAILED, "message": message or location, "modelRevisionName": failing_id}
        if message:
            info["location"] = location
        failed_times = [c.time for c in failing.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADING_FAILED]
        if failed_times:
            info["time"] = rfc3339(max(failed_times) / 1000)
        result["lastFailureInfo"] = info
    return result


def settled(model_status: dict[str, Any]) -> bool:
    """Whether nothing but an event can change this status (so no need to look again soon)."""
    states = model_status.get("states", {})
    return states.get("activeModelState") not in UNSETTLED_STATES and states.get("targetModelState") not in (
        *UNSETTLED_STATES,
        STANDBY,
    )


def isvc_status(
    model_status: dict[str, Any],
    urls: Urls | None,
    generation: int | None,
    previous: dict[str, Any],
    waiting_for: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    """The whole status to write: previous conditions keep their lastTransitionTime while unchanged."""
    active = model_status["states"]["activeModelState"]
    ready = active in READY_STATES
    failure = model_status.get("lastFailureInfo") or {}
    reason = "" if ready else failure.get("reason") or active
    message = "" if ready else failure.get("message") or waiting_for
    status: dict[str, Any] = {"modelStatus": model_status}
    if generation is not None:
        status["observedGeneration"] = generation
    if urls is not None:
        status["url"] = urls.grpc
        status["address"] = {"url": urls.grpc}
        status["components"] = {"predictor": {"grpcUrl": urls.grpc, "restUrl": urls.rest, "url": urls.grpc}}
    old_conditions = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, dict)}
    stamp = rfc3339(time.time() if now is None else now)
    conditions = []
    for kind in ("PredictorReady", "Ready"):
        condition = {"type": kind, "status": "True" if ready else "False"}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        old = old_conditions.get(kind, {})
        unchanged = old.get("status") == condition["status"] and "lastTransitionTime" in old
        condition["lastTransitionTime"] = old["lastTransitionTime"] if unchanged else stamp
        conditions.append(condition)
    status["conditions"] = conditions
    return status


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
