"""Prometheus metrics of one router, named after ModelMesh's `modelmesh_*` family, and the /metrics endpoint.

Each Router owns a RouterMetrics with its own CollectorRegistry, `collectors` (two routers in one process, as in
the tests, never share series). Per-request metrics are histograms whose label children are bound once and cached, so a
request costs a dict lookup and one `observe` per metric. Placement gauges are computed when scraped, from the
router's view (mesh/placement/gauges.py), so the hot path keeps no bookkeeping for them.

Labels are bounded: methods (at most MAX_METHOD_LABELS distinct, since any unary method carrying a routing
header is forwarded), status code names, instance ids. A `model` label is added only with
Settings.metrics_per_model, and only for names that are registered, so names clients invent never become series.

`mesh serve` runs the built-in runtimes as separate processes in prometheus_client's multiprocess mode
(adapters/builtin/metrics.py); /metrics appends their aggregate, read from that directory when scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector

from mesh.placement.records import now_ms

log = logging.getLogger(__name__)

# The text format generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Milliseconds, as ModelMesh reports them.
REQUEST_MS_BUCKETS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000)
LOAD_MS_BUCKETS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000)
AGE_MS_BUCKETS = tuple(s * 1000 for s in (1, 10, 60, 300, 900, 3600, 3 * 3600, 12 * 3600, 86_400, 3 * 86_400, 604_800))
MESSAGE_BYTES_BUCKETS = tuple(64 * 4**i for i in range(11))  # 64 B … 64 MiB
MODEL_BYTES_BUCKETS = tuple(1024 * 4**i for i in range(14))  # 1 KiB … 64 GiB

MAX_METHOD_LABELS = 64
OTHER_METHOD = "other"


def method_label(path: str) -> str:
    """A gRPC method path as labelled: `package.Service/Method`, without the leading slash."""
    return path.removeprefix("/")


class RouterMetrics:
    """The router's metrics: what the front doors, the data plane and placement report, in one registry."""

    def __init__(self, per_model: bool = False) -> None:
        self.per_model = per_model
        self.collectors = CollectorRegistry()
        ProcessCollector(registry=self.collectors)
        PlatformCollector(registry=self.collectors)
        GCCollector(registry=self.collectors)
        r = self.collectors
        model = ("model",) if per_model else ()
        self._api = Histogram(
            "modelmesh_api_request_milliseconds",
            "Requests to the router's front doors (gRPC and REST), by method and status code name.",
            ("method", "code", *model),
            buckets=REQUEST_MS_BUCKETS,
            registry=r,
        )
        self._invoke = Histogram(
            "modelmesh_invoke_model_milliseconds",
            "Calls forwarded to a runtime copy, from sending the request to its answer.",
            ("method", *model),
            buckets=REQUEST_MS_BUCKETS,
            registry=r,
        )
        self._request_size = Histogram(
            "modelmesh_request_size_bytes",
            "Size of request bodies forwarded to runtimes.",
            ("method", *model),
            buckets=MESSAGE_BYTES_BUCKETS,
            registry=r,
        )
        self._response_size = Histogram(
            "modelmesh_response_size_bytes",
            "Size of response bodies runtimes returned.",
            ("method", *model),
            buckets=MESSAGE_BYTES_BUCKETS,
            registry=r,
        )
        self._cache_miss = Counter(
            "modelmesh_cache_miss",
            "Requests that found no loaded copy of their model (counted on arrival).",
            model,
            registry=r,
        )
        self._cache_miss_ms = Histogram(
            "modelmesh_cache_miss_milliseconds",
            "How long a request that found no loaded copy waited for one (whatever the outcome).",
            model,
            buckets=LOAD_MS_BUCKETS,
            registry=r,
        )
        self._load_ms = Histogram(
            "modelmesh_loadmodel_milliseconds",
            "Successful loadModel calls to runtimes.",
            model,
            buckets=LOAD_MS_BUCKETS,
            registry=r,
        )
        self._load_failures = Counter("modelmesh_loadmodel_failure", "loadModel calls that failed.", model, registry=r)
        self._unload_ms = Histogram(
            "modelmesh_unloadmodel_milliseconds",
            "Successful unloadModel calls to runtimes.",
            model,
            buckets=LOAD_MS_BUCKETS,
            registry=r,
        )
        self._unload_failures = Counter(
            "modelmesh_unloadmodel_failure", "unloadModel calls that failed.", model, registry=r
        )
        self._evictions = Counter(
            "modelmesh_model_evicted", "Copies evicted to make room for another model (LRU).", model, registry=r
        )
        self._evicted_age = Gauge(
            "modelmesh_evicted_copy_age_seconds",
            "How long the copy this router evicted last had gone unused when it was evicted: the cache's reach. "
            "Low values mean models in use are pushed out (the cache is too small for the working set).",
            registry=r,
        )
        self._age_at_eviction = Histogram(
            "modelmesh_age_at_eviction_milliseconds",
            "Time since an evicted copy's model was last used.",
            buckets=AGE_MS_BUCKETS,
            registry=r,
        )
        self._thrash_guard = Gauge(
            "modelmesh_thrash_guard_active",
            "1 while this router's thrash guard holds models in use from eviction (the cache churns), else 0.",
            registry=r,
        )
        self._held_back = Counter(
            "modelmesh_thrash_held_back_loads",
            "Loads the thrash guard held back, by outcome: refused (at once), queued, timed_out (queued, then refused)",
            ["outcome"],
            registry=r,
        )
        self._payload_dropped = Counter(
            "modelmesh_payload_log_dropped",
            "Payloads a payload-log sink did not get: its queue was full (a slow or absent sink) or sending failed.",
            ["sink", "reason"],
            registry=r,
        )
        self._loaded_size = Histogram(
            "modelmesh_loaded_model_size_bytes",
            "Size of each copy loaded, as the runtime measured it.",
            buckets=MODEL_BYTES_BUCKETS,
            registry=r,
        )
        self._engine_served = Counter(
            "modelmesh_dataplane_requests",
            "Requests the native data-plane engine forwarded to a copy itself (not through the router's doors; their"
            " latency is in modelmesh_api_request_milliseconds); counted as the router reads the engine's tables.",
            model,
            registry=r,
        )
        self._api_children: dict[tuple[str, grpc.StatusCode, str], Histogram] = {}
        self._invoke_children: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}
        self._methods: set[str] = set()
        self._known: Callable[[str], bool] = lambda _name: False

    def label_models(self, known: Callable[[str], bool]) -> None:
        """With per_model: label only names for which known(name) is true (registered ones), never invented ones."""
        self._known = known

    # ---- per request -----------------------------------------------------------------------------------

    def request(self, method: str, code: grpc.StatusCode, started: float, model: str = "") -> None:
        """A front-door request finished with `code`; `started` is its time.perf_counter() on arrival."""
        self._request_child(method, code, model).observe((time.perf_counter() - started) * 1000)

    def requests_served_natively(
        self, method: str, code: grpc.StatusCode, model: str, buckets: Sequence[int], sum_ms: float
    ) -> None:
        """Requests the native engine served, counted there per latency bucket (REQUEST_MS_BUCKETS, then the rest):
        added to the request histogram as they are, since the engine observed them, not mesh."""
        child = self._request_child(method, code, model)
        # prometheus_client's Histogram has no bulk observe: its per-bucket counters (non-cumulative until
        # collected) and its sum take the engine's counts directly.
        for counter, count in zip(child._buckets, buckets, strict=True):  # type: ignore[attr-defined]
            if count:
                counter.inc(count)
        child._sum.inc(sum_ms)  # type: ignore[attr-defined]

    def _request_child(self, method: str, code: grpc.StatusCode, model: str) -> Histogram:
        key = (method, code, model if self.per_model else "")
        child = self._api_children.get(key)
        if child is None:
            labels = (self._bounded(method), code.name)
            if self.per_model:
                labels += (model if self._known(model) else "",)
            child = self._api.labels(*labels)
            if labels[0] != OTHER_METHOD and (not self.per_model or labels[2] == model):
                self._api_children[key] = child  # what is not cached is not a name clients can multiply
        return child

    def invoked(self, method: str, model: str, started: float, request_bytes: int, response_bytes: int = -1) -> None:
        """A runtime answered a forwarded call (response_bytes -1: with an error status)."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        key = (method, model if self.per_model else "")
        children = self._invoke_children.get(key)
        if children is None:
            labels = (self._bounded(method_label(method)), *((model,) if self.per_model else ()))
            children = (
                self._invoke.labels(*labels),
                self._request_size.labels(*labels),
                self._response_size.labels(*labels),
            )
            if labels[0] != OTHER_METHOD:
                self._invoke_children[key] = children
        latency, request_size, response_size = children
        latency.observe(elapsed_ms)
        request_size.observe(request_bytes)
        if response_bytes >= 0:
            response_size.observe(response_bytes)

    def engine_served(self, model: str, requests: int) -> None:
        """The native engine forwarded `requests` for the model since the last count."""
        counter = self._engine_served
        if self.per_model:
            counter = counter.labels(model if self._known(model) else "")
        counter.inc(requests)

    def cache_missed(self, model: str) -> None:
        """A request found no loaded copy of `model` and waits for a load."""
        (self._cache_miss.labels(model) if self.per_model else self._cache_miss).inc()

    def cache_miss_waited(self, model: str, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        (self._cache_miss_ms.labels(model) if self.per_model else self._cache_miss_ms).observe(elapsed_ms)

    def _bounded(self, method: str) -> str:
        if method in self._methods:
            return method
        if len(self._methods) >= MAX_METHOD_LABELS:
            return OTHER_METHOD
        self._methods.add(method)
        return method

    # ---- placement ---------------------------------------------------------------------------------------

    def _of(self, metric: MetricWrapperBase, model: str) -> MetricWrapperBase:
        """The metric's child for the model with per_model (the empty label for names not registered), else itself."""
        return metric.labels(model if self._known(model) else "") if self.per_model else metric

    def loaded(self, model: str, started: float, size_bytes: int) -> None:
        """A loadModel call that started at `started` (perf_counter) succeeded with a copy of size_bytes."""
        self._of(self._load_ms, model).observe((time.perf_counter() - started) * 1000)  # type: ignore[attr-defined]
        self._loaded_size.observe(size_bytes)

    def load_failed(self, model: str) -> None:
        self._of(self._load_failures, model).inc()  # type: ignore[attr-defined]

    def unloaded(self, model: str, started: float) -> None:
        self._of(self._unload_ms, model).observe((time.perf_counter() - started) * 1000)  # type: ignore[attr-defined]

    def unload_failed(self, model: str) -> None:
        self._of(self._unload_failures, model).inc()  # type: ignore[attr-defined]

    def watch_thrash_guard(self, active: Callable[[], bool]) -> None:
        self._thrash_guard.set_function(lambda: float(active()))

    def payload_dropped(self, sink: str, reason: str) -> None:
        self._payload_dropped.labels(sink, reason).inc()

    def held_back(self, outcome: str) -> None:
        self._held_back.labels(outcome).inc()

    def evicted(self, model: str, last_used_ms: int) -> None:
        """A copy is evicted; its model was last used at last_used_ms (0: never, so no age is observed)."""
        self._of(self._evictions, model).inc()  # type: ignore[attr-defined]
        if last_used_ms:
            age_ms = max(now_ms() - last_used_ms, 0)
            self._age_at_eviction.observe(age_ms)
            self._evicted_age.set(age_ms / 1000)


# ---- the endpoint ------------------------------------------------------------------------------------------


async def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, multiprocess_dir: Path | None = None
) -> tuple[web.AppRunner, int]:
    """Serve GET /metrics on host:port (0 picks a free port); returns the runner and the bound port.

    The registry is collected on the event loop (its collectors read asyncio state); the multiprocess directory,
    when given, is aggregated in a worker thread (file reads) and appended.
    """
    extra: CollectorRegistry | None = None
    if multiprocess_dir is not None:
        extra = CollectorRegistry()
        MultiProcessCollector(extra, path=str(multiprocess_dir))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        if extra is not None:
            body += await asyncio.to_thread(generate_latest, extra)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return runner, bound
