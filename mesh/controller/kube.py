"""The Kubernetes API, as the controller uses it: informers (list, then watch from the list's resourceVersion) that
keep a local copy of each kind, and the few writes it makes. Objects are the JSON dicts the API server sends.

The `kubernetes` client is synchronous; each informer is one thread blocked on its watch stream (a controller
is not on the data path, and a handful of threads is cheaper to reason about than a second event loop).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from mesh.controller import resources as r
from mesh.controller.workloads import SELECTOR

log = logging.getLogger(__name__)

GONE = 410
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0
JSON_PATCH = "application/json-patch+json"

Key = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped objects."""


def key_of(obj: dict[str, Any]) -> Key:
    meta = r.metadata(obj)
    return meta.get("namespace", ""), meta.get("name", "")


@dataclass(frozen=True)
class Kind:
    """One kind the controller follows: how to list and watch it (the same client function does both)."""

    name: str
    list_call: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Kube:
    """The controller's calls to the API server, each with a deadline."""

    def __init__(self, api_client: client.ApiClient, watch_namespace: str, timeout_s: float) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = watch_namespace
        self.timeout_s = timeout_s

    def kinds(self) -> dict[str, Kind]:
        """InferenceServices, ServingRuntimes, ClusterServingRuntimes, and the Deployments and Services it owns."""
        ns = self.namespace
        managed = {"label_selector": SELECTOR}

        def custom(version: str, plural: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
            if ns:
                return self.custom.list_namespaced_custom_object, (r.GROUP, version, ns, plural)
            return self.custom.list_cluster_custom_object, (r.GROUP, version, plural)

        deployments = (
            (self.apps.list_namespaced_deployment, (ns,)) if ns else (self.apps.list_deployment_for_all_namespaces, ())
        )
        services = (self.core.list_namespaced_service, (ns,)) if ns else (self.core.list_service_for_all_namespaces, ())
        return {
            "isvc": Kind("InferenceService", *custom(r.ISVC_VERSION, r.ISVC_PLURAL), {}),
            "sr": Kind(r.SERVING_RUNTIME, *custom(r.RUNTIME_VERSION, r.RUNTIME_PLURAL), {}),
            "csr": Kind(
                r.CLUSTER_SERVING_RUNTIME,
                self.custom.list_cluster_custom_object,
                (r.GROUP, r.RUNTIME_VERSION, r.CLUSTER_RUNTIME_PLURAL),
                {},
            ),
            "deployment": Kind("Deployment", *deployments, managed),
            "service": Kind("Service", *services, managed),
        }

    def as_dict(self, result: Any) -> dict[str, Any]:
        """A typed client result (V1DeploymentList...) as the JSON dict the server sent."""
        return result if isinstance(result, dict) else self.api_client.sanitize_for_serialization(result)

    # ---- writes ------------------------------------------------------------------------------------------

    def write_isvc_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace the whole status (a JSON patch on the status subresource: removed fields go too)."""
        self.custom.patch_namespaced_custom_object_status(
            r.GROUP,
            r.ISVC_VERSION,
            namespace,
            r.ISVC_PLURAL,
            name,
            [{"op": "add", "path": "/status", "value": status}],
            _content_type=JSON_PATCH,
            _request_timeout=self.timeout_s,
        )

    def create(self, obj: dict[str, Any]) -> None:
        namespace = obj["metadata"]["namespace"]
        if obj["kind"] == "Deployment":
            self.apps.create_namespaced_deployment(namespace, obj, _request_timeout=self.timeout_s)
        else:
            self.core.create_namespaced_service(namespace, obj, _request_timeout=self.timeout_s)

    def replace(self, obj: dict[str, Any], current: dict[str, Any]) -> None:
        """Replace `current` with `obj`, failing with 409 if it changed since it was read."""
        namespace, name = key_of(obj)
        meta = r.metadata(current)
        body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": meta.get("resourceVersion")}}
        if obj["kind"] == "Deployment":
            self.apps.replace_namespaced_deployment(name, namespace, body, _request_timeout=self.timeout_s)
        else:
            # A Service's clusterIP is set by the server and cannot change: keep it.
            spec = (current.get("spec") or {}).get("clusterIP")
            if spec:
                body["spec"] = {**body["spec"], "clusterIP": spec}
            self.core.replace_namespaced_service(name, namespace, body, _request_timeout=self.timeout_s)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            if kind == "Deployment":
                self.apps.delete_namespaced_deployment(name, namespace, _request_timeout=self.timeout_s)
            else:
                self.core.delete_namespaced_service(name, namespace, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status != 404:  # gone already: what was wanted
                raise


class Informer:
    """A local copy of one kind, kept by a thread: list, then watch from the list's resourceVersion; after a
    broken watch, watch again from the last version seen, or list again when the server has forgotten it."""

    def __init__(self, kube: Kube, kind: Kind, on_change: Callable[[], None], watch_timeout_s: int) -> None:
        self._kube = kube
        self._kind = kind
        self._on_change = on_change
        self._watch_timeout_s = watch_timeout_s
        self._objects: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer {kind.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        current = self._watch
        if current is not None:
            current.stop()  # shuts the socket down, so the blocked read returns at once

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to end; True when it did within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            current = self._watch
            if current is not None:
                # Again: a watch request sent just as stop() ran had no socket to shut down yet.
                current.stop()
            self._thread.join(0.05)
        return not self._thread.is_alive()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._follow(version)
                backoff = BACKOFF_MIN_S
            except ApiException as exc:
                if exc.status == GONE:
                    log.info("watch of %s expired; listing again", self._kind.name)
                    version = None
                    continue
                log.warning("watch of %s failed (%s %s); retrying", self._kind.name, exc.status, exc.reason)
            except Exception as exc:  # connection refused, reset, timeouts: the API server may be restarting
                if self._stop.is_set():
                    break
                log.warning("watch of %s failed (%s: %s); retrying", self._kind.name, type(exc).__name__, exc)
            self._stop.wait(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> str:
        kind = self._kind
        result = self._kube.as_dict(kind.list_call(*kind.args, **kind.kwargs, _request_timeout=self._kube.timeout_s))
        objects = {key_of(o): o for o in result.get("items") or []}
        with self._lock:
            self._objects = objects
        self.synced.set()
        self._on_change()
        return (result.get("metadata") or {}).get("resourceVersion") or "0"

    def _follow(self, version: str) -> str:
        """One watch request from `version`; the last version seen when it ends."""
        current = watch.Watch()
        self._watch = current
        if self._stop.is_set():
            return version
        kind = self._kind
        stream = current.stream(
            kind.list_call,
            *kind.args,
            **kind.kwargs,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _request_timeout=(self._kube.timeout_s, self._watch_timeout_s + self._kube.timeout_s),
        )
        try:
            for event in stream:
                obj = event["raw_object"]
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._objects.pop(key_of(obj), None)
                        else:
                            self._objects[key_of(obj)] = obj
                    self._on_change()
                version = current.resource_version or version
        finally:
            self._watch = None
        return current.resource_version or version
