"""Where a copy goes: the placement policy (policy.py, pure) applied to this router's picture of the instances
(the copy table), its load slots, draining instances and recent load failures. No I/O; the loader acts on what
it answers.

A first copy goes only where a load slot is free now: when only an instance whose slots are all taken could
take it, the answer is "wait" (None), since deciding now would evict copies, and hold their room, that keep
serving hits until the load can start. An extra copy goes where a slot is free and the instance is not draining;
it evicts only when told it may (a minimum copy, a hand-off, a vmodel target), and not while an instance that has
room is merely out of slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

from mesh.config import Settings
from mesh.errors import ModelLoadFailed, NoCapacity, Overloaded, Unavailable
from mesh.placement import policy
from mesh.placement.copies import CopyTable
from mesh.placement.instance_health import InstanceHealth
from mesh.placement.records import Footprint, LoadFailure, ModelRecord, PlacementRecord, now_ms
from mesh.placement.thrash import ThrashGuard
from mesh.placement.view import LocalView

MIN_RETRY_AFTER_S = 0.05
RANKING_KEPT = 5
"""Instances a load's decision keeps in the decision log, best first."""


class Chooser:
    def __init__(
        self,
        settings: Settings,
        view: LocalView,
        copies: CopyTable,
        health: InstanceHealth,
        guard: ThrashGuard,
        last_used_ms: Callable[[str], int],
    ) -> None:
        self._settings = settings
        self._view = view
        self._copies = copies
        self._health = health
        self._guard = guard
        self._last_used_ms = last_used_ms
        self._policy = settings.eviction_policy

    def first_copy(self, model: ModelRecord, size: Footprint) -> policy.LoadPlan | None:
        """Where the first copy goes and what it evicts, among instances with a free load slot; None when only an
        instance whose slots are all taken could take it (wait for one); raises why when nowhere will do, and
        Overloaded when only evicting copies the thrash guard protects would do."""
        placement = self._view.placements.get(model.model_id)
        record = placement.record if placement else PlacementRecord()
        failed = self.recent_failures(record)
        excluded = frozenset(self._copies.live_copies(record)) | frozenset(failed)
        instances = self._candidates(model)
        protect = self._protect_after_ms(model)
        verdicts = self._verdicts(model, size, with_free_slot(instances), excluded, protect)
        if verdicts and verdicts[0].plan is not None:
            # The choice carries how the instances compared (the decision log keeps it).
            return dataclasses.replace(verdicts[0].plan, ranking=tuple(v.summary for v in verdicts[:RANKING_KEPT]))
        if self._place(model, size, instances, excluded, protect) is not None:
            return None
        if protect and self._place(model, size, instances, excluded) is not None:
            raise self._held_back(model, instances, protect)
        raise self._why_nowhere(model, size, failed)

    def _protect_after_ms(self, model: ModelRecord) -> int:
        """The thrash guard's protection for a load of this model (0: none): none for a model in use itself (its
        copy went in the churn: it is hot, and takes its place back)."""
        protect = self._guard.protect_after_ms()
        return 0 if protect and self._last_used_ms(model.model_id) > protect else protect

    def _verdicts(
        self,
        model: ModelRecord,
        size: Footprint,
        instances: list[policy.InstanceView],
        excluded: Collection[str],
        protect_after_ms: int,
    ) -> list[policy.Verdict]:
        """Every instance's verdict on a copy of the model (policy.assess, choose_instance's test), best first."""
        demand = policy.Demand(
            model.model_type, size.size_bytes, model.labels, size.device_bytes, model.preferred_labels, protect_after_ms
        )
        verdicts = (policy.assess(v, demand, self._policy) for v in instances if v.record.instance_id not in excluded)
        return sorted(verdicts, key=lambda v: v.order)

    def _held_back(self, model: ModelRecord, instances: list[policy.InstanceView], protect: int) -> Overloaded:
        """The thrash guard's answer: when the first copy it protects will have been idle long enough to go."""
        self._guard.held_back()
        protected = [
            c.last_used_ms
            for v in instances
            if v.record.supports(model.model_type, model.labels)
            for c in v.copies
            if c.evictable and c.last_used_ms > protect
        ]
        retry_after_s = max((min(protected, default=protect) - protect) / 1000, MIN_RETRY_AFTER_S)
        return Overloaded(
            f"model '{model.model_id}' is not loaded, and loading it now would evict models in use: the cache is"
            f" thrashing and the thrash guard holds the models in use; retry in {retry_after_s:.1f}s",
            retry_after_s,
        )

    def dry_run(self, model: ModelRecord, size: Footprint) -> tuple[list[policy.Verdict], dict[str, str]]:
        """What a load of the model would decide now, changing nothing: every instance's verdict (best first) and
        the instances left out before ranking, with why (a copy there, a recent failure, draining)."""
        placement = self._view.placements.get(model.model_id)
        record = placement.record if placement else PlacementRecord()
        left_out = {i: "holds a copy" for i in self._copies.live_copies(record)}
        for instance_id, failure in self.recent_failures(record).items():
            left_out.setdefault(instance_id, f"failed to load it recently: {failure.message}")
        candidates = self._candidates(model)
        named = {v.record.instance_id for v in candidates}
        for view in self._copies.instance_views():
            if view.record.instance_id not in named:
                left_out.setdefault(view.record.instance_id, "draining (told to stop)")
        verdicts = self._verdicts(model, size, candidates, left_out, self._protect_after_ms(model))
        return verdicts, left_out

    def extra_copy(
        self, model: ModelRecord, record: PlacementRecord, live: list[str], may_evict: bool
    ) -> policy.LoadPlan | None:
        """Where one more copy goes now (None: nowhere now)."""
        excluded = frozenset(live) | frozenset(self.recent_failures(record))
        staying = _staying(self._copies.instance_views())
        choice = self._place(model, record.footprint, with_free_slot(staying), excluded)
        if choice is None or not choice.victims:
            return choice
        if not may_evict:
            return None
        best = self._place(model, record.footprint, staying, excluded)
        return choice if best is None or best.victims else None

    def recent_failures(self, record: PlacementRecord) -> dict[str, LoadFailure]:
        """The model's load failures still within load_failure_backoff_seconds, on instances that are there."""
        horizon = now_ms() - self._settings.load_failure_backoff_seconds * 1000
        return {i: f for i, f in record.failures.items() if f.time_ms > horizon and i in self._view.instances}

    def _place(
        self,
        model: ModelRecord,
        size: Footprint,
        instances: list[policy.InstanceView],
        excluded: frozenset[str],
        protect_after_ms: int = 0,
    ) -> policy.LoadPlan | None:
        labels, preferred = model.labels, model.preferred_labels
        return policy.choose_instance(
            model.model_type,
            size.size_bytes,
            instances,
            excluded,
            self._policy,
            labels,
            size.device_bytes,
            preferred,
            protect_after_ms,
        )

    def _candidates(self, model: ModelRecord) -> list[policy.InstanceView]:
        """The instances a copy of the model may go to: those not draining, unless only draining ones take it
        (a copy on an instance about to stop beats no copy while it drains)."""
        views = self._copies.instance_views()
        staying = _staying(views)
        return staying if any(v.record.supports(model.model_type, model.labels) for v in staying) else views

    def _why_nowhere(self, model: ModelRecord, size: Footprint, failed: dict[str, LoadFailure]) -> Exception:
        """The error that says why no instance will take the model, now or soon."""
        if failed:
            instance_id, failure = max(failed.items(), key=lambda f: f[1].time_ms)
            retry_in = self._settings.load_failure_backoff_seconds - (now_ms() - failure.time_ms) / 1000
            return ModelLoadFailed(
                f"model '{model.model_id}' failed to load on instance '{instance_id}': {failure.message}"
                f" (not retried for another {max(retry_in, 0):.0f}s)"
            )
        unreachable = sorted(
            i
            for i, v in self._view.instances.items()
            if v.record.supports(model.model_type, model.labels) and not self._health.reachable(i)
        )
        if unreachable:
            return Unavailable(
                f"cannot place model '{model.model_id}': runtime instance(s) {', '.join(unreachable)}"
                " did not answer; retry shortly"
            )
        reason, retryable = policy.why_unplaceable(
            model.model_type,
            size.size_bytes,
            [v.record for v in self._view.instances.values()],
            model.labels,
            size.device_bytes,
        )
        return (Unavailable if retryable else NoCapacity)(f"cannot place model '{model.model_id}': {reason}")


def _staying(instances: list[policy.InstanceView]) -> list[policy.InstanceView]:
    """The instances that are not draining (told to stop: they take no new copy)."""
    return [v for v in instances if not v.record.draining]


def with_free_slot(instances: list[policy.InstanceView]) -> list[policy.InstanceView]:
    """The instances where this router may start a load now (fewer loads running than the runtime's slots)."""
    return [v for v in instances if v.loads_in_flight < v.record.loading_slots]
