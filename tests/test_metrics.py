"""The router's Prometheus metrics, scraped over HTTP after a scripted workload: every count and bucket moves by
exactly what the workload dictates, the gauges agree with ListInstances and the registry, and no series carries
a model id unless metrics_per_model asks for it.

A router on 127.0.0.1 port 0 in the test's event loop, before one in-process built-in runtime whose capacity
holds two of the three echo models.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString as le

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.metrics import RuntimeMetrics
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer
from adapters.builtin.settings import RuntimeSettings
from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.registry import ModelState
from mesh.router import Ports, Router

BALLAST = 400_000
CAPACITY = 1_000_000  # two echo models with BALLAST fit, three do not
INFER = "inference.GRPCInferenceService/ModelInfer"
REST_INFER = "POST /v2/models/{name}/infer"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Deltas:
    before: Samples
    after: Samples

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


@dataclass
class Fixture:
    router: Router
    ports: Ports
    runtime: RuntimeMetrics
    tmp: Path
    http: httpx.AsyncClient
    channel: grpc.aio.Channel

    async def scrape(self) -> Samples:
        response = await self.http.get(f"http://127.0.0.1:{self.ports.metrics}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)

    async def register(self, model_id: str, model_type: str = "echo", content: bytes | None = None) -> None:
        path = self.tmp / f"{model_id}.model"
        path.write_bytes(content if content is not None else json.dumps({"ballast_bytes": BALLAST}).encode())
        info = mm.ModelInfo(type=model_type, path=str(path))
        await mm_grpc.ModelMeshStub(self.channel).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=info)
        )

    async def infer(self, model: str, inputs: bool = True) -> grpc.StatusCode:
        request = pb.ModelInferRequest(model_name=model)
        if inputs:
            request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(7)
        try:
            await pb_grpc.GRPCInferenceServiceStub(self.channel).ModelInfer(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def _start(tmp: Path, **settings: object) -> AsyncIterator[Fixture]:
    runtime_settings = RuntimeSettings(instance_id="rt-a", capacity_bytes=CAPACITY, max_loading_concurrency=4)
    runtime_metrics = RuntimeMetrics()
    core = BuiltinRuntime(runtime_settings, runtime_metrics)
    server = grpc.aio.server()
    rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, runtime_settings), server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    runtime_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    router = Router(
        Settings(grpc_port=0, rest_port=0, metrics_port=0, kv="memory://", data_dir=str(tmp), **settings)  # type: ignore[arg-type]
    )
    ports = await router.start()
    try:
        await router.add_instance("rt-a", f"127.0.0.1:{runtime_port}", ("echo", "sklearn"))
        async with (
            httpx.AsyncClient(timeout=30) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel,
        ):
            yield Fixture(router, ports, runtime_metrics, tmp, http, channel)
    finally:
        await router.stop(grace=0)
        await server.stop(0)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Fixture]:
    async for fixture in _start(tmp_path):
        yield fixture


@pytest.fixture
async def per_model_mesh(tmp_path: Path) -> AsyncIterator[Fixture]:
    async for fixture in _start(tmp_path, metrics_per_model=True):
        yield fixture


async def test_a_scripted_workload_moves_every_count_by_what_it_did(mesh: Fixture) -> None:
    before = await mesh.scrape()
    for model_id in ("a", "b", "c"):
        await mesh.register(model_id)
    await mesh.register("broken", "sklearn", b"not a pickle")

    # Capacity holds two: a, b load; c evicts a; a comes back and evicts c (b was used after c).
    codes = [await mesh.infer(m) for m in ("a", "a", "b", "c", "b", "a")]
    assert codes == [grpc.StatusCode.OK] * 6
    assert await mesh.infer("nope") is grpc.StatusCode.NOT_FOUND
    assert await mesh.infer("") is grpc.StatusCode.INVALID_ARGUMENT  # the router refuses it: no model named
    assert await mesh.infer("b", inputs=False) is grpc.StatusCode.INVALID_ARGUMENT  # the runtime refuses it
    assert await mesh.infer("broken") is grpc.StatusCode.INTERNAL  # its load fails
    rest = f"http://127.0.0.1:{mesh.ports.rest}"
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]}
    assert (await mesh.http.post(f"{rest}/v2/models/b/infer", json=body)).status_code == 200
    assert (await mesh.http.post(f"{rest}/v2/models/nope/infer", json=body)).status_code == 404
    assert (await mesh.http.get(f"{rest}/no/such/route")).status_code == 404
    after = await mesh.scrape()
    delta = Deltas(before, after)

    api = "modelmesh_api_request_milliseconds_count"
    assert delta(api, method=INFER, code="OK") == 6
    assert delta(api, method=INFER, code="NOT_FOUND") == 1
    assert delta(api, method=INFER, code="INVALID_ARGUMENT") == 2
    assert delta(api, method=INFER, code="INTERNAL") == 1
    assert delta(api, method=REST_INFER, code="OK") == 1
    assert delta(api, method=REST_INFER, code="NOT_FOUND") == 1
    assert delta(api, method="REST (unmatched)", code="NOT_FOUND") == 1
    assert delta(api, method="mmesh.ModelMesh/registerModel", code="OK") == 4
    # Histogram buckets are cumulative: +Inf holds every observation, and no bucket holds more.
    ok = {"method": INFER, "code": "OK"}
    assert delta("modelmesh_api_request_milliseconds_bucket", le="+Inf", **ok) == 6
    assert delta("modelmesh_api_request_milliseconds_bucket", le=le(60_000), **ok) == 6
    assert delta("modelmesh_api_request_milliseconds_sum", **ok) > 0

    # Forwarded to the runtime: 6 + 1 gRPC and 1 REST answered; the one it refused has no response size.
    assert delta("modelmesh_invoke_model_milliseconds_count", method=INFER) == 8
    assert delta("modelmesh_request_size_bytes_count", method=INFER) == 8
    assert delta("modelmesh_response_size_bytes_count", method=INFER) == 7
    assert delta("modelmesh_request_size_bytes_bucket", method=INFER, le=le(64)) == 8  # a few bytes each
    assert delta("modelmesh_response_size_bytes_bucket", method=INFER, le=le(64)) == 7

    # Misses: a, b, c, a again, broken; each waited for its load.
    assert delta("modelmesh_cache_miss_total") == 5
    assert delta("modelmesh_cache_miss_milliseconds_count") == 5
    assert delta("modelmesh_loadmodel_milliseconds_count") == 4
    assert delta("modelmesh_loadmodel_failure_total") == 1
    assert delta("modelmesh_loaded_model_size_bytes_count") == 4
    assert delta("modelmesh_loaded_model_size_bytes_bucket", le=le(256 * 1024)) == 0  # each holds 400 kB of ballast
    assert delta("modelmesh_loaded_model_size_bytes_bucket", le=le(1024 * 1024)) == 4
    assert delta("modelmesh_model_evicted_total") == 2
    assert delta("modelmesh_age_at_eviction_milliseconds_count") == 2
    assert delta("modelmesh_unloadmodel_milliseconds_count") == 2
    assert delta("modelmesh_unloadmodel_failure_total") == 0

    # The runtime's own stages: 8 requests decoded, 7 predicted (one had no inputs), 7 encoded.
    runtime = parse(generate_latest(mesh.runtime.registry).decode())
    assert value(runtime, "mesh_runtime_preprocess_milliseconds_count", model_type="echo") == 8
    assert value(runtime, "mesh_runtime_predict_milliseconds_count", model_type="echo") == 7
    assert value(runtime, "mesh_runtime_postprocess_milliseconds_count", model_type="echo") == 7
    assert value(runtime, "mesh_runtime_loadmodel_milliseconds_count", model_type="echo") == 4
    assert value(runtime, "mesh_runtime_loadmodel_failure_total", model_type="sklearn") == 1
    assert value(runtime, "mesh_runtime_unloadmodel_total", model_type="echo") == 2
    assert value(runtime, "mesh_runtime_models_loaded", model_type="echo") == 2


async def test_gauges_match_list_instances_and_the_registry(mesh: Fixture) -> None:
    for model_id in ("a", "b", "c"):
        await mesh.register(model_id)
    await mesh.register("broken", "sklearn", b"not a pickle")
    for model_id in ("a", "b", "c", "broken"):
        await mesh.infer(model_id)
    samples = await mesh.scrape()

    listing = await admin_grpc.MeshAdminStub(mesh.channel).ListInstances(admin.ListInstancesRequest())
    assert [i.instanceId for i in listing.instances] == ["rt-a"]
    for instance in listing.instances:
        labels = {"instance_id": instance.instanceId}
        assert value(samples, "modelmesh_instance_capacity_bytes", **labels) == instance.capacityInBytes == CAPACITY
        assert value(samples, "modelmesh_instance_used_bytes", **labels) == instance.usedInBytes > 2 * BALLAST
        assert value(samples, "modelmesh_instance_models_total", **labels) == len(instance.models) == 2
        assert 0 <= value(samples, "modelmesh_instance_lru_age_seconds", **labels) < 60

    registry = mesh.router.registry
    states = [registry.status(m.model_id).state for m in registry.models()]
    assert value(samples, "modelmesh_models_managed_total") == len(states) == 4
    assert value(samples, "modelmesh_models_loaded_total") == states.count(ModelState.LOADED) == 2
    assert value(samples, "modelmesh_models_with_failure_total") == states.count(ModelState.LOADING_FAILED) == 1
    assert value(samples, "modelmesh_requests_waiting_for_load") == 0

    # The scaling signal: a, b and c were used just now (the window is 10 minutes), at their measured sizes; the
    # broken model has no size. Three of them do not fit in a capacity for two.
    sizes = {m: registry.size_bytes(m) for m in ("a", "b", "c")}
    assert all(size > BALLAST for size in sizes.values())
    assert value(samples, "modelmesh_working_set_bytes") == sum(sizes.values())
    assert value(samples, "modelmesh_capacity_bytes") == CAPACITY
    assert value(samples, "modelmesh_cache_pressure") == pytest.approx(sum(sizes.values()) / CAPACITY)
    assert value(samples, "modelmesh_cache_pressure") > 1
    # a was evicted for c moments after it was used.
    assert 0 <= value(samples, "modelmesh_evicted_copy_age_seconds") < 60


async def test_no_series_names_a_model_by_default(mesh: Fixture) -> None:
    await mesh.register("a")
    await mesh.infer("a")
    await mesh.infer("nope")
    samples = await mesh.scrape()
    assert value(samples, "modelmesh_api_request_milliseconds_count", method=INFER, code="OK") == 1
    labelled = {name for name, labels in samples if "model" in dict(labels) or "modelId" in dict(labels)}
    assert labelled == set()


async def test_metrics_per_model_count_loads_evictions_and_unloads_per_model(per_model_mesh: Fixture) -> None:
    mesh = per_model_mesh
    for model_id in ("a", "b", "c"):
        await mesh.register(model_id)
    await mesh.register("broken", "sklearn", b"not a pickle")
    for model_id in ("a", "b", "c", "broken"):  # room for two: c evicts a (the least recently used)
        await mesh.infer(model_id)
    samples = await mesh.scrape()
    for model_id, loads in (("a", 1), ("b", 1), ("c", 1), ("broken", 0)):
        assert value(samples, "modelmesh_loadmodel_milliseconds_count", model=model_id) == loads, model_id
        assert value(samples, "modelmesh_cache_miss_total", model=model_id) == 1, model_id
    assert value(samples, "modelmesh_loadmodel_failure_total", model="broken") == 1
    assert value(samples, "modelmesh_model_evicted_total", model="a") == 1
    assert value(samples, "modelmesh_unloadmodel_milliseconds_count", model="a") == 1
    assert value(samples, "modelmesh_model_evicted_total", model="b") == 0


async def test_metrics_per_model_labels_registered_names_only(per_model_mesh: Fixture) -> None:
    mesh = per_model_mesh
    await mesh.register("a")
    await mesh.infer("a")
    await mesh.infer("a")
    await mesh.infer("invented-by-a-client")
    samples = await mesh.scrape()

    api = "modelmesh_api_request_milliseconds_count"
    assert value(samples, api, method=INFER, code="OK", model="a") == 2
    assert value(samples, api, method=INFER, code="NOT_FOUND", model="") == 1  # not a series per invented name
    assert value(samples, "modelmesh_invoke_model_milliseconds_count", method=INFER, model="a") == 2
    assert value(samples, "modelmesh_cache_miss_total", model="a") == 1
    assert value(samples, "modelmesh_cache_miss_milliseconds_count", model="a") == 1
    assert value(samples, "modelmesh_loadmodel_milliseconds_count", model="a") == 1
    assert not any(dict(labels).get("model") == "invented-by-a-client" for _name, labels in samples)


def test_metrics_settings_come_from_the_environment() -> None:
    assert Settings().metrics_port == 2112
    assert Settings().metrics_per_model is False
    settings = Settings.from_env({"MESH_METRICS_PORT": "-1", "MESH_METRICS_PER_MODEL": "true"})
    assert (settings.metrics_port, settings.metrics_per_model) == (-1, True)
    assert Settings.from_env({"MESH_METRICS_PER_MODEL": "false"}).metrics_per_model is False
    with pytest.raises(ValueError, match="MESH_METRICS_PER_MODEL"):
        Settings.from_env({"MESH_METRICS_PER_MODEL": "maybe"})
