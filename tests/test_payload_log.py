"""Payload logging (mesh/payload_log.py) from a real router to a real HTTP sink on loopback and to a file: the
CloudEvents KServe's logger sends, per model and sampled, and a sink that stops answering costs the requests
nothing (payloads are dropped and counted, the queue stays bounded)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from aiohttp import web
from harness.serve import BUILTIN_TYPES, start_runtime

from mesh import payload_log
from mesh.config import Settings
from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.placement.records import ModelRecord
from mesh.router import Router


class Sink:
    """An HTTP server that records each CloudEvent (headers, JSON body), or, once `hang` is set, never answers."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], object]] = []
        self.arrived = asyncio.Event()
        self.hang = False
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()  # a sink that stopped answering (until the test ends)
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("ce-")}
        self.events.append((headers, json.loads(await request.read())))
        self.arrived.set()
        return web.Response(status=202)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/events"

    async def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} events of {count}"
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(deadline - time.monotonic(), 0.01))


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = Sink()
    await server.start()
    yield server
    server.release.set()
    assert server.runner is not None
    await server.runner.cleanup()


async def _router(tmp_path: Path, payload_log_setting: str) -> tuple[Router, int, int, list]:
    router = Router(
        Settings(grpc_port=0, rest_port=0, metrics_port=-1, kv="memory://", payload_log=payload_log_setting)
    )
    ports = await router.start()
    runtime = await start_runtime("rt-a")
    await router.add_instance("rt-a", runtime.endpoint, BUILTIN_TYPES)
    for name in ("logged", "quiet"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"ballast_bytes": 100}))
        await router.registry.register(ModelRecord(name, "echo", str(tmp_path / f"{name}.json")))
    return router, ports.grpc, ports.rest, [runtime]


async def _stop(router: Router, runtimes: list) -> None:
    await router.stop(grace=0)
    for runtime in runtimes:
        await runtime.stop()


def _request(model: str, value: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=f"req-{value}")
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(value)
    return request


async def test_payloads_of_the_chosen_model_reach_the_sink_as_cloudevents(sink: Sink, tmp_path: Path) -> None:
    router, grpc_port, rest_port, runtimes = await _router(tmp_path, f"{sink.url}?models=logged&headers=x-tenant")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(_request("logged", 7), metadata=(("x-tenant", "team-a"),), timeout=30)
            await stub.ModelInfer(_request("quiet", 8), timeout=30)
        body = {"id": "rest-9", "inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [9]}]}
        async with httpx.AsyncClient(trust_env=False) as http:
            answer = await http.post(f"http://127.0.0.1:{rest_port}/v2/models/logged/infer", json=body, timeout=30)
        assert answer.status_code == 200
        await sink.wait_for(4)
    finally:
        await _stop(router, runtimes)
    assert len(sink.events) == 4  # the quiet model's payloads were not taken
    (req_headers, req_body), (resp_headers, resp_body) = sink.events[:2]
    assert req_headers["ce-type"] == "org.kubeflow.serving.inference.request"
    assert resp_headers["ce-type"] == "org.kubeflow.serving.inference.response"
    assert req_headers["ce-id"] == resp_headers["ce-id"] == "req-7" and req_headers["ce-specversion"] == "1.0"
    assert req_headers["ce-inferenceservicename"] == "logged" and req_headers["ce-instance"] == "rt-a"
    assert req_headers["ce-header-x-tenant"] == "team-a"
    assert req_body == {
        "id": "req-7",
        "model_name": "logged",
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}],
    }
    assert resp_body["outputs"][0]["data"] == [7]  # type: ignore[index]
    rest_request = sink.events[2][1]
    assert rest_request["inputs"][0]["data"] == [9] and rest_request["id"] == "rest-9"  # type: ignore[index]


async def test_a_file_sink_gets_json_lines_sampled(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    router, grpc_port, _, runtimes = await _router(tmp_path, f"file://{path} file://{tmp_path / 'none.jsonl'}?sample=0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            for value in range(3):
                await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request("quiet", value), timeout=30)
    finally:
        await _stop(router, runtimes)  # delivers what is queued first
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["type"].rsplit(".", 1)[1], line["data"]["id"]) for line in lines[:2]] == [
        ("request", "req-0"),
        ("response", "req-0"),
    ]
    assert len(lines) == 6 and not (tmp_path / "none.jsonl").exists()


async def test_a_sink_that_stops_answering_costs_requests_nothing_and_drops_are_counted(
    sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload_log, "QUEUE_LIMIT", 5)
    sink.hang = True
    router, grpc_port, _, runtimes = await _router(tmp_path, sink.url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(_request("logged", 0), timeout=30)  # the load, before timing
            for value in range(100):
                # each bounded well under the sink's send timeout: a request that waited for the sink would fail
                await stub.ModelInfer(_request("logged", value), timeout=payload_log.SEND_TIMEOUT_S / 2)
            assert router.payloads.pending() <= 5  # bounded while the sink hangs
        dropped = router.metrics.collectors.get_sample_value(
            "modelmesh_payload_log_dropped_total", {"sink": sink.url, "reason": "queue_full"}
        )
    finally:
        await _stop(router, runtimes)
    assert dropped is not None and dropped >= 90


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("ftp://x/y", "the scheme must be http, https or file"),
        ("http://x/y?sample=2", "sample must be from 0 to 1"),
        ("http://x/y?model=a", "unknown parameter"),
        ("file://", "a file sink needs a path"),
    ],
)
def test_a_bad_sink_is_refused_saying_why(setting: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        payload_log.parse_sinks(setting)
