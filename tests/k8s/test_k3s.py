"""The seed's flow against a real API server: k3s in a container (testcontainers), where a Docker engine exists;
skipped elsewhere. The CRDs are applied from deploy/crds; the runtime is `mesh serve`'s built-in one, as with the
fake API server (k3s runs the runtime Deployment's pods, but their image need not exist for this)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from crd_schema import CRD_DIR
from harness.serve import ServeProcess
from k8s_harness import KubeCluster, docker_engine_reason, running, settings_for, wait_for
from kubernetes import client, config

pytestmark = pytest.mark.slow

K3S_IMAGE = "rancher/k3s:v1.31.4-k3s1"


@pytest.fixture(scope="module")
def k3s() -> Iterator[client.ApiClient]:
    reason = docker_engine_reason()
    if reason is not None:
        pytest.skip(reason)
    from testcontainers.community.k3s import K3SContainer

    with K3SContainer(K3S_IMAGE) as container, tempfile.TemporaryDirectory() as folder:
        kubeconfig = Path(folder) / "kubeconfig"
        kubeconfig.write_text(container.config_yaml())
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        with client.ApiClient(configuration) as api:
            extensions = client.ApiextensionsV1Api(api)
            for path in sorted(CRD_DIR.glob("serving.kserve.io_*.yaml")):
                extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))
            for name in ("inferenceservices", "servingruntimes", "clusterservingruntimes"):
                wait_for(f"CRD {name} to be established", lambda n=name: _established(extensions, n), timeout_s=60)
            client.CoreV1Api(api).create_namespace({"metadata": {"name": "team-k3s"}})
            yield api


def _established(extensions: client.ApiextensionsV1Api, plural: str) -> bool:
    crd = extensions.read_custom_resource_definition(f"{plural}.serving.kserve.io")
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


def test_seed_flow_on_k3s(k3s: client.ApiClient, mesh: ServeProcess, models: dict[str, Path]) -> None:
    cluster = KubeCluster(k3s)
    cluster.cluster_runtime("mlserver-1.x", [{"name": "sklearn", "autoSelect": True}])
    model = {"modelFormat": {"name": "sklearn"}, "storage": {"path": str(models["logreg"])}}
    cluster.isvc("team-k3s", "iris-k3s", model)
    with running(settings_for(mesh), k3s):
        wait_for("Loaded", lambda: cluster.model_state("team-k3s", "iris-k3s") == "Loaded", timeout_s=60)
        assert cluster.deployments("team-k3s") and cluster.services("team-k3s")
        cluster.delete_isvc("team-k3s", "iris-k3s")
        wait_for("the Deployment to go", lambda: cluster.deployments("team-k3s") == {}, timeout_s=60)
