"""The copy table: where each model's copies are, which of them can take a request now, and the lease a request
holds on one. No I/O.

The copies themselves are in the view (placement records, shared through the store). What only this router knows
is kept here beside them: requests it has in flight to each copy, copies it is evicting, loads it is running on
each instance. A copy counts when it was made on its instance's present incarnation and the instance is reachable;
a LOADING copy counts while its loader renews its claim (claims.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.placement import policy
from mesh.placement.instance_health import InstanceHealth
from mesh.placement.instances import RuntimeClients
from mesh.placement.records import CopyRecord, CopyState, PlacementRecord, now_ms
from mesh.placement.usage import Usage
from mesh.placement.view import LocalView
from mesh.runtime import RuntimeClient

LOAD_HEARTBEAT_S = 2.0
"""A router loading a model rewrites its LOADING copy's time this often: a claim that is not renewed is a load whose
router died (killed mid-load), which other routers then stop waiting for."""
LOADING_STALE_S = 3 * LOAD_HEARTBEAT_S + 2.0
"""A LOADING copy not renewed for this long is stale (three missed heartbeats, and a margin for clock skew)."""


@dataclass(slots=True)
class CopyLease:
    """A request's hold on one copy: while held, the copy is not evicted. Everything the request needs to reach the
    copy travels with it; leaving the `with` block releases it."""

    model_id: str
    instance_id: str
    client: RuntimeClient
    # "package.Service/Method" → the field path where this runtime reads the model id (InstanceRecord.methods).
    methods: Mapping[str, tuple[int, ...]]
    # Requests this router has on the copy, this one included.
    in_flight: int
    # The copy table's release(model_id, instance_id): called once, when the request is done with the copy.
    release: Callable[[str, str], None]

    def __enter__(self) -> CopyLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release(self.model_id, self.instance_id)


class CopyTable:
    def __init__(
        self,
        view: LocalView,
        health: InstanceHealth,
        clients: RuntimeClients,
        usage: Usage,
        others_demand: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        """others_demand: the models other routers have requests in flight or waiting for (demand.py)."""
        self._view = view
        self._health = health
        self._clients = clients
        self._usage = usage
        self._others_demand = others_demand
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._evicting: set[tuple[str, str]] = set()
        self._loads_on: Counter[str] = Counter()
        self._release = self.release  # bound once: a lease per request must not make a method object each time

    # ---- the data path -----------------------------------------------------------------------------------

    def lease(self, model_id: str) -> CopyLease | None:
        """A hold on the model's least busy loaded copy, or None when no copy can take a request."""
        placement = self._view.placements.get(model_id)
        if placement is None:
            return None
        in_flight = self._in_flight
        best: str | None = None
        for instance_id, copy in placement.record.copies.items():
            if copy.state is not CopyState.LOADED or (model_id, instance_id) in self._evicting:
                continue
            if not self.counts(instance_id, copy):
                continue
            if best is None or in_flight[(model_id, instance_id)] < in_flight[(model_id, best)]:
                best = instance_id
        if best is None:
            return None
        key = (model_id, best)
        in_flight[key] += 1
        record = self._view.instances[best].record
        return CopyLease(model_id, best, self._clients.get(best), record.methods, in_flight[key], self._release)

    def release(self, model_id: str, instance_id: str) -> None:
        """A request is done with the copy (CopyLease.__exit__)."""
        key = (model_id, instance_id)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    def in_flight(self, model_id: str, instance_id: str) -> int:
        """Requests this router has in flight to one copy."""
        return self._in_flight[(model_id, instance_id)]

    def models_in_flight(self) -> set[str]:
        """The models this router has requests in flight for."""
        return {model_id for model_id, _ in self._in_flight}

    # ---- which copies count ------------------------------------------------------------------------------

    def counts(self, instance_id: str, copy: CopyRecord) -> bool:
        """The copy was made on the instance's present incarnation, which is known and reachable."""
        known = self._view.instances.get(instance_id)
        return known is not None and copy.incarnation == known.record.started_ms and self._health.reachable(instance_id)

    def loaded_holder(self, model_id: str) -> str | None:
        """An instance with a loaded copy that counts and that this router is not evicting (a request for a copy
        being evicted waits for the eviction, then loads)."""
        placement = self._view.placements.get(model_id)
        if placement is None:
            return None
        for instance_id, copy in placement.record.copies.items():
            if (
                copy.state is CopyState.LOADED
                and self.counts(instance_id, copy)
                and (model_id, instance_id) not in self._evicting
            ):
                return instance_id
        return None

    def loaded_copies(self, model_id: str) -> list[tuple[str, CopyRecord]]:
        """The model's loaded copies that count, evicting or not."""
        placement = self._view.placements.get(model_id)
        if placement is None:
            return []
        copies = placement.record.copies.items()
        return [(i, c) for i, c in copies if c.state is CopyState.LOADED and self.counts(i, c)]

    def draining(self, instance_id: str) -> bool:
        """The instance was told to stop: it serves what it holds and takes no new copy."""
        known = self._view.instances.get(instance_id)
        return known is not None and known.record.draining

    def held_by(self, instance_id: str) -> list[str]:
        """The models with a loaded copy on the instance that counts."""
        return [
            model_id
            for model_id, placement in self._view.placements.items()
            if (copy := placement.record.copies.get(instance_id)) is not None
            and copy.state is CopyState.LOADED
            and self.counts(instance_id, copy)
        ]

    def placement(self, model_id: str) -> PlacementRecord | None:
        """The model's placement record, if it has one."""
        placement = self._view.placements.get(model_id)
        return placement.record if placement else None

    def placed_models(self) -> list[str]:
        """Every model with a placement record (copies, failures or a last use)."""
        return list(self._view.placements)

    def live_copies(self, record: PlacementRecord) -> list[str]:
        """Copies that count, loaded or loading (a LOADING copy whose claim is renewed: its loader is alive)."""
        now = now_ms()
        live = []
        for instance_id, copy in record.copies.items():
            if not self.counts(instance_id, copy):
                continue
            stale_after_s = min(self._health.load_timeout(instance_id), LOADING_STALE_S)
            if copy.state is CopyState.LOADING and now - copy.since_ms > stale_after_s * 1000:
                continue  # its loader died (no heartbeat) or gave up without clearing it
            live.append(instance_id)
        return live

    def loading_on(self, model_id: str) -> str | None:
        """The instance where a load of the model is under way, when no copy is loaded (waiting for that load
        beats starting another: the claim would fail, and choosing could find no instance left)."""
        placement = self._view.placements.get(model_id)
        if placement is None or self.loaded_holder(model_id) is not None:
            return None
        live = self.live_copies(placement.record)
        return live[0] if live else None

    # ---- this router's evictions and loads ---------------------------------------------------------------

    def evicting(self, model_id: str, instance_id: str) -> None:
        """This router is evicting the copy: no request is sent to it, and no other eviction picks it."""
        self._evicting.add((model_id, instance_id))

    def evicted(self, model_id: str, instance_id: str) -> None:
        self._evicting.discard((model_id, instance_id))

    def is_evicting(self, model_id: str, instance_id: str) -> bool:
        return (model_id, instance_id) in self._evicting

    def load_started(self, instance_id: str) -> None:
        self._loads_on[instance_id] += 1

    def load_ended(self, instance_id: str) -> None:
        self._loads_on[instance_id] -= 1

    # ---- as placement weighs them ------------------------------------------------------------------------

    def _kept(self, model_id: str, loaded: int) -> bool:
        """The model's copies stay: it is pinned, or it has no more than its minimum copies loaded."""
        known = self._view.models.get(model_id)
        return known is not None and (known.record.pinned or loaded <= known.record.min_copies)

    def instance_views(self, reachable_only: bool = True) -> list[policy.InstanceView]:
        """Every known instance (reachable_only: every reachable one) with the copies on its present incarnation,
        as placement weighs them: capacity as capped, copies with their use, evictable or not (a copy is not while
        it loads, while this router evicts it or has requests on it, while another router has demand for its
        model, or when its model is pinned or down to its minimum copies)."""
        resident: dict[str, list[policy.ResidentCopy]] = {}
        wanted_elsewhere = self._others_demand()
        instances = self._view.instances
        for model_id, placement in self._view.placements.items():
            present = [
                (instance_id, copy)
                for instance_id, copy in placement.record.copies.items()
                # not on its instance any more when it restarted empty or is gone
                if (known := instances.get(instance_id)) is not None and copy.incarnation == known.record.started_ms
            ]
            kept = self._kept(model_id, sum(c.state is CopyState.LOADED for _, c in present))
            for instance_id, copy in present:
                key = (model_id, instance_id)
                evictable = (
                    copy.state is CopyState.LOADED
                    and key not in self._evicting
                    and not self._in_flight[key]
                    and model_id not in wanted_elsewhere
                    and not kept
                )
                resident.setdefault(instance_id, []).append(
                    self._usage.resident_copy(
                        model_id, copy.size_bytes, evictable, copy.device_bytes, placement.record.load_ms
                    )
                )
        return [
            policy.InstanceView(
                self._health.weighed(known.record), resident.get(instance_id, []), self._loads_on[instance_id]
            )
            for instance_id, known in instances.items()
            if not reachable_only or self._health.reachable(instance_id)
        ]
