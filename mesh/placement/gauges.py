"""Placement gauges, computed when /metrics is scraped from the router's view (the hot path keeps no bookkeeping
for them): what each instance holds, how many models are loaded or failing, how many requests wait for a load,
and the signal to scale runtimes on: the bytes of the models in use (the working set) against the capacity."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from mesh.placement.manager import PlacementManager
from mesh.placement.records import now_ms
from mesh.registry import ModelRegistry, ModelState


class PlacementGauges:
    """Gauges computed at scrape time from the router's placement view (every router reports the same values
    for shared state: aggregate them with max, not sum)."""

    def __init__(self, manager: PlacementManager, registry: ModelRegistry) -> None:
        self._manager = manager
        self._registry = registry

    def describe(self) -> Iterable[Metric]:
        return self.families()

    def collect(self) -> Iterable[Metric]:
        capacity, used, lru_age, models, loaded, managed, failing, waiting, *scaling = families = self.families()
        now = now_ms()
        views = self._manager.instance_views()
        for view in views:
            instance = [view.record.instance_id]
            capacity.add_metric(instance, view.record.capacity_bytes)
            used.add_metric(instance, view.used_bytes)
            models.add_metric(instance, len(view.copies))
            used_at = [c.last_used_ms for c in view.copies if c.last_used_ms]
            lru_age.add_metric(instance, (now - min(used_at)) / 1000 if used_at else 0.0)
        states = Tally(self._registry.status(m.model_id).state for m in self._registry.models())
        loaded.add_metric([], states[ModelState.LOADED])
        managed.add_metric([], states.total())
        failing.add_metric([], states[ModelState.LOADING_FAILED])
        waiting.add_metric([], self._manager.waiting_for_load)
        self._scaling_signal(scaling, sum(v.record.capacity_bytes for v in views), now)
        return families

    def _scaling_signal(self, families: list[GaugeMetricFamily], capacity_bytes: int, now: int) -> None:
        """The working set (models used within working_set_seconds, cluster-wide last use, at their measured size)
        against the capacity of the reachable instances: above 1, the models in use do not fit, and copies of them
        are evicted to load others."""
        working_set, capacity, pressure = families
        horizon = now - self._manager.settings.working_set_seconds * 1000
        usage = self._manager.usage
        wanted = sum(
            placement.record.size_bytes
            for model_id, placement in self._manager.view.placements.items()
            if usage.last_used_ms(model_id) >= horizon
        )
        working_set.add_metric([], wanted)
        capacity.add_metric([], capacity_bytes)
        pressure.add_metric([], wanted / capacity_bytes if capacity_bytes else float(wanted > 0) * 1e9)

    @staticmethod
    def families() -> list[GaugeMetricFamily]:
        # Not "instance": Prometheus sets that label on every series to name the scraped target.
        instance = ["instance_id"]
        return [
            GaugeMetricFamily(
                "modelmesh_instance_capacity_bytes", "Model memory a runtime instance offers.", labels=instance
            ),
            GaugeMetricFamily(
                "modelmesh_instance_used_bytes",
                "Bytes of the copies on an instance (loading ones at their predicted size).",
                labels=instance,
            ),
            GaugeMetricFamily(
                "modelmesh_instance_lru_age_seconds",
                "Time since the least recently used copy on an instance was used (0 when none has been).",
                labels=instance,
            ),
            GaugeMetricFamily(
                "modelmesh_instance_models_total", "Copies (loaded or loading) on an instance.", labels=instance
            ),
            GaugeMetricFamily("modelmesh_models_loaded_total", "Registered models with at least one loaded copy."),
            GaugeMetricFamily("modelmesh_models_managed_total", "Registered models."),
            GaugeMetricFamily(
                "modelmesh_models_with_failure_total", "Models whose loads are failing (status LOADING_FAILED)."
            ),
            GaugeMetricFamily(
                "modelmesh_requests_waiting_for_load", "Requests on this router waiting for their model to load."
            ),
            GaugeMetricFamily(
                "modelmesh_working_set_bytes",
                "Bytes of the models used within MESH_WORKING_SET_SECONDS (cluster-wide), at their measured sizes.",
            ),
            GaugeMetricFamily("modelmesh_capacity_bytes", "Model memory of the reachable runtime instances."),
            GaugeMetricFamily(
                "modelmesh_cache_pressure",
                "Working set over capacity: the autoscaling signal (above 1 the models in use do not fit; 1e9 when "
                "models are in use and no instance is reachable).",
            ),
        ]
