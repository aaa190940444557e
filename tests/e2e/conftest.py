"""One real `python -m mesh serve` for the whole end-to-end suite, and the clients that talk to it.

The server runs as a subprocess on ports it picks itself (--grpc-port 0 --rest-port 0, read back from its port
file), with an in-memory KV, two built-in runtimes and every example model. Its output goes to a file; a failing
test gets what the server logged while it ran as a report section. Teardown stops it with SIGTERM and checks that
no runtime process it started outlives it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from harness.serve import ServeProcess, start_serve, stop_serve

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = 2
CAPACITY_MB = 16  # every example model fits at once: nothing is evicted behind a test's back
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 30.0
LOG_SECTION_CHARS = 30_000


SERVER_KEY = pytest.StashKey[ServeProcess]()
LOG_OFFSET_KEY = pytest.StashKey[int]()


def _start(directory: Path, kv: str, kv_prefix: str, dataplane: str) -> ServeProcess:
    """`mesh serve` with both doors on free ports, this store, data plane and the example models; its runtimes
    all up."""
    args = ("--rest-port", "0", "--kv", kv, "--runtimes", str(RUNTIMES), "--capacity-mb", str(CAPACITY_MB))
    server = start_serve(directory, *args, "--dataplane", dataplane, env={"MESH_KV_PREFIX": kv_prefix})
    if len(server.runtimes) != RUNTIMES:
        stop_serve(server)
        raise RuntimeError(f"expected {RUNTIMES} runtime children, found {server.runtimes}")
    return server


def _stop(server: ServeProcess) -> None:
    """Stop it; the test fails when the server or a runtime did not stop by itself."""
    problems = stop_serve(server)
    if problems:
        pytest.fail("; ".join(problems) + f"\n--- mesh serve output ---\n{server.log()[-LOG_SECTION_CHARS:]}")


@pytest.fixture(scope="session", params=["haproxy-memory", "haproxy-etcd", "python-memory"])
def mesh_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServeProcess]:
    """The running mesh: a router, two built-in runtimes and the example models, shared by every e2e test.

    With the native engine (HAProxy) on the embedded store and on a real etcd, and with mesh's own Python doors:
    every e2e test runs against all three.
    """
    dataplane, store = request.param.split("-")
    if dataplane == "haproxy":
        request.getfixturevalue("haproxy_binary")
    if store == "etcd":
        kv, kv_prefix = f"etcd://{request.getfixturevalue('etcd_server').endpoint}", "e2e"
    else:
        kv, kv_prefix = "memory://", "mesh"
    server = _start(tmp_path_factory.mktemp("mesh"), kv, kv_prefix, dataplane)
    request.config.stash[SERVER_KEY] = server
    try:
        yield server
    finally:
        del request.config.stash[SERVER_KEY]
        _stop(server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """Attaches what the server logged during a failing test to its report."""
    report = yield
    assert isinstance(report, pytest.TestReport)
    server = item.config.stash.get(SERVER_KEY, None)
    if server is None:
        return report
    if report.when == "setup" and report.passed:
        item.stash[LOG_OFFSET_KEY] = server.log_size()
    elif report.failed:
        text = server.log(item.stash.get(LOG_OFFSET_KEY, 0)) or "(nothing)"
        report.sections.append(("mesh serve output during this test", text[-LOG_SECTION_CHARS:]))
    return report


@pytest.fixture(scope="session")
def triton_grpc(mesh_server: ServeProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(mesh_server.grpc_address)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def triton_http(mesh_server: ServeProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        mesh_server.rest_address, connection_timeout=CLIENT_TIMEOUT_S, network_timeout=CLIENT_TIMEOUT_S
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def rest(mesh_server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh_server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="session")
def channel(mesh_server: ServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh_server.grpc_address) as opened:
        yield opened


# One sample per v2 datatype, shape [2, 3], with each type's edge values. Every value is finite and every BYTES
# element valid UTF-8, so the same samples also travel as JSON; non-finite floats and arbitrary bytes have tests
# of their own.
_SAMPLES: dict[str, list[object]] = {
    "BOOL": [True, False, True, False, False, True],
    "UINT8": [0, 1, 127, 128, 254, 255],
    "UINT16": [0, 1, 255, 256, 2**15, 2**16 - 1],
    "UINT32": [0, 1, 2**16, 2**31, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**32, 2**53 + 1, 2**63, 2**64 - 1],
    "INT8": [-(2**7), -1, 0, 1, 100, 2**7 - 1],
    "INT16": [-(2**15), -1, 0, 1, 12345, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 1, 123456789, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**53 + 1, 2**62, 2**63 - 1],
    "FP16": [0.0, -0.0, 1.5, -65504.0, 65504.0, 6e-08],
    "FP32": [0.1, -3.4028235e38, 1.1754944e-38, 1e-45, 3.1415927, -0.0],
    "FP64": [0.1, -1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 3.141592653589793, -0.0],
    "BYTES": [b"", b"a", "h\u00e9llo w\u00f6rld".encode(), "\u65e5\u672c\u8a9e".encode(), b"\x00nul", b"x" * 1000],
}
_NUMPY_TYPES: dict[str, type] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
DATATYPES = tuple(_SAMPLES)


def _sample(datatype: str) -> np.ndarray:
    values = _SAMPLES[datatype]
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(2, 3)
    return np.array(values, dtype=_NUMPY_TYPES[datatype]).reshape(2, 3)


@pytest.fixture(params=DATATYPES)
def datatype(request: pytest.FixtureRequest) -> str:
    """Each of the 13 v2 datatypes in turn (BF16, which numpy lacks, is tested on its own)."""
    return request.param


@pytest.fixture
def sample(datatype: str) -> np.ndarray:
    """A [2, 3] array of `datatype` holding its edge values (BYTES: an object array of bytes)."""
    return _sample(datatype)


@pytest.fixture
def all_samples() -> dict[str, np.ndarray]:
    """One [2, 3] input per datatype, named after it in lower case, for a request carrying all of them at once."""
    return {datatype.lower(): _sample(datatype) for datatype in DATATYPES}
