"""Tenants kept apart: with the controller's runtime isolation (its default), a model loads only on the instances
of the runtime it was assigned in its own namespace, even where another namespace's instance of the same format
has more room; and with namespaced vmodel ids (the default) two namespaces may each have an InferenceService of
the same name.

The fake cluster runs no pods, so two built-in runtime processes play the two namespaces' runtime pods, carrying
the labels the controller gives those pods' adapters (`--labels rt:<namespace>/<runtime>`); one `mesh serve`
routes to both, told it serves team-x (as the router inside team-x's runtime pod is)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from harness.serve import REPO, ServeProcess, start_serve, stop_serve
from k8s_harness import KubeCluster, running, settings_for, wait_for
from kubernetes import client
from test_controller import SKLEARN, infer, listing, loaded, sklearn

from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.processes import python_module_command

pytestmark = pytest.mark.slow

MB = 1024 * 1024
RUNTIME = "mlserver-1.x"


@contextmanager
def labelled_runtime(directory: Path, instance_id: str, capacity_bytes: int, label: str) -> Iterator[str]:
    """A built-in runtime process carrying `label`, as the runtime pod's adapter would; yields its address."""
    port_file = directory / f"{instance_id}.port"
    command = [
        *python_module_command("adapters.builtin"),
        *("--port", "0", "--port-file", str(port_file), "--instance-id", instance_id),
        *("--capacity-bytes", str(capacity_bytes)),
        *(("--labels", label) if label else ()),
    ]
    with (directory / f"{instance_id}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = wait_for(
            f"{instance_id} serving",
            lambda: port_file.exists() and process.poll() is None and json.loads(port_file.read_text())["port"],
        )
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A router in front of team-x's runtime pod (64 MiB) and team-y's (256 MiB)."""
    directory = tmp_path_factory.mktemp("tenants")
    with (
        labelled_runtime(directory, "rt-x", 64 * MB, f"rt:team-x/{RUNTIME}") as x,
        labelled_runtime(directory, "rt-y", 256 * MB, f"rt:team-y/{RUNTIME}") as y,
    ):
        endpoints = ("--runtime-endpoint", f"rt-x={x}", "--runtime-endpoint", f"rt-y={y}")
        serve = start_serve(
            directory,
            *("--runtimes", "0", "--kv", "memory://", "--no-examples", "--rest-port", "0", *endpoints),
            env={"MESH_NAMESPACE": "team-x"},
        )
        try:
            yield serve
        finally:
            stop_serve(serve)


def models_on(mesh: ServeProcess) -> dict[str, list[str]]:
    with grpc.insecure_channel(mesh.grpc_address) as channel:
        listing = admin_grpc.MeshAdminStub(channel).ListInstances(admin.ListInstancesRequest(), timeout=10)
    return {i.instanceId: list(i.models) for i in listing.instances}


def test_each_namespaces_model_loads_only_on_its_own_runtime_under_the_same_name(
    cluster: KubeCluster, api: client.ApiClient, two_tenants: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime(RUNTIME, SKLEARN)
    cluster.isvc("team-x", "fraud", sklearn(models["logreg"]))
    cluster.isvc("team-y", "fraud", sklearn(models["tree"]))
    with running(settings_for(two_tenants, isolate_runtimes=True), api):
        for namespace in ("team-x", "team-y"):
            wait_for(f"{namespace}'s fraud Loaded", lambda n=namespace: loaded(cluster, n, "fraud"))
        vmodels = {v.vModelId: v.status.activeModelId for v in listing(two_tenants).vmodels}
        assert set(vmodels) == {"fraud.team-x", "fraud.team-y"}
        # Each name reaches its own namespace's model; the bare name is team-x's on team-x's router.
        assert infer(two_tenants, "fraud.team-x") == infer(two_tenants, "fraud") == [0, 0, 0]
        assert infer(two_tenants, "fraud.team-y") == [0, 0, 0]
        assert vmodels["fraud.team-x"].startswith("team-x.fraud__") and vmodels["fraud.team-y"].startswith("team-y.")

    placed = models_on(two_tenants)
    # team-y's instance has four times the room: without isolation both models would have loaded there.
    assert [m.split("__")[0] for m in placed["rt-x"]] == ["team-x.fraud"], placed
    assert [m.split("__")[0] for m in placed["rt-y"]] == ["team-y.fraud"], placed
    for namespace in ("team-x", "team-y"):
        deployment = next(iter(cluster.deployments(namespace).values()))
        containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
        adapter = containers["mesh-adapter"]
        assert adapter["args"][adapter["args"].index("--labels") + 1] == f"rt:{namespace}/{RUNTIME}"
        namespace_env = next(e for e in containers["mesh-router"]["env"] if e["name"] == "MESH_NAMESPACE")
        assert namespace_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_a_runtime_serving_the_spi_itself_is_labelled_by_the_router_that_publishes_it(tmp_path: Path) -> None:
    """A runtime without a built-in adapter reports no labels; the router beside it adds its runtime's, so its
    namespace's models load there and no other namespace's."""
    with labelled_runtime(tmp_path, "rt-custom", 64 * MB, label="") as address:
        serve = start_serve(
            tmp_path,
            *("--runtimes", "0", "--kv", "memory://", "--no-examples", "--rest-port", "-1"),
            *("--runtime-endpoint", f"rt-custom={address}", "--runtime-labels", "rt:team-z/custom"),
        )
        try:
            with grpc.insecure_channel(serve.grpc_address) as channel:
                request = admin.ListInstancesRequest()
                instances = admin_grpc.MeshAdminStub(channel).ListInstances(request, timeout=10).instances
            assert [(i.instanceId, list(i.labels)) for i in instances] == [("rt-custom", ["rt:team-z/custom"])]
        finally:
            stop_serve(serve)
