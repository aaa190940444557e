"""The routes a native data-plane engine serves on its own: computed from placement, no I/O.

A route is a model id with the instances holding a copy that can take a request now. A model without one (not
loaded, loading, its copies being evicted or on an instance set aside) has no route, so the engine hands its
requests to mesh's own door, which loads and forwards as on the Python path.

Two route maps, because an engine forwards request bodies unchanged:
- `by_name`: every copy, for requests whose body names the model itself (no routing header): any runtime reads
  the right name from such a body.
- `by_header`: copies on instances that read the model id from the mm-model-id header (meshReadsModelIdHeader),
  for requests naming the model by header or through a vmodel, whose body may name something else.

`vmodels` maps a vmodel to its active model only while it is not in transition (active = target): during a
transition mesh decides, request by request, as on the Python path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mesh.placement.copies import CopyTable
from mesh.placement.records import InstanceRecord
from mesh.placement.view import LocalView

# Ids an engine's tables hold: map files split lines at whitespace and the runtime API at spaces and ';', and a
# stick-table key has a fixed length. Other ids (valid for mesh, 512 bytes of any printable text) keep working
# through mesh's door.
ENGINE_ID = re.compile(r"[A-Za-z0-9._:/@+=~-]{1,200}")


def engine_safe(model_id: str) -> bool:
    """The id can be a key in the engine's tables."""
    return ENGINE_ID.fullmatch(model_id) is not None


@dataclass(frozen=True)
class RouteSet:
    """Everything an engine routes natively: model id → instance ids (sorted), vmodel id → model id."""

    by_name: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    by_header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vmodels: Mapping[str, str] = field(default_factory=dict)

    def instances(self) -> set[str]:
        """Every instance some route names."""
        return {i for copies in self.by_name.values() for i in copies}


def plan_routes(
    view: LocalView, copies: CopyTable, routable: Callable[[InstanceRecord], bool] = lambda record: True
) -> RouteSet:
    """The routes placement allows now. routable: the instances the engine can reach (an engine that cannot dial
    TLS runtimes, say, leaves their copies to mesh's door)."""
    by_name: dict[str, tuple[str, ...]] = {}
    by_header: dict[str, tuple[str, ...]] = {}
    instances = view.instances
    for model_id in view.placements:
        if not engine_safe(model_id):
            continue
        holders = sorted(
            instance_id
            for instance_id, _ in copies.loaded_copies(model_id)
            if not copies.is_evicting(model_id, instance_id) and routable(instances[instance_id].record)
        )
        if not holders:
            continue
        by_name[model_id] = tuple(holders)
        readers = tuple(i for i in holders if instances[i].record.reads_model_header)
        if readers:
            by_header[model_id] = readers
    vmodels = {
        vmodel_id: v.record.active_model_id
        for vmodel_id, v in view.vmodels.items()
        if engine_safe(vmodel_id)
        and v.record.active_model_id == v.record.target_model_id
        and v.record.active_model_id in by_header
    }
    return RouteSet(by_name, by_header, vmodels)


@dataclass(frozen=True)
class MapChanges:
    """What turns one key → value table into another: keys to add, keys whose value changes, keys to delete."""

    added: dict[str, str]
    changed: dict[str, str]
    deleted: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.deleted)


def map_changes(old: Mapping[str, str], new: Mapping[str, str]) -> MapChanges:
    added = {k: v for k, v in new.items() if k not in old}
    changed = {k: v for k, v in new.items() if k in old and old[k] != v}
    deleted = [k for k in old if k not in new]
    return MapChanges(added, changed, deleted)
