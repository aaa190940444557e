"""The fake API server behaves as the real one does for what the controller relies on, seen through the real
`kubernetes` client: list and watch from a resourceVersion, 410 once compacted, patches, the status subresource,
conflicts, and the CRDs' schemas."""

from __future__ import annotations

import pytest
from fake_apiserver import FakeApiServer
from k8s_harness import KubeCluster, runtime_body
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from mesh.controller.resources import GROUP, ISVC_PLURAL, ISVC_VERSION

NS = "team-a"


def _model(path: str = "/models/a.joblib") -> dict:
    return {"modelFormat": {"name": "sklearn"}, "storage": {"path": path}}


def test_watch_from_a_list_version_sees_every_later_change_in_order(cluster: KubeCluster) -> None:
    cluster.isvc(NS, "first", _model())
    listing = cluster.custom.list_cluster_custom_object(GROUP, ISVC_VERSION, ISVC_PLURAL)
    assert [i["metadata"]["name"] for i in listing["items"]] == ["first"]
    cluster.isvc(NS, "second", _model())
    cluster.patch_isvc(NS, "first", {"spec": {"predictor": {"model": _model("/models/b.joblib")}}})
    cluster.delete_isvc(NS, "second")

    stream = watch.Watch().stream(
        cluster.custom.list_cluster_custom_object,
        GROUP,
        ISVC_VERSION,
        ISVC_PLURAL,
        resource_version=listing["metadata"]["resourceVersion"],
        timeout_seconds=1,
    )
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in stream]
    assert events == [("ADDED", "second"), ("MODIFIED", "first"), ("DELETED", "second")]


def test_watch_from_a_compacted_version_is_gone(cluster: KubeCluster, apiserver: FakeApiServer) -> None:
    cluster.isvc(NS, "first", _model())
    version = cluster.custom.list_cluster_custom_object(GROUP, ISVC_VERSION, ISVC_PLURAL)["metadata"]["resourceVersion"]
    cluster.isvc(NS, "second", _model())
    apiserver.compact()
    stream = watch.Watch().stream(
        cluster.custom.list_cluster_custom_object,
        GROUP,
        ISVC_VERSION,
        ISVC_PLURAL,
        resource_version=version,
        timeout_seconds=1,
    )
    with pytest.raises(ApiException) as caught:
        list(stream)
    assert caught.value.status == 410


def test_status_subresource_alone_changes_status_and_generation_counts_spec_changes(cluster: KubeCluster) -> None:
    created = cluster.isvc(NS, "iris", _model())
    assert created["metadata"]["generation"] == 1
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP,
        ISVC_VERSION,
        NS,
        ISVC_PLURAL,
        "iris",
        [{"op": "add", "path": "/status", "value": {"url": "grpc://x:8033"}}],
        _content_type="application/json-patch+json",
    )
    # The main endpoint keeps the status whatever the body says, and counts the spec change.
    cluster.patch_isvc(NS, "iris", {"status": {"url": "ignored"}, "spec": {"predictor": {"model": _model("/b")}}})
    current = cluster.get_isvc(NS, "iris")
    assert current["status"] == {"url": "grpc://x:8033"}
    assert current["metadata"]["generation"] == 2


def test_replace_with_a_stale_resource_version_conflicts(cluster: KubeCluster) -> None:
    created = cluster.isvc(NS, "iris", _model())
    cluster.patch_isvc(NS, "iris", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException) as caught:
        cluster.custom.replace_namespaced_custom_object(GROUP, ISVC_VERSION, NS, ISVC_PLURAL, "iris", created)
    assert caught.value.status == 409


def test_objects_the_crd_schema_refuses_are_invalid(cluster: KubeCluster) -> None:
    body = runtime_body("ClusterServingRuntime", "broken", [{"name": "sklearn", "autoSelect": "yes"}])
    with pytest.raises(ApiException) as caught:
        cluster.custom.create_cluster_custom_object(GROUP, "v1alpha1", "clusterservingruntimes", body)
    assert caught.value.status == 422
    assert "autoSelect" in caught.value.body


def test_deployments_list_by_label_selector(cluster: KubeCluster, api: client.ApiClient) -> None:
    for name, labels in (("a", {"app": "mesh", "tier": "x"}), ("b", {"app": "other"})):
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            },
        }
        cluster.apps.create_namespaced_deployment(NS, body)
    found = cluster.apps.list_deployment_for_all_namespaces(label_selector="app=mesh,tier")
    assert [d.metadata.name for d in found.items] == ["a"]
    found = cluster.apps.list_deployment_for_all_namespaces(label_selector="app notin (mesh)")
    assert [d.metadata.name for d in found.items] == ["b"]
