"""Fixtures for the controller's tests (helpers in k8s_harness.py): the fake API server with the CRDs of
deploy/crds, the real `kubernetes` client pointed at it, one `mesh serve` (embedded store, one built-in runtime)
per module, and two small scikit-learn models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest
from fake_apiserver import FakeApiServer
from harness.serve import ServeProcess, start_serve, stop_serve
from k8s_harness import KubeCluster, crd_types
from kubernetes import client
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer(crd_types()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(apiserver: FakeApiServer) -> Iterator[client.ApiClient]:
    configuration = client.Configuration(host=apiserver.url)
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def cluster(api: client.ApiClient) -> KubeCluster:
    return KubeCluster(api)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A router with one built-in runtime (sklearn, text, echo): the runtime instance the runtime pods would be."""
    serve = start_serve(
        tmp_path_factory.mktemp("mesh"),
        *("--runtimes", "1", "--capacity-mb", "64", "--kv", "memory://", "--no-examples", "--rest-port", "0"),
    )
    try:
        yield serve
    finally:
        stop_serve(serve)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two scikit-learn models trained on iris, as joblib files: {"logreg": path, "tree": path}."""
    folder = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    paths = {}
    for name, estimator in (("logreg", LogisticRegression(max_iter=500)), ("tree", DecisionTreeClassifier())):
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(estimator.fit(x, y), paths[name])
    return paths
