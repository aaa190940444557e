"""Metrics of a real `python -m mesh serve`: the runtime processes' metrics appear on the router's /metrics, summed
over the processes (prometheus_client's multiprocess mode), and the Grafana dashboard asks only for metrics that
mesh exports.

The server runs as a subprocess on ports it picks (--grpc-port 0, MESH_METRICS_PORT=0, read back from its port
file) with two built-in runtimes; teardown stops it with SIGTERM and kills, by pid, anything it left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.processes import python_module_command

pytestmark = pytest.mark.slow  # a router and two runtime processes

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "mesh-dashboard.json"
TIMEOUT_S = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def _children(parent: int) -> dict[str, int]:
    """The built-in runtime processes whose parent is `parent`, by instance id."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent and fields[0] != "Z" and "--instance-id" in command:
            found[command[command.index("--instance-id") + 1]] = int(entry.name)
    return found


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_file: Path
    tmp: Path

    def scrape(self) -> str:
        response = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30)
        assert response.status_code == 200
        return response.text

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-20_000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    port_file, log_file = tmp / "ports.json", tmp / "mesh.log"
    command = [
        *python_module_command("mesh"), "serve", "--grpc-port", "0", "--rest-port", "-1", "--port-file", str(port_file),
        "--data-dir", str(tmp / "data"), "--kv", "memory://", "--runtimes", "2", "--capacity-mb", "16", "--no-examples",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_METRICS_PORT": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    runtimes: set[int] = set()
    try:
        wait_until(lambda: port_file.exists() or process.poll() is not None, "mesh serve writes its port file")
        assert process.poll() is None, log_file.read_text()
        ports = json.loads(port_file.read_text())
        assert isinstance(ports["metrics"], int) and ports["metrics"] > 0, ports
        runtimes.update(_children(process.pid).values())
        yield Served(process, ports["grpc"], ports["metrics"], log_file, tmp)
    finally:
        runtimes.update(_children(process.pid).values())
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for pid in runtimes:  # each runtime stops once its parent is gone; this is the last resort
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Workload:
    samples: Samples
    text: str
    holders: dict[str, str]  # model id → instance id


def _infer(channel: grpc.Channel, model: str) -> grpc.StatusCode:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
    try:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _holders(channel: grpc.Channel) -> dict[str, str]:
    listing = admin_grpc.MeshAdminStub(channel).ListInstances(admin.ListInstancesRequest(), timeout=30)
    return {model: i.instanceId for i in listing.instances for model in i.models}


@pytest.fixture(scope="module")
def workload(served: Served) -> Iterator[Workload]:
    """Two echo models, placed one on each runtime, inferred 3 and 2 times; a model whose load fails; one unload."""
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        management = mm_grpc.ModelMeshStub(channel)
        files = {"e1": b"{}", "e2": b"{}", "broken": b"not a pickle"}
        for model_id, content in files.items():
            path = served.tmp / f"{model_id}.model"
            path.write_bytes(content)
            model_type = "sklearn" if model_id == "broken" else "echo"
            info = mm.ModelInfo(type=model_type, path=str(path))
            management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)
        assert [_infer(channel, m) for m in ("e1", "e1", "e1", "e2", "e2")] == [grpc.StatusCode.OK] * 5
        assert _infer(channel, "broken") is grpc.StatusCode.INTERNAL
        holders = _holders(channel)
        management.registerModel(
            mm.RegisterModelRequest(
                modelId="e3", modelInfo=mm.ModelInfo(type="echo", path=str(served.tmp / "e1.model"))
            ),
            timeout=30,
        )
        assert _infer(channel, "e3") is grpc.StatusCode.OK
        management.unregisterModel(mm.UnregisterModelRequest(modelId="e3"), timeout=30)
    text = served.scrape()
    yield Workload(parse(text), text, holders)


def test_runtime_stage_histograms_add_up_across_the_runtime_processes(served: Served, workload: Workload) -> None:
    # One model on each runtime process: 3 requests through one, 2 through the other, and e3's 1 on either.
    assert workload.holders["e1"] != workload.holders["e2"], workload.holders
    samples = workload.samples
    for stage in ("preprocess", "predict", "postprocess"):
        assert value(samples, f"mesh_runtime_{stage}_milliseconds_count", model_type="echo") == 6, served.log()
        assert value(samples, f"mesh_runtime_{stage}_milliseconds_bucket", model_type="echo", le="+Inf") == 6
    assert value(samples, "mesh_runtime_loadmodel_milliseconds_count", model_type="echo") == 3
    assert value(samples, "mesh_runtime_loadmodel_failure_total", model_type="sklearn") == 1
    assert value(samples, "mesh_runtime_unloadmodel_total", model_type="echo") == 1
    assert value(samples, "mesh_runtime_models_loaded", model_type="echo") == 2  # livesum: e1 + e2
    # The router's own metrics are beside them, once: the processes' series carry no pid.
    assert value(samples, "modelmesh_loadmodel_milliseconds_count") == 3
    assert not any("pid" in dict(labels) for _name, labels in samples)


def test_a_dead_runtime_leaves_its_counts_in_the_sum_and_its_gauges_out(served: Served, workload: Workload) -> None:
    victim = workload.holders["e1"]
    pid = _children(served.process.pid)[victim]
    os.kill(pid, signal.SIGKILL)
    # The supervisor marks the process dead and starts another: its livesum gauge (e1 loaded) leaves the sum.
    wait_until(lambda: _children(served.process.pid).get(victim, pid) != pid, f"{victim} is restarted")
    wait_until(
        lambda: value(parse(served.scrape()), "mesh_runtime_models_loaded", model_type="echo") == 1,
        "the dead runtime's gauge leaves the sum",
    )
    samples = parse(served.scrape())
    assert value(samples, "mesh_runtime_predict_milliseconds_count", model_type="echo") == 6
    assert value(samples, "mesh_runtime_loadmodel_milliseconds_count", model_type="echo") == 3


_METRIC = re.compile(r"\b(?:modelmesh|mesh_runtime)_[a-z0-9_]+")


def exported_names(text: str) -> set[str]:
    """Every series name a scrape can hold: a histogram's _bucket/_count/_sum, a counter's _total, a gauge's name."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_grafana_dashboard_queries_only_metrics_mesh_exports(workload: Workload) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert all(p["targets"] for p in panels), "a panel with no query"

    exported = exported_names(workload.text)
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert used, exprs
    assert used - exported == set()
    # And it shows what the issue asks for: each of these is queried by some panel.
    for name in (
        "modelmesh_api_request_milliseconds_bucket",
        "modelmesh_cache_miss_total",
        "modelmesh_loadmodel_milliseconds_bucket",
        "modelmesh_model_evicted_total",
        "modelmesh_loadmodel_failure_total",
        "modelmesh_models_loaded_total",
        "modelmesh_models_managed_total",
        "modelmesh_instance_used_bytes",
        "modelmesh_instance_capacity_bytes",
        "modelmesh_instance_lru_age_seconds",
        "mesh_runtime_predict_milliseconds_bucket",
    ):
        assert name in used, name


def test_a_standalone_runtime_serves_its_own_metrics(tmp_path: Path) -> None:
    port_file = tmp_path / "runtime.port"
    command = [*python_module_command("adapters.builtin"), "--port", "0", "--port-file", str(port_file)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen([*command, "--metrics-port", "0"], cwd=REPO, env=env)
    try:
        wait_until(lambda: port_file.exists() or process.poll() is not None, "the runtime writes its port file")
        metrics_port = json.loads(port_file.read_text())["metrics_port"]
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert families["mesh_runtime_predict_milliseconds"] == "histogram"
        assert families["mesh_runtime_models_loaded"] == "gauge"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
