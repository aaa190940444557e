"""`mesh status`: the router's instances and models, from meshadmin.ListInstances and ListModels.

`snapshot` turns the two listings into plain data (what `--json` prints, with stable snake_case names);
`render` lays that data out as two tables for a person.
"""

from __future__ import annotations

from typing import Any

import grpc

from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm

STATE_NAMES = {v: k for k, v in mm.ModelStatusInfo.ModelStatus.items()}
VMODEL_STATE_NAMES = {v: k for k, v in mm.VModelStatusInfo.VModelStatus.items()}
FAILED = mm.ModelStatusInfo.LOADING_FAILED


# A listing of many thousands of models exceeds grpc's default 4 MiB receive limit.
def fetch(channel: grpc.Channel, timeout: float) -> dict[str, Any]:
    """Ask the router on `channel` for both listings; the snapshot of them."""
    stub = admin_grpc.MeshAdminStub(channel)
    instances = stub.ListInstances(admin.ListInstancesRequest(), timeout=timeout)
    models = stub.ListModels(admin.ListModelsRequest(), timeout=timeout)
    return snapshot(instances, models)


def snapshot(instances: admin.ListInstancesResponse, models: admin.ListModelsResponse) -> dict[str, Any]:
    return {
        "instances": [_instance(i) for i in instances.instances],
        "models": [_model(m) for m in models.models],
        "vmodels": [vmodel_row(v) for v in models.vmodels],
    }


def _instance(entry: admin.InstanceEntry) -> dict[str, Any]:
    return {
        "id": entry.instanceId,
        "endpoint": entry.endpoint,
        "capacity_bytes": entry.capacityInBytes,
        "used_bytes": entry.usedInBytes,
        "model_types": list(entry.modelTypes),
        "models": list(entry.models),
        "loads_in_flight": entry.loadsInFlight,
        "started_ms": entry.startedTime,
        "reachable": entry.reachable,
    }


def _model(entry: admin.ModelEntry) -> dict[str, Any]:
    status = entry.status
    copies = [c for c in status.modelCopyInfos if c.copyStatus != FAILED]
    failed = [c for c in status.modelCopyInfos if c.copyStatus == FAILED]
    # The status carries each failure's message as "<instance>: <message>", in no particular order.
    messages = {}
    for error in status.errors:
        instance, _, message = error.partition(": ")
        messages[instance] = message
    return {
        "id": entry.modelId,
        "type": entry.modelInfo.type,
        "path": entry.modelInfo.path,
        "key": entry.modelInfo.key,
        "state": STATE_NAMES[status.status],
        "size_bytes": entry.sizeInBytes,
        "last_used_ms": entry.lastUsedTime,
        "copies": [{"instance": c.location, "state": STATE_NAMES[c.copyStatus], "since_ms": c.time} for c in copies],
        "failures": [
            {"instance": c.location, "time_ms": c.time, "message": messages.get(c.location, "")} for c in failed
        ],
    }


def vmodel_row(entry: admin.VModelEntry) -> dict[str, Any]:
    status = entry.status
    return {
        "id": entry.vModelId,
        "state": VMODEL_STATE_NAMES[status.status],
        "active_model": status.activeModelId,
        "target_model": status.targetModelId,
        "owner": status.owner,
    }


# ---- the tables ----------------------------------------------------------------------------------------


def render(data: dict[str, Any], now_ms: int) -> str:
    """Instances, then models (then vmodels, if any), as aligned text tables."""
    instances = [
        [
            i["id"],
            i["endpoint"],
            size(i["capacity_bytes"]),
            f"{size(i['used_bytes'])} ({_percent(i['used_bytes'], i['capacity_bytes'])})",
            str(len(i["models"])),
            str(i["loads_in_flight"]),
            "yes" if i["reachable"] else "NO",
        ]
        for i in data["instances"]
    ]
    models = [
        [
            m["id"],
            m["type"],
            m["state"],
            size(m["size_bytes"]) if m["size_bytes"] else "-",
            ", ".join(f"{c['instance']}" + ("" if c["state"] == "LOADED" else f" ({c['state']})") for c in m["copies"])
            or "-",
            age(now_ms - m["last_used_ms"]) + " ago" if m["last_used_ms"] else "never",
            _clip("; ".join(f"{f['instance']}: {f['message']}" for f in m["failures"])) or "-",
        ]
        for m in data["models"]
    ]
    loaded = sum(1 for m in data["models"] if m["state"] == "LOADED")
    reachable = sum(1 for i in data["instances"] if i["reachable"])
    parts = [
        f"INSTANCES ({len(instances)}, {reachable} reachable)",
        table(["ID", "ENDPOINT", "CAPACITY", "USED", "MODELS", "LOADING", "REACHABLE"], instances, right={2, 3, 4, 5}),
        "",
        f"MODELS ({len(models)}, {loaded} loaded)",
        table(["ID", "TYPE", "STATE", "SIZE", "COPIES", "LAST USED", "FAILURES"], models, right={3}),
    ]
    if data["vmodels"]:
        vmodels = [
            [
                v["id"],
                v["state"],
                v["active_model"],
                v["target_model"] if v["target_model"] != v["active_model"] else "",
            ]
            for v in data["vmodels"]
        ]
        parts += ["", f"VMODELS ({len(vmodels)})", table(["ID", "STATE", "ACTIVE", "TARGET"], vmodels)]
    return "\n".join(parts)


def table(header: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """Columns as wide as their widest cell, two spaces apart; `right` columns aligned right."""
    if not rows:
        return "  (none)"
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [header, *rows])


def size(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: 512 B, 1.5 KiB, 2.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def age(ms: int) -> str:
    """A duration as a person says it: 12s, 4m, 3h, 2d."""
    seconds = max(ms, 0) // 1000
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


def _clip(text: str, limit: int = 80) -> str:
    """One line of at most `limit` characters (--json has the whole text)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"
