"""`mesh simulate` (mesh/simulate.py): traces read and refused line by line, capacity sweeps, and the check that
matters: a real router's access log, replayed, gives the hit ratio the router had."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from harness.serve import BUILTIN_TYPES, REPO, InProcessRuntime, start_runtime

from mesh import simulate
from mesh.config import Settings
from mesh.errors import InvalidArgument
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.logs import JsonFormatter
from mesh.placement.records import ModelRecord
from mesh.processes import python_module_command
from mesh.router import Router

MIB = 2**20
TOLERANCE = 0.02
"""How far the replayed hit ratio may be from the router's (absolute): the router places a model by its predicted
size before its first load, the access log carries the measured one."""


def test_csv_and_json_lines_traces_read_alike(tmp_path: Path) -> None:
    csv_trace = tmp_path / "t.csv"
    csv_trace.write_text("time,model,size_bytes,load_ms\n2.0,b,200,30\n1.5,a,100,\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"time": 2.0, "model": "b", "size_bytes": 200, "load_ms": 30}\n{"time": 1.5, "model": "a"}\n')
    expected = [simulate.Request(1500, "a", 100), simulate.Request(2000, "b", 200, 30)]
    assert simulate.read_trace(csv_trace) == expected
    assert simulate.read_trace(jsonl, default_size_bytes=100) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,model\n1,a\n", "line 2: model 'a' has no size"),
        ("time,model,size_bytes\n1,a,10\nsoon,b,10\n", "line 3: could not convert string to float: 'soon'"),
        ('{"time": 1, "size_bytes": 5}\n', "line 1: no 'model'"),
        ('{"time": 1, "model": "a", "size_bytes": 5}\n[1]\n', "line 2: not a JSON object"),
        ("", "holds no requests"),
    ],
)
def test_a_bad_trace_is_refused_naming_the_line(tmp_path: Path, content: str, message: str) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        simulate.read_trace(trace)


def test_replay_counts_lru_hits_loads_and_seconds_and_the_sweep_finds_the_capacity() -> None:
    requests = [simulate.Request(t, m, 100, 10) for t, m in enumerate("abcabcabc")]
    two = simulate.replay(requests, instances=1, capacity_bytes=200)  # LRU over three models in turn: all miss
    assert (two.hits, two.misses, two.bytes_loaded, two.load_ms, two.evictions) == (0, 9, 900, 90, 7)
    three = simulate.replay(requests, instances=1, capacity_bytes=300)
    assert (three.hits, three.misses) == (6, 3)
    outcomes, needed = simulate.sweep(requests, 1, 200, "lru", target_miss_ratio=0.34)
    assert needed == 300 and simulate.compulsory_miss_ratio(requests) == pytest.approx(3 / 9)
    assert [o.capacity_bytes for o in outcomes][0] == 100  # the smallest that holds the largest model


@pytest.fixture
def access_log(tmp_path: Path) -> Iterator[Path]:
    """The router's access lines as `mesh --log-format json` writes them, in a file."""
    path = tmp_path / "access.jsonl"
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("mesh.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
async def router() -> AsyncIterator[tuple[Router, int]]:
    router = Router(Settings(grpc_port=0, rest_port=-1, metrics_port=-1, kv="memory://", access_log=True))
    ports = await router.start()
    runtimes: list[InProcessRuntime] = [await start_runtime(n, capacity_bytes=5 * MIB // 2) for n in ("rt-a", "rt-b")]
    try:
        for runtime in runtimes:
            await router.add_instance(runtime.instance_id, runtime.endpoint, BUILTIN_TYPES)
        yield router, ports.grpc
    finally:
        await router.stop(grace=0)
        for runtime in runtimes:
            await runtime.stop()


async def test_the_routers_access_log_replays_to_the_hit_ratio_the_router_had(  # type: ignore[no-untyped-def]
    router, access_log: Path, tmp_path: Path
) -> None:
    mesh, grpc_port = router
    sizes = [MIB // 4 * (1 + i % 3) for i in range(16)]  # 0.25-0.75 MiB each, 8 MiB in all; 5 MiB of room
    for i, ballast in enumerate(sizes):
        path = tmp_path / f"m{i}.json"
        path.write_text(json.dumps({"ballast_bytes": ballast}))
        await mesh.registry.register(ModelRecord(f"m{i}", "echo", str(path)))
    weights = 1 / np.arange(1, 17) ** 0.6
    sequence = np.random.default_rng(7).choice(16, size=300, p=weights / weights.sum())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in sequence:
            request = pb.ModelInferRequest(model_name=f"m{i}")
            request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
            await stub.ModelInfer(request, timeout=30)
    misses = mesh.metrics.collectors.get_sample_value("modelmesh_cache_miss_total")
    router_hit_ratio = 1 - misses / len(sequence)
    lines = [json.loads(line) for line in (await asyncio.to_thread(access_log.read_text)).splitlines()]
    assert len(lines) == len(sequence) and sum(not line["hit"] for line in lines) == misses

    capacity_mb = mesh.manager.view.instances["rt-a"].record.capacity_bytes / MIB
    process = await asyncio.create_subprocess_exec(
        *python_module_command("mesh"), "simulate", str(access_log), "--instances", "2",
        "--capacity-mb", str(capacity_mb), "--json", cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    replayed = json.loads(out)["result"]
    assert replayed["requests"] == len(sequence)
    assert 0.3 < router_hit_ratio < 0.95  # evictions happened, and hits: a trace worth checking
    assert abs(replayed["hit_ratio"] - router_hit_ratio) <= TOLERANCE, (replayed, router_hit_ratio)


async def test_an_access_line_names_what_was_asked_what_served_it_and_how_it_ended(  # type: ignore[no-untyped-def]
    router, access_log: Path, tmp_path: Path
) -> None:
    mesh, grpc_port = router
    (tmp_path / "echo.json").write_text(json.dumps({"ballast_bytes": 1000}))
    await mesh.registry.register(ModelRecord("echo-1", "echo", str(tmp_path / "echo.json")))
    await mesh.registry.set_vmodel("echo-v", "echo-1", sync=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in ("echo-v", "echo-v", "nope"):
            request = pb.ModelInferRequest(model_name=name)
            request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
            try:
                await stub.ModelInfer(request, timeout=30)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.NOT_FOUND
    first, second, unknown = [json.loads(line) for line in (await asyncio.to_thread(access_log.read_text)).splitlines()]
    assert (first["asked"], first["model"], first["code"], first["hit"]) == ("echo-v", "echo-1", "OK", False)
    assert second["hit"] and second["instance"] in ("rt-a", "rt-b") and second["model_bytes"] > 1000
    assert second["request_bytes"] > 0 and second["response_bytes"] > 0 and second["ms"] > 0
    assert (unknown["asked"], unknown["model"], unknown["code"]) == ("nope", "", "NOT_FOUND")
