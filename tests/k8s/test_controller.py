"""The controller against the fake API server and a real mesh (one `mesh serve` with a built-in runtime, which
plays the runtime pods: the fake cluster runs no pods). Each test applies KServe resources with the real client,
as a user would, and watches what the controller makes of them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from fake_apiserver import FakeApiServer, ResourceType
from harness.serve import REPO, ServeProcess
from k8s_harness import KubeCluster, running, settings_for, settings_for_address, wait_for
from kubernetes import client
from sklearn.datasets import load_iris

from mesh.controller.controller import ConfigError, own_image
from mesh.controller.resources import GROUP
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.processes import python_module_command

pytestmark = pytest.mark.slow

SKLEARN = [{"name": "sklearn", "version": "1", "autoSelect": True}]
K8S_VERSION = "1.32"


def sklearn(path: Path) -> dict[str, Any]:
    """A predictor's model: a scikit-learn joblib file at a path the runtime reads."""
    return {"modelFormat": {"name": "sklearn"}, "storage": {"path": str(path)}}


def listing(mesh: ServeProcess) -> admin.ListModelsResponse:
    with grpc.insecure_channel(mesh.grpc_address) as channel:
        return admin_grpc.MeshAdminStub(channel).ListModels(admin.ListModelsRequest(), timeout=10)


def vmodel_target(mesh: ServeProcess, name: str) -> str | None:
    for v in listing(mesh).vmodels:
        if v.vModelId == name:
            return v.status.activeModelId if v.status.activeModelId == v.status.targetModelId else None
    return None


def model_ids(mesh: ServeProcess) -> set[str]:
    return {m.modelId for m in listing(mesh).models}


def infer(mesh: ServeProcess, name: str) -> list[int]:
    rows = load_iris().data[:3].tolist()
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": rows}]}
    response = httpx.post(f"http://127.0.0.1:{mesh.rest_port}/v2/models/{name}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return next(o["data"] for o in response.json()["outputs"] if o["name"] == "predict")


def loaded(cluster: KubeCluster, namespace: str, name: str) -> bool:
    return cluster.model_state(namespace, name) == "Loaded"


def test_cluster_runtime_and_annotated_isvc_load_and_answer(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    """The seed's flow: a ClusterServingRuntime and an annotated InferenceService → Deployment, Loaded, inference."""
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-a", "iris-seed", sklearn(models["logreg"]))
    with running(settings_for(mesh), api):
        wait_for("the InferenceService to be Loaded", lambda: loaded(cluster, "team-a", "iris-seed"))
        status = cluster.get_isvc("team-a", "iris-seed")["status"]
        assert infer(mesh, "iris-seed.team-a") == [0, 0, 0]  # the vmodel name the client knows

    assert status["url"].startswith("grpc://mesh-runtime-mlserver-1-x-") and status["url"].endswith(".team-a:8033")
    assert status["components"]["predictor"]["restUrl"].endswith(".team-a:8008")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"PredictorReady": "True", "Ready": "True"}
    assert status["modelStatus"]["transitionStatus"] == "UpToDate"
    assert status["modelStatus"]["copies"] == {"failedCopies": 0, "totalCopies": 1}
    assert status["observedGeneration"] == 1

    deployment = next(iter(cluster.deployments("team-a").values()))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mlserver", "mesh-adapter", "mesh-router"]
    adapter = pod["containers"][1]
    assert adapter["command"][:4] == ["python", "-P", "-m", "adapters.mlserver"]
    args = adapter["args"]
    assert args[args.index("--kv") + 1] == "etcd://etcd.example:2379"
    assert args[args.index("--capacity-bytes") + 1] == str(1024**3 - 134217728)  # memory request - memBufferBytes
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ClusterServingRuntime"
    service = cluster.services("team-a")[deployment["metadata"]["name"]]
    assert {p["port"] for p in service["spec"]["ports"]} == {8033, 8008}


def test_a_pinned_isvc_registers_a_pinned_model_and_annotation_changes_reach_it(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-p", "iris-pinned", sklearn(models["logreg"]), extra_annotations={"mesh.io/pinned": "true"})

    def kept() -> tuple[bool, int] | None:
        target = vmodel_target(mesh, "iris-pinned.team-p")
        entry = next((m for m in listing(mesh).models if m.modelId == target), None)
        return None if entry is None else (entry.pinned, entry.minCopies)

    with running(settings_for(mesh), api):
        wait_for("the InferenceService to be Loaded", lambda: loaded(cluster, "team-p", "iris-pinned"))
        target = vmodel_target(mesh, "iris-pinned.team-p")
        entry = next(m for m in listing(mesh).models if m.modelId == target)
        assert entry.pinned and list(entry.requiredLabels) == []  # the shared mesh's tests run without isolation
        # Annotations are not the model's spec: changing them keeps the model and changes how it is kept.
        annotations = {"mesh.io/pinned": "false", "mesh.io/min-copies": "1"}
        cluster.patch_isvc("team-p", "iris-pinned", {"metadata": {"annotations": annotations}})
        wait_for("the model unpinned and kept with one copy", lambda: kept() == (False, 1))
    assert vmodel_target(mesh, "iris-pinned.team-p") == target


def test_the_runtime_pods_mount_the_claims_their_namespaces_models_are_on(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    for name, uri in (("iris-a", "pvc://models-a/iris.joblib"), ("iris-b", "pvc://models-b/v2/iris.joblib")):
        cluster.isvc("team-v", name, {"modelFormat": {"name": "sklearn"}, "storageUri": uri})

    def claims() -> set[str]:
        deployments = list(cluster.deployments("team-v").values())
        volumes = deployments[0]["spec"]["template"]["spec"]["volumes"] if deployments else []
        return {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}

    with running(settings_for(mesh), api):
        wait_for("one Deployment mounting both claims", lambda: claims() == {"models-a", "models-b"})
        target = wait_for("registration", lambda: vmodel_target(mesh, "iris-a.team-v"))
    entry = next(m for m in listing(mesh).models if m.modelId == target)
    assert entry.modelInfo.path == "/mnt/pvc/models-a/iris.joblib"


def test_isvc_without_the_model_mesh_annotation_is_left_alone(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    raw = {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/m"}
    cluster.isvc("team-a", "kserve-raw", raw, annotated=False)
    with running(settings_for(mesh), api) as controller:
        wait_for("a reconciliation", lambda: controller.passes >= 1)  # it saw the InferenceService
    assert "status" not in cluster.get_isvc("team-a", "kserve-raw")
    assert cluster.deployments("team-a") == {}
    assert vmodel_target(mesh, "kserve-raw.team-a") is None


def test_namespace_runtime_named_by_the_predictor_wins_over_the_cluster_runtime(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("shared", SKLEARN)
    cluster.runtime("team-b", "shared", [{"name": "sklearn", "autoSelect": False}], replicas=3)
    model = {"modelFormat": {"name": "sklearn"}, "runtime": "shared", "storage": {"path": str(models["logreg"])}}
    cluster.isvc("team-b", "iris-named", model)
    with running(settings_for(mesh), api):
        wait_for("the InferenceService to be Loaded", lambda: loaded(cluster, "team-b", "iris-named"))
    deployment = cluster.deployments("team-b")["mesh-runtime-shared"]
    assert deployment["metadata"]["labels"]["mesh.kserve.io/runtime-kind"] == "ServingRuntime"
    assert deployment["spec"]["replicas"] == 3


def test_no_supporting_runtime_is_a_condition_and_a_new_runtime_resolves_it(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-c", "iris-text", {"modelFormat": {"name": "text"}, "storage": {"path": "/models/upper"}})
    with running(settings_for(mesh), api):
        status = wait_for(
            "a NoSupportingRuntime status",
            lambda: (
                (s := cluster.get_isvc("team-c", "iris-text").get("status"))
                and s["modelStatus"].get("lastFailureInfo", {}).get("reason") == "NoSupportingRuntime"
                and s
            ),
        )
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "NoSupportingRuntime"
        assert "model format 'text'" in ready["message"]
        assert status["modelStatus"]["transitionStatus"] == "InvalidSpec"
        assert cluster.deployments("team-c") == {}

        # A runtime for the format appears: the predictor is taken, its Deployment made, and (the built-in runtime
        # serving `text`) it is registered; its model path does not exist, so the load fails, with the reason.
        cluster.runtime("team-c", "texts", [{"name": "text", "autoSelect": True}])
        failed = wait_for(
            "FailedToLoad with the runtime's message",
            lambda: (
                (s := cluster.get_isvc("team-c", "iris-text").get("status"))
                and s["modelStatus"].get("lastFailureInfo", {}).get("reason") == "ModelLoadFailed"
                and s
            ),
        )
    info = failed["modelStatus"]["lastFailureInfo"]
    assert info["reason"] == "ModelLoadFailed" and "/models/upper" in info["message"]
    assert info["location"] == "runtime-0"
    assert "mesh-runtime-texts" in cluster.deployments("team-c")


def test_storage_change_moves_the_name_to_a_new_model_and_removes_the_old(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-d", "iris-swap", sklearn(models["logreg"]))
    with running(settings_for(mesh), api):
        first = wait_for("the first model", lambda: vmodel_target(mesh, "iris-swap.team-d"))
        wait_for("Loaded", lambda: loaded(cluster, "team-d", "iris-swap"))
        new_model = sklearn(models["tree"])
        cluster.patch_isvc("team-d", "iris-swap", {"spec": {"predictor": {"model": new_model}}})
        second = wait_for("the second model", lambda: (t := vmodel_target(mesh, "iris-swap.team-d")) != first and t)
        wait_for("the first model to be unregistered", lambda: first not in model_ids(mesh))
        wait_for(
            "Loaded with generation 2",
            lambda: (
                cluster.get_isvc("team-d", "iris-swap")["status"].get("observedGeneration") == 2
                and loaded(cluster, "team-d", "iris-swap")
            ),
        )
    assert first.startswith("team-d.iris-swap__isvc-") and second.startswith("team-d.iris-swap__isvc-")
    assert infer(mesh, "iris-swap.team-d") == [0, 0, 0]


def test_deleting_the_isvc_unregisters_it_and_removes_the_unused_runtime(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-e", "iris-gone", sklearn(models["logreg"]))
    with running(settings_for(mesh), api):
        model_id = wait_for("registration", lambda: vmodel_target(mesh, "iris-gone.team-e"))
        assert cluster.deployments("team-e") and cluster.services("team-e")
        cluster.delete_isvc("team-e", "iris-gone")
        wait_for("the vmodel to go", lambda: vmodel_target(mesh, "iris-gone.team-e") is None)
        wait_for("the model to be unregistered", lambda: model_id not in model_ids(mesh))
        wait_for("the Deployment to go", lambda: cluster.deployments("team-e") == {})
        wait_for("the Service to go", lambda: cluster.services("team-e") == {})


def test_an_unused_runtime_outlives_its_last_model_by_the_grace_period(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-k", "iris-redeployed", sklearn(models["logreg"]))
    grace_s = 1.5
    with running(settings_for(mesh, scale_to_zero_grace_seconds=grace_s), api):
        wait_for("Loaded", lambda: loaded(cluster, "team-k", "iris-redeployed"))
        deployment = next(iter(cluster.deployments("team-k")))
        # A redeploy: the InferenceService deleted and created again within the grace keeps the runtime's pods.
        cluster.delete_isvc("team-k", "iris-redeployed")
        wait_for("the vmodel to go", lambda: vmodel_target(mesh, "iris-redeployed.team-k") is None)
        cluster.isvc("team-k", "iris-redeployed", sklearn(models["logreg"]))
        wait_for("Loaded again", lambda: loaded(cluster, "team-k", "iris-redeployed"))
        assert list(cluster.deployments("team-k")) == [deployment]
        # Deleted for good: the Deployment goes, but only once the grace has passed.
        cluster.delete_isvc("team-k", "iris-redeployed")
        deleted_at = time.monotonic()
        wait_for("the Deployment to go", lambda: cluster.deployments("team-k") == {})
        assert time.monotonic() - deleted_at >= grace_s
        wait_for("the Service to go", lambda: cluster.services("team-k") == {})


def test_without_scale_to_zero_an_unused_runtime_keeps_running(
    cluster: KubeCluster, api: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-f", "iris-kept", sklearn(models["logreg"]))
    with running(settings_for(mesh, scale_to_zero=False, resync_seconds=0.3), api) as controller:
        wait_for("the Deployment", lambda: cluster.deployments("team-f"))
        cluster.delete_isvc("team-f", "iris-kept")
        wait_for("the vmodel to go", lambda: vmodel_target(mesh, "iris-kept.team-f") is None)
        passes = controller.passes
        wait_for("two more reconciliations", lambda: controller.passes >= passes + 2)
        assert len(cluster.deployments("team-f")) == 1 and len(cluster.services("team-f")) == 1


def test_a_restarted_controller_writes_nothing_that_is_right(
    cluster: KubeCluster, api: client.ApiClient, apiserver: FakeApiServer, mesh: ServeProcess, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-g", "iris-restart", sklearn(models["logreg"]))
    cluster.isvc("team-g", "iris-broken", {"modelFormat": {"name": "pmml"}, "storageUri": "s3://bucket/m.pmml"})
    settings = settings_for(mesh, resync_seconds=0.3)

    def object_writes() -> list[tuple[str, str]]:
        """Writes of InferenceServices, runtimes and workloads (a leader renewing its Lease writes all along)."""
        return [w for w in apiserver.writes if "/leases" not in w[1]]

    with running(settings, api) as controller:
        wait_for("Loaded", lambda: loaded(cluster, "team-g", "iris-restart"))
        wait_for("the broken one's status", lambda: cluster.model_state("team-g", "iris-broken") == "FailedToLoad")
        # Settle: a pass after the last write has seen it through the watch.
        writes = len(object_writes())
        passes = controller.passes
        wait_for("a quiet pass", lambda: controller.passes >= passes + 2)
        assert len(object_writes()) == writes, object_writes()[writes:]
    before = (cluster.get_isvc("team-g", "iris-restart"), listing(mesh))
    writes = len(object_writes())
    with running(settings, api) as controller:
        wait_for("three reconciliations", lambda: controller.passes >= 3)
    assert object_writes()[writes:] == []
    assert (cluster.get_isvc("team-g", "iris-restart"), listing(mesh)) == before


def test_informers_list_again_when_their_watch_version_is_compacted(
    cluster: KubeCluster,
    api: client.ApiClient,
    apiserver: FakeApiServer,
    mesh: ServeProcess,
    models: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.controller.kube")
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    with running(settings_for(mesh, watch_timeout_seconds=1), api) as controller:
        wait_for("a reconciliation", lambda: controller.passes >= 1)
        # A change the InferenceService informer does not see leaves its version behind the server's; compaction
        # then forgets the versions in between, so its next watch is answered 410 Gone.
        cluster.cluster_runtime("another", SKLEARN)
        apiserver.compact()
        wait_for("a list after 410", lambda: "watch of InferenceService expired; listing again" in caplog.text)
        cluster.isvc("team-h", "iris-late", sklearn(models["tree"]))
        wait_for("Loaded", lambda: loaded(cluster, "team-h", "iris-late"))


def test_mesh_controller_command_serves_until_sigterm(
    cluster: KubeCluster, apiserver: FakeApiServer, mesh: ServeProcess, models: dict[str, Path], tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": apiserver.url}}],
                "users": [{"name": "test", "user": {"token": "unused"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "test"}}],
                "current-context": "fake",
            }
        )
    )
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-i", "iris-cli", sklearn(models["logreg"]))
    command = [*python_module_command("mesh"), "controller", "--kubeconfig", str(kubeconfig)]
    command += ["--mesh-address", mesh.grpc_address, "--poll-seconds", "0.2", "--kv", "etcd://etcd.example:2379"]
    command += ["--image", "registry.example/mesh:test"]
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        env = {**os.environ, "MESH_CONTROLLER_ISOLATE_RUNTIMES": "false"}  # the shared mesh's runtime has no labels
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("Loaded", lambda: process.poll() is None and loaded(cluster, "team-i", "iris-cli"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert "registered InferenceService team-i/iris-cli" in log.read_text()


def test_an_unreachable_mesh_leaves_statuses_alone_but_runtimes_run(
    cluster: KubeCluster, api: client.ApiClient, apiserver: FakeApiServer, models: dict[str, Path]
) -> None:
    cluster.cluster_runtime("mlserver-1.x", SKLEARN)
    cluster.isvc("team-j", "iris-dark", sklearn(models["logreg"]))
    loaded_status = {"modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}}}
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, "v1beta1", "team-j", "inferenceservices", "iris-dark", {"status": loaded_status}
    )
    settings = settings_for_address("127.0.0.1:1", resync_seconds=0.3)  # nothing listens on port 1
    with running(settings, api) as controller:
        wait_for("two reconciliations", lambda: controller.passes >= 2)
        assert cluster.deployments("team-j")
    assert cluster.get_isvc("team-j", "iris-dark")["status"] == loaded_status


def test_runtime_pods_get_the_controllers_own_image() -> None:
    server = FakeApiServer((ResourceType("", "v1", "pods", "Pod"),)).start()
    try:
        with client.ApiClient(client.Configuration(host=server.url)) as api:
            pod = {"metadata": {"name": "ctl-0"}, "spec": {"containers": [{"name": "c", "image": "reg/mesh:1.2"}]}}
            client.CoreV1Api(api).create_namespaced_pod("mesh-system", pod)
            assert own_image(api, {"POD_NAMESPACE": "mesh-system", "POD_NAME": "ctl-0"}) == "reg/mesh:1.2"
            with pytest.raises(ConfigError, match="MESH_CONTROLLER_IMAGE"):
                own_image(api, {})
    finally:
        server.stop()
