"""`mesh status`: what it prints is what the router's registry and placement hold."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness.serve import BUILTIN_TYPES, REPO, InProcessRuntime, start_runtime

from mesh import status
from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.placement.records import ModelRecord
from mesh.processes import python_module_command
from mesh.registry import ModelState
from mesh.router import Router


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[tuple[Router, int, list[InProcessRuntime]]]:
    router = Router(Settings(grpc_port=0, rest_port=-1, metrics_port=-1, kv="memory://"))
    ports = await router.start()
    runtimes = [await start_runtime(name, capacity_bytes=10_000_000) for name in ("rt-a", "rt-b")]
    try:
        for runtime in runtimes:
            await router.add_instance(runtime.instance_id, runtime.endpoint, BUILTIN_TYPES)
        yield router, ports.grpc, runtimes
    finally:
        await router.stop(grace=0)
        for runtime in runtimes:
            await runtime.stop()


async def _cli(*args: str) -> tuple[int, str, str]:
    """Run `python -m mesh ...` without blocking the loop the router serves on."""
    process = await asyncio.create_subprocess_exec(
        *python_module_command("mesh"), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _populate(router: Router, grpc_port: int, tmp_path: Path) -> None:
    """Six echo models (three loaded, one of them used), one that fails to load, one vmodel."""
    for i in range(6):
        path = tmp_path / f"echo-{i}.json"
        path.write_text(json.dumps({"ballast_bytes": 1000 * (i + 1)}))
        await router.registry.register(ModelRecord(f"echo-{i}", "echo", str(path), key=f"k{i}"))
    for i in range(3):
        await router.manager.ensure_loaded(f"echo-{i}")
    (tmp_path / "broken.joblib").write_bytes(b"not a model")
    await router.registry.register(ModelRecord("broken", "sklearn", str(tmp_path / "broken.joblib")))
    assert (await router.registry.ensure_loaded("broken", sync=True)).state is ModelState.LOADING_FAILED
    await router.registry.set_vmodel("echo-v", "echo-1", sync=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        request = pb.ModelInferRequest(model_name="echo-0")
        request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
        await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def _expected(router: Router) -> dict[str, Any]:
    """The registry and placement state, in `mesh status --json`'s shape, read from the router's own objects."""
    registry, manager = router.registry, router.manager
    models = []
    for model in sorted(registry.models(), key=lambda m: m.model_id):
        model_status = registry.status(model.model_id)
        placement = manager.view.placements.get(model.model_id)
        failures = placement.record.failures if placement else {}
        models.append(
            {
                "id": model.model_id,
                "type": model.model_type,
                "path": model.path,
                "key": model.key,
                "state": model_status.state.name,
                "size_bytes": registry.size_bytes(model.model_id),
                "last_used_ms": registry.last_used_ms(model.model_id),
                "copies": [
                    {"instance": c.instance_id, "state": c.state.name, "since_ms": c.time_ms}
                    for c in model_status.copies
                    if c.state is not ModelState.LOADING_FAILED
                ],
                "failures": [
                    {"instance": c.instance_id, "time_ms": c.time_ms, "message": failures[c.instance_id].message}
                    for c in model_status.copies
                    if c.state is ModelState.LOADING_FAILED
                ],
            }
        )
    instances = [
        {
            "id": v.record.instance_id,
            "endpoint": v.record.endpoint,
            "capacity_bytes": v.record.capacity_bytes,
            "used_bytes": v.used_bytes,
            "model_types": list(v.record.model_types),
            "models": sorted(c.model_id for c in v.copies),
            "loads_in_flight": v.loads_in_flight,
            "started_ms": v.record.started_ms,
            "reachable": manager.health.answering(v.record.instance_id),
        }
        for v in sorted(manager.instance_views(), key=lambda v: v.record.instance_id)
    ]
    vmodels = [
        {
            "id": v.vmodel_id,
            "state": registry.vmodel_status(v.vmodel_id).state.name,
            "active_model": v.active_model_id,
            "target_model": v.target_model_id,
            "owner": v.owner,
        }
        for v in sorted(registry.vmodels(), key=lambda v: v.vmodel_id)
    ]
    return {"instances": instances, "models": models, "vmodels": vmodels}


async def test_status_json_matches_the_registry(router, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh, grpc_port, _runtimes = router
    await _populate(mesh, grpc_port, tmp_path)

    code, out, err = await _cli("status", "--json", "--address", f"127.0.0.1:{grpc_port}")

    assert code == 0, err
    printed = json.loads(out)
    expected = _expected(mesh)
    assert printed == expected
    # The state the test built is in there, not just two empty lists that agree.
    models = {m["id"]: m for m in printed["models"]}
    assert [m for m in models if models[m]["state"] == "LOADED"] == ["echo-0", "echo-1", "echo-2"]
    assert models["echo-0"]["last_used_ms"] > 0 and models["echo-3"]["last_used_ms"] == 0
    assert models["broken"]["state"] == "LOADING_FAILED" and models["broken"]["failures"][0]["message"]
    assert sum(len(i["models"]) for i in printed["instances"]) == 3
    assert all(i["reachable"] and i["used_bytes"] > 0 for i in printed["instances"])
    assert printed["vmodels"] == [
        {"id": "echo-v", "state": "DEFINED", "active_model": "echo-1", "target_model": "echo-1", "owner": ""}
    ]


async def test_status_tables_name_every_instance_and_model(router, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh, grpc_port, runtimes = router
    await _populate(mesh, grpc_port, tmp_path)

    code, out, err = await _cli("status", "--address", f"127.0.0.1:{grpc_port}")

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "INSTANCES (2, 2 reachable)"
    assert lines[1].split() == ["ID", "ENDPOINT", "CAPACITY", "USED", "MODELS", "LOADING", "REACHABLE"]
    for runtime in runtimes:
        [row] = [line for line in lines if line.startswith(runtime.instance_id + " ")]
        assert runtime.endpoint in row and "9.5 MiB" in row and row.endswith("yes")
    assert "MODELS (7, 3 loaded)" in lines
    rows = {line.split()[0]: line for line in lines[lines.index("MODELS (7, 3 loaded)") + 2 :] if line}
    assert {"echo-0", "echo-5", "broken"} <= set(rows)
    assert "LOADED" in rows["echo-0"] and rows["echo-0"].split()[-2:] == ["ago", "-"]
    assert "never" in rows["echo-5"]
    assert "LOADING_FAILED" in rows["broken"] and "rt-" in rows["broken"]
    assert "VMODELS (1)" in lines


def test_sizes_and_ages_read_like_a_person_says_them() -> None:
    assert [status.size(n) for n in (0, 1023, 1536, 2 * 1024**2, 5 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "2.0 MiB",
        "5120.0 GiB",
    ]
    assert [status.age(ms) for ms in (0, 59_999, 60_000, 7_200_000, 3 * 86_400_000)] == ["0s", "59s", "1m", "2h", "3d"]


async def test_explain_says_where_a_model_is_why_and_what_a_load_would_do(router, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh, grpc_port, _runtimes = router
    await _populate(mesh, grpc_port, tmp_path)
    address = ("--address", f"127.0.0.1:{grpc_port}")

    code, out, err = await _cli("explain", "echo-0", "--json", *address)
    assert code == 0, err
    doc = json.loads(out)
    [copy] = doc["copies"]
    assert copy["state"] == "LOADED" and copy["why"] == "fit in free memory"
    assert [e["event"] for e in doc["history"]] == ["loaded"] and doc["history"][0]["instance"] == copy["instance"]
    other = next(row for row in doc["next_load"]["instances"] if row["instance"] != copy["instance"])
    assert other["verdict"] == "fits in free memory" and doc["next_load"]["instance"] == other["instance"]

    code, out, err = await _cli("explain", "broken", *address)
    assert code == 0, err
    assert "load_failed" in out and "a load now would go to" in out

    code, out, err = await _cli("explain", "nope", *address)
    assert code != 0 and "model 'nope' is not registered" in err and "Traceback" not in err
