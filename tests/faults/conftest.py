"""The `make_cluster` fixture and every process's output on a failing test (both in tests/harness/cluster.py); every
fault test runs twice: with the routers' native engine (HAProxy) serving the public ports, and with mesh's own
doors."""

import pytest
from harness.cluster import DATAPLANE_KEY, make_cluster, pytest_runtest_makereport

__all__ = ["make_cluster", "pytest_runtest_makereport"]


@pytest.fixture(autouse=True, params=["haproxy", "python"])
def dataplane(request: pytest.FixtureRequest) -> str:
    if request.param == "haproxy":
        request.getfixturevalue("haproxy_binary")  # installed where it can be, else the test says why it skips
    request.node.stash[DATAPLANE_KEY] = request.param
    return str(request.param)
