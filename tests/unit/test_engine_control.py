"""The native data plane's control side (mesh/engine/): routes from placement, usage back, draining, and the
HAProxy runtime API's parsing; over fake runtimes and a fake engine that records what it was told."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from harness.fakes import FakeRuntime
from test_loading import eventually

from mesh.engine.control import EngineControl, ip_endpoint
from mesh.engine.driver import LatencyCounts, ModelTraffic
from mesh.engine.frontdoor import NativeFrontDoor
from mesh.engine.haproxy_api import batches, parse_latency, parse_table
from mesh.engine.haproxy_config import LATENCY_BOUNDS_US
from mesh.engine.routes import RouteSet, RouteUpdate, engine_safe, plan_routes
from mesh.health import Readiness
from mesh.metrics import REQUEST_MS_BUCKETS
from mesh.placement.records import now_ms


class FakeEngine:
    """An engine in memory: the instances and routes it was given, traffic and in-flight counts a test sets."""

    def __init__(self) -> None:
        self.endpoints: dict[str, str] = {}
        self.routes = RouteSet()
        self.served: dict[str, ModelTraffic] = {}
        self.in_flight: dict[tuple[str, str], int] = {}
        self.answering = True
        self.timed: list[LatencyCounts] = []
        self.exited = asyncio.Event()

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.exited.set()

    def running(self) -> bool:
        return not self.exited.is_set()

    def pid(self) -> int | None:
        return None

    async def restart(self) -> None: ...

    async def wait_exit(self) -> int:
        await self.exited.wait()
        return 0

    async def set_instances(self, endpoints: Mapping[str, str]) -> None:
        self.endpoints = dict(endpoints)

    async def set_routes(self, routes: RouteSet) -> None:
        self.routes = routes

    async def update_routes(self, update: RouteUpdate) -> None:
        self.routes = RouteSet(
            _updated(self.routes.by_name, update.by_name),
            _updated(self.routes.by_header, update.by_header),
            _updated(self.routes.vmodels, update.vmodels),
        )

    async def traffic(self) -> Mapping[str, ModelTraffic]:
        return dict(self.served)

    async def copy_in_flight(self, model_id: str, instance_id: str) -> int:
        if not self.answering:  # what a full runtime-API socket gives under uvloop
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return self.in_flight.get((model_id, instance_id), 0)

    async def latency(self) -> list[LatencyCounts]:
        return list(self.timed)


def _updated(table: Mapping, changes: Mapping) -> dict:
    merged = {**table, **changes}
    return {k: v for k, v in merged.items() if v}


async def started(router, engine: FakeEngine) -> EngineControl:  # type: ignore[no-untyped-def]
    control = EngineControl(engine, router.manager, router.metrics, resync_s=3600, usage_s=3600, drain_timeout_s=5)
    await control.start()
    return control


async def test_loaded_copies_are_routed_and_header_routes_only_to_runtimes_that_read_the_header(make_cluster):
    plain, reader = FakeRuntime("rt-a", capacity_bytes=1), FakeRuntime("rt-b", reads_model_header=True)
    router = await make_cluster(plain, reader).router()
    await router.register("m")
    await router.use("m")
    routes = plan_routes(router.manager.view, router.manager.copies)
    assert routes.by_name == {"m": ("rt-b",)}
    assert routes.by_header == {"m": ("rt-b",)}
    plain.capacity_bytes = 10_000_000
    await router.manager.publish_instance(plain.record())
    await router.manager.add_copy("m")
    routes = plan_routes(router.manager.view, router.manager.copies)
    assert routes.by_name == {"m": ("rt-a", "rt-b")}
    assert routes.by_header == {"m": ("rt-b",)}


async def test_copies_being_evicted_unreachable_or_unloaded_have_no_route(make_cluster):
    runtime = FakeRuntime("rt-a", reads_model_header=True)
    router = await make_cluster(runtime).router()
    await router.register("a", "b", "with space")
    for model_id in ("a", "b", "with space"):
        await router.use(model_id)
    manager = router.manager
    manager.copies.evicting("a", "rt-a")
    assert set(plan_routes(manager.view, manager.copies).by_name) == {"b"}
    manager.health.mark_unreachable("rt-a", "test")
    assert plan_routes(manager.view, manager.copies).by_name == {}
    assert not engine_safe("with space") and engine_safe("team/model-1.v2")


async def test_a_vmodel_is_routed_only_while_not_in_transition(make_cluster):
    router = await make_cluster(FakeRuntime("rt-a", reads_model_header=True)).router()
    await router.register("m1", "m2")
    await router.registry.set_vmodel("v", "m1")
    await router.use("m1")
    routes = plan_routes(router.manager.view, router.manager.copies)
    assert routes.vmodels == {"v": "m1"}
    await router.registry.set_vmodel("v", "m2", load_now=False)  # m2 not loaded: v is in transition
    assert router.manager.view.vmodels["v"].record.target_model_id == "m2"
    assert plan_routes(router.manager.view, router.manager.copies).vmodels == {}
    await router.registry.set_vmodel("w", "m2", load_now=False)  # a new vmodel: active at once, m2 not loaded
    assert plan_routes(router.manager.view, router.manager.copies).vmodels == {"w": "m2"}


async def test_routes_follow_placement_changes(make_cluster):
    runtime = FakeRuntime("rt-a")
    router = await make_cluster(runtime).router()
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        assert engine.endpoints == {"rt-a": "127.0.0.1:1"}
        await router.register("m")
        await router.use("m")
        await eventually(lambda: "m" in engine.routes.by_name, "m routed")
        await router.manager.unload_copy("m", "rt-a")
        await eventually(lambda: "m" not in engine.routes.by_name, "m withdrawn")
    finally:
        await control.stop()


async def test_engine_traffic_counts_as_use(make_cluster):
    router = await make_cluster(FakeRuntime("rt-a")).router()
    await router.register("m")
    await router.use("m")
    usage = router.manager.usage
    usage.take_request_counts()
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        later = now_ms() + 60_000
        engine.served["m"] = ModelTraffic(requests=5, in_flight=0, last_used_ms=later)
        await control.collect_usage()
        assert usage.last_used_ms("m") == later
        engine.served["m"] = ModelTraffic(requests=7, in_flight=0, last_used_ms=later)
        await control.collect_usage()
        engine.served["m"] = ModelTraffic(requests=3, in_flight=0, last_used_ms=later)  # the engine restarted
        await control.collect_usage()
        assert usage.take_request_counts() == {"m": 5 + 2 + 3}
        assert router.metrics.collectors.get_sample_value("modelmesh_dataplane_requests_total") == 10
    finally:
        await control.stop()


async def test_a_model_saturated_in_the_engine_gets_another_copy(make_cluster):
    runtimes = FakeRuntime("rt-a"), FakeRuntime("rt-b")
    router = await make_cluster(*runtimes, scale_up_in_flight=4).router()
    await router.register("m")
    await router.use("m")
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        engine.served["m"] = ModelTraffic(requests=1, in_flight=4, last_used_ms=now_ms())
        await control.collect_usage()  # 4 in flight on one copy: not past the threshold
        assert [r.loads for r in runtimes if r.loads] == [["m"]]
        engine.served["m"] = ModelTraffic(requests=2, in_flight=5, last_used_ms=now_ms())
        await control.collect_usage()
        await eventually(lambda: all(r.loads == ["m"] for r in runtimes), "a second copy of m")
    finally:
        await control.stop()


async def test_a_copy_is_unloaded_only_after_the_engine_drained_it(make_cluster):
    runtime = FakeRuntime("rt-a")
    router = await make_cluster(runtime).router()
    await router.register("m")
    await router.use("m")
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        engine.in_flight[("m", "rt-a")] = 2
        unloading = asyncio.create_task(router.manager.unload_copy("m", "rt-a"))
        await eventually(lambda: "m" not in engine.routes.by_name, "m withdrawn")  # before the unload
        assert runtime.unloads == [] and not unloading.done()
        engine.in_flight[("m", "rt-a")] = 0
        await unloading
        assert runtime.unloads == ["m"]
    finally:
        await control.stop()


async def test_an_engine_that_does_not_answer_a_drain_does_not_fail_the_eviction(make_cluster, caplog):
    runtime = FakeRuntime("rt-a")
    router = await make_cluster(runtime).router()
    await router.register("m")
    await router.use("m")
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        engine.answering = False
        await router.manager.unload_copy("m", "rt-a")
        assert runtime.unloads == ["m"]
        assert "drain of model m on rt-a unconfirmed" in caplog.text
    finally:
        await control.stop()


def infer_histogram(router, code: str = "OK") -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """(count, sum in ms, count at or under 1 ms) of ModelInfer in the router's request histogram."""
    labels = {"method": "inference.GRPCInferenceService/ModelInfer", "code": code}
    value = router.metrics.collectors.get_sample_value
    under_1ms = value("modelmesh_api_request_milliseconds_bucket", {**labels, "le": "1.0"}) or 0.0
    count = value("modelmesh_api_request_milliseconds_count", labels) or 0.0
    return count, value("modelmesh_api_request_milliseconds_sum", labels) or 0.0, under_1ms


def timed(count: int, sum_us: int, fast: int, code: int = 0) -> LatencyCounts:
    """`count` ModelInfer calls of m: `fast` of them in the first bucket (≤ 0.5 ms), the rest in the third."""
    buckets = [fast, 0, count - fast] + [0] * (len(LATENCY_BOUNDS_US) - 2)
    return LatencyCounts("m", "/inference.GRPCInferenceService/ModelInfer", code, count, sum_us, tuple(buckets))


async def test_the_engines_latency_counts_are_added_to_the_request_histogram_once(make_cluster):
    router = await make_cluster(FakeRuntime("rt-a")).router()
    engine = FakeEngine()
    control = await started(router, engine)
    try:
        engine.timed = [timed(3, 2500, 2), timed(1, 300, 1, code=14)]
        await control.collect_usage()
        assert infer_histogram(router) == (3, 2.5, 2)
        assert infer_histogram(router, "UNAVAILABLE") == (1, 0.3, 1)
        await control.collect_usage()  # nothing new
        assert infer_histogram(router) == (3, 2.5, 2)
        engine.timed = [timed(5, 4500, 3), timed(1, 300, 1, code=14)]
        await control.collect_usage()
        assert infer_histogram(router) == (5, 4.5, 3)
        engine.timed = [timed(1, 100, 1)]  # the engine restarted: its counts start again
        await control.collect_usage()
        assert infer_histogram(router) == (6, 4.6, 4)
    finally:
        await control.stop()


async def test_readiness_needs_the_engine_running(make_cluster, tmp_path):
    cluster = make_cluster(FakeRuntime("rt-a"))
    router = await cluster.router()
    engine = FakeEngine()
    door = NativeFrontDoor(EngineControl(engine, router.manager, router.metrics), tmp_path, 8033, 8008)
    readiness = Readiness(cluster.kv, router.manager, period_seconds=3600)
    readiness.add_condition(door.problem)
    assert await readiness.check()
    await engine.stop()
    assert not await readiness.check()
    assert readiness.reason == "the data-plane engine (haproxy) is not running"


def test_instance_endpoints_become_addresses_the_engine_takes() -> None:
    assert ip_endpoint("127.0.0.1:8001") == "127.0.0.1:8001"
    assert ip_endpoint("[::1]:8001") == "[::1]:8001"
    assert ip_endpoint("localhost:8001") in ("127.0.0.1:8001", "[::1]:8001")
    assert ip_endpoint("fake:rt-a") is None


def test_stick_table_listing_is_parsed() -> None:
    text = (
        "# table: usage, type: string, size:1048576, used:2\n"
        "0x55a1b73ff808: key=echo use=0 exp=86399808 http_req_cnt=1\n"
        "0x55a1b73f9a78: key=team/iris@rt_3 use=2 exp=5 http_req_cnt=40 http_req_rate(10000)=3\n"
    )
    first, second = parse_table(text)
    assert (first.key, first.in_use, first.expires_in_ms, first.data) == ("echo", 0, 86399808, {"http_req_cnt": 1})
    assert (second.key, second.in_use) == ("team/iris@rt_3", 2)
    assert second.data == {"http_req_cnt": 40, "http_req_rate(10000)": 3}


def test_commands_are_batched_under_the_limit_in_order() -> None:
    commands = [f"add map /m key{i} value" for i in range(100)]
    grouped = list(batches(commands, limit=200))
    assert [c for batch in grouped for c in batch] == commands
    assert all(len(";".join(batch)) <= 200 for batch in grouped)


def test_the_engines_latency_buckets_are_the_request_histograms() -> None:
    assert tuple(b / 1000 for b in LATENCY_BOUNDS_US) == REQUEST_MS_BUCKETS


def test_a_latency_listing_is_parsed_and_other_lines_are_not() -> None:
    buckets = " ".join(["1"] + ["0"] * len(LATENCY_BOUNDS_US))
    text = f"m /inference.GRPCInferenceService/ModelInfer 0 1 420 {buckets}\nUnknown command\n\n"
    (counts,) = parse_latency(text)
    assert counts.model == "m" and counts.code == 0 and counts.count == 1 and counts.sum_us == 420
    assert counts.buckets == (1,) + (0,) * len(LATENCY_BOUNDS_US)
