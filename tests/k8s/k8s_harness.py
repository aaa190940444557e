"""Helpers for the controller's tests: the fake API server with deploy/crds' kinds, the user's side of the
cluster through the real `kubernetes` client, the controller in a thread, and bounded waiting."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from crd_schema import custom_kinds, validator
from fake_apiserver import ResourceType
from harness.serve import ServeProcess
from kubernetes import client

from mesh.controller.controller import Controller
from mesh.controller.resources import GROUP, ISVC_PLURAL, ISVC_VERSION
from mesh.controller.settings import ControllerSettings

T = TypeVar("T")
WAIT_S = 30.0
CONTROLLER_STOP_S = 15.0
ANNOTATION = {"serving.kserve.io/deploymentMode": "ModelMesh"}


def crd_types() -> tuple[ResourceType, ...]:
    """The kinds deploy/crds defines, each validated by its schema."""
    return tuple(
        ResourceType(k.group, k.version, k.plural, k.kind, k.namespaced, k.status_subresource, validator(k.schema))
        for k in custom_kinds()
    )


def settings_for(mesh: ServeProcess, **overrides: Any) -> ControllerSettings:
    """Settings for a controller registering with `mesh`, quick to react."""
    return settings_for_address(mesh.grpc_address, **overrides)


def settings_for_address(mesh_address: str, **overrides: Any) -> ControllerSettings:
    values: dict[str, Any] = {
        "mesh_address": mesh_address,
        "kv": "etcd://etcd.example:2379",
        "image": "registry.example/mesh:test",
        "poll_seconds": 0.2,
        "debounce_seconds": 0.05,
        "resync_seconds": 5.0,
        "request_timeout_seconds": 5.0,
        "watch_timeout_seconds": 30,
        "lease_seconds": 3.0,  # a second controller takes over within seconds of the first stopping
        "scale_to_zero_grace_seconds": 0.0,  # unused runtimes go at once, unless a test sets a grace
        # One `mesh serve` plays every runtime's pods here, and its runtime carries no runtime's labels; the
        # isolation test turns this on with runtimes of its own.
        "isolate_runtimes": False,
    }
    values.update(overrides)
    return ControllerSettings(**values)


@contextlib.contextmanager
def running(settings: ControllerSettings, api: client.ApiClient) -> Iterator[Controller]:
    """The controller in a thread, stopped (bounded) however the block ends."""
    controller = Controller(settings, api)
    thread = threading.Thread(target=controller.run, name="controller", daemon=True)
    thread.start()
    try:
        yield controller
    finally:
        controller.stop()
        thread.join(CONTROLLER_STOP_S)
        assert not thread.is_alive(), "the controller did not stop"


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = WAIT_S) -> T:
    """Poll `probe` until it returns something truthy; fail saying `what` (and the last value) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


def runtime_body(kind: str, name: str, formats: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A runtime in the shape of deploy/runtimes: an MLServer container behind mesh's MLServer adapter."""
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "supportedModelFormats": formats,
            "multiModel": True,
            "grpcEndpoint": "port:8085",
            "grpcDataEndpoint": "port:8001",
            "containers": [
                {
                    "name": "mlserver",
                    "image": "seldonio/mlserver:1.7.1",
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
                }
            ],
            "builtInAdapter": {"serverType": "mlserver", "memBufferBytes": 134217728},
            **spec,
        },
    }


class KubeCluster:
    """The test's side of the API: what a user applies with kubectl, through the real client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.api = api

    def cluster_runtime(self, name: str, formats: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        body = runtime_body("ClusterServingRuntime", name, formats, **spec)
        return self.custom.create_cluster_custom_object(GROUP, "v1alpha1", "clusterservingruntimes", body)

    def runtime(self, namespace: str, name: str, formats: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        body = runtime_body("ServingRuntime", name, formats, **spec)
        return self.custom.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, "servingruntimes", body)

    def isvc(
        self,
        namespace: str,
        name: str,
        model: dict[str, Any],
        annotated: bool = True,
        extra_annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        annotations = {**(ANNOTATION if annotated else {}), **(extra_annotations or {})}
        body = {
            "apiVersion": f"{GROUP}/{ISVC_VERSION}",
            "kind": "InferenceService",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"predictor": {"model": model}},
        }
        return self.custom.create_namespaced_custom_object(GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, body)

    def get_isvc(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name)

    def patch_isvc(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, patch)

    def delete_isvc(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name)

    def model_state(self, namespace: str, name: str) -> str | None:
        status = self.get_isvc(namespace, name).get("status") or {}
        return ((status.get("modelStatus") or {}).get("states") or {}).get("activeModelState")

    def deployments(self, namespace: str) -> dict[str, dict[str, Any]]:
        listing = self.api.sanitize_for_serialization(self.apps.list_namespaced_deployment(namespace))
        return {d["metadata"]["name"]: d for d in listing["items"]}

    def services(self, namespace: str) -> dict[str, dict[str, Any]]:
        listing = self.api.sanitize_for_serialization(self.core.list_namespaced_service(namespace))
        return {s["metadata"]["name"]: s for s in listing["items"]}


def docker_engine_reason() -> str | None:
    """Why a testcontainers cluster cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no client library, no socket, engine down: all mean "no engine here"
        return f"no Docker engine for testcontainers' k3s ({type(exc).__name__}); the fake API server covers the API"
    return None
