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
transition mesh decides, request by request, as on the Python path. A vmodel's entry does not depend on its
model's copies: the engine looks the model up in `by_header` next, and without a route there goes to mesh.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mesh.naming import LocalNames
from mesh.placement.copies import CopyTable
from mesh.placement.records import InstanceRecord
from mesh.placement.view import LocalView

EXACT = LocalNames()
"""Names as they are: a router serving no namespace."""

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


@dataclass(frozen=True)
class RouteUpdate:
    """Routes of some models and vmodels only: () or None means the key has no route any more."""

    by_name: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    by_header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vmodels: Mapping[str, str | None] = field(default_factory=dict)


def model_copies(
    view: LocalView,
    copies: CopyTable,
    model_id: str,
    routable: Callable[[InstanceRecord], bool],
    via_mesh: Callable[[str], bool] = lambda name: False,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One model's routes: (every copy that can take a request, those of them on header-reading runtimes). None for
    a model whose requests must pass through mesh (via_mesh: its payloads are logged)."""
    if not engine_safe(model_id) or via_mesh(model_id):
        return (), ()
    instances = view.instances
    holders = tuple(
        sorted(
            instance_id
            for instance_id, _ in copies.loaded_copies(model_id)
            if not copies.is_evicting(model_id, instance_id) and routable(instances[instance_id].record)
        )
    )
    return holders, tuple(i for i in holders if instances[i].record.reads_model_header)


def vmodel_target(
    view: LocalView, vmodel_id: str, names: LocalNames = EXACT, via_mesh: Callable[[str], bool] = lambda name: False
) -> str | None:
    """The model a vmodel's requests go to natively: its active model while it is not in transition. The engine
    looks that model up among its header routes, so a vmodel of a model without a copy still reaches mesh.
    names: what a name means in this router's namespace (a bare name of it is routed as its vmodel)."""
    known = names.lookup(view.vmodels, vmodel_id)
    if known is None or not engine_safe(vmodel_id) or via_mesh(vmodel_id):
        return None
    record = known.record
    return record.active_model_id if record.active_model_id == record.target_model_id else None


def plan_routes(
    view: LocalView,
    copies: CopyTable,
    routable: Callable[[InstanceRecord], bool] = lambda record: True,
    names: LocalNames = EXACT,
    via_mesh: Callable[[str], bool] = lambda name: False,
) -> RouteSet:
    """Every route placement allows now. routable: the instances the engine can reach (an engine that cannot dial
    TLS runtimes, say, leaves their copies to mesh's door); names: as vmodel_target."""
    by_name: dict[str, tuple[str, ...]] = {}
    by_header: dict[str, tuple[str, ...]] = {}
    for model_id in view.placements:
        holders, readers = model_copies(view, copies, model_id, routable, via_mesh)
        if holders:
            by_name[model_id] = holders
        if readers:
            by_header[model_id] = readers
    vmodels = {v: m for v in names.names(view.vmodels) if (m := vmodel_target(view, v, names, via_mesh)) is not None}
    return RouteSet(by_name, by_header, vmodels)
