"""The built-in runtime's Prometheus metrics: each inference stage's latency per model type, loads and unloads.

One registry per process. Under `mesh serve` the runtimes are separate processes on one machine, and each writes
its values to prometheus_client's multiprocess directory (env PROMETHEUS_MULTIPROC_DIR, set by `mesh serve` in
the child's environment, since prometheus_client chooses where values live when it is imported); the router's
/metrics serves their sum. Counters and histograms of a runtime that exited stay in that sum, so totals never go
back; the gauges are `livesum`, and drop out once the router marks the process dead.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.metrics import LOAD_MS_BUCKETS

# A stage of a small request takes tens of microseconds; a large batch, seconds.
STAGE_MS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000)


class StageTimers:
    """One model type's preprocess / predict / postprocess histograms, bound once."""

    __slots__ = ("postprocess", "predict", "preprocess")

    def __init__(self, preprocess: Histogram, predict: Histogram, postprocess: Histogram) -> None:
        self.preprocess = preprocess
        self.predict = predict
        self.postprocess = postprocess


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        t = ("model_type",)
        self._preprocess = Histogram(
            "mesh_runtime_preprocess_milliseconds",
            "Decoding a request's input tensors into arrays.",
            t,
            buckets=STAGE_MS_BUCKETS,
            registry=r,
        )
        self._predict = Histogram(
            "mesh_runtime_predict_milliseconds", "The model's predict.", t, buckets=STAGE_MS_BUCKETS, registry=r
        )
        self._postprocess = Histogram(
            "mesh_runtime_postprocess_milliseconds",
            "Encoding the output arrays into the response.",
            t,
            buckets=STAGE_MS_BUCKETS,
            registry=r,
        )
        self._load_ms = Histogram(
            "mesh_runtime_loadmodel_milliseconds", "Successful model loads.", t, buckets=LOAD_MS_BUCKETS, registry=r
        )
        self._load_failures = Counter(
            "mesh_runtime_loadmodel_failure", "Model loads that failed or timed out.", t, registry=r
        )
        self._unloads = Counter("mesh_runtime_unloadmodel", "Models unloaded.", t, registry=r)
        self._models = Gauge(
            "mesh_runtime_models_loaded", "Models loaded now.", t, multiprocess_mode="livesum", registry=r
        )
        self._bytes = Gauge(
            "mesh_runtime_loaded_model_bytes",
            "Bytes of the models loaded now, as measured at load.",
            t,
            multiprocess_mode="livesum",
            registry=r,
        )
        self._stages: dict[str, StageTimers] = {}

    def stages(self, model_type: str) -> StageTimers:
        timers = self._stages.get(model_type)
        if timers is None:
            timers = StageTimers(
                self._preprocess.labels(model_type),
                self._predict.labels(model_type),
                self._postprocess.labels(model_type),
            )
            self._stages[model_type] = timers
        return timers

    def loaded(self, model_type: str, started: float, size_bytes: int) -> None:
        """A load that began at `started` (time.perf_counter) succeeded."""
        self._load_ms.labels(model_type).observe((time.perf_counter() - started) * 1000)
        self._models.labels(model_type).inc()
        self._bytes.labels(model_type).inc(size_bytes)

    def load_failed(self, model_type: str) -> None:
        self._load_failures.labels(model_type).inc()

    def unloaded(self, model_type: str, size_bytes: int) -> None:
        self._unloads.labels(model_type).inc()
        self._models.labels(model_type).dec()
        self._bytes.labels(model_type).dec(size_bytes)
