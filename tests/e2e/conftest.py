"""One real `python -m mesh serve` for the whole end-to-end suite, and the clients that talk to it.

The server runs as a subprocess on ports it picks itself (--grpc-port 0 --rest-port 0, read back from its port
file), with an in-memory KV, two built-in runtimes and every example model. Its output goes to a file; a failing
test gets what the server logged while it ran as a report section. Teardown stops it with SIGTERM and checks that
no runtime process it started outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = 2
CAPACITY_MB = 16  # every example model fits at once: nothing is evicted behind a test's back
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 30.0
LOG_SECTION_CHARS = 30_000

EXAMPLE_MODELS = (
    "iris-logreg",
    "iris-tree",
    "iris-knn",
    "iris-forest",
    "iris-extra-trees",
    "iris-mlp",
    "text-upper",
    "text-reverse",
    "echo",
)


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time, so that a recycled pid is never mistaken for the process it named."""

    pid: int
    start_ticks: int

    def alive(self) -> bool:
        """True while this very process exists and has not exited (a zombie has exited)."""
        stat = _read_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    start_ticks: int


def _read_stat(pid: int) -> _Stat | None:
    """State, parent and start time from /proc/<pid>/stat; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the fields after it are plain.
    rest = text[text.rindex(")") + 2 :].split()
    return _Stat(state=rest[0], ppid=int(rest[1]), start_ticks=int(rest[19]))


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def runtime_children(parent: int) -> list[ProcessId]:
    """The built-in runtime processes (`python -m adapters.builtin`) whose parent is `parent`."""
    found: list[ProcessId] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is None or stat.ppid != parent or stat.state == "Z":
            continue
        if "adapters.builtin" in _cmdline(int(entry.name)):
            found.append(ProcessId(int(entry.name), stat.start_ticks))
    return found


@dataclass
class MeshServer:
    """A running `mesh serve`: its process, the ports it bound, its output, and the runtimes it started."""

    EXAMPLE_MODELS: ClassVar[tuple[str, ...]] = EXAMPLE_MODELS

    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log_file: Path
    runtimes: list[ProcessId]

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        """host:port, the form tritonclient.http takes."""
        return f"127.0.0.1:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.rest_address}"

    def runtime(self, instance_id: str) -> ProcessId | None:
        """The live runtime process serving `instance_id` (e.g. "runtime-0") right now, if there is one."""
        for child in runtime_children(self.process.pid):
            command = _cmdline(child.pid)
            if "--instance-id" in command and command[command.index("--instance-id") + 1] == instance_id:
                return child
        return None

    def log_size(self) -> int:
        return self.log_file.stat().st_size

    def log(self, since: int = 0) -> str:
        with self.log_file.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace")


SERVER_KEY = pytest.StashKey[MeshServer]()
LOG_OFFSET_KEY = pytest.StashKey[int]()


def _start(directory: Path, kv: str, kv_prefix: str) -> MeshServer:
    """Starts `python -m mesh serve` and waits (bounded) for its port file; on failure, the output says why."""
    port_file, log_file, data_dir = directory / "ports.json", directory / "mesh.log", directory / "data"
    command = [
        *python_module_command("mesh"),
        "serve",
        *("--grpc-port", "0", "--rest-port", "0", "--port-file", str(port_file)),
        *("--data-dir", str(data_dir), "--kv", kv),
        *("--runtimes", str(RUNTIMES), "--capacity-mb", str(CAPACITY_MB)),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_KV_PREFIX": kv_prefix, "MESH_METRICS_PORT": "0"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"mesh serve exited with {process.returncode} on start:\n{log_file.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mesh serve wrote no port file in {START_TIMEOUT_S:.0f} s:\n{log_file.read_text()}")
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
        assert ports["pid"] == process.pid, ports
        runtimes = runtime_children(process.pid)
        assert len(runtimes) == RUNTIMES, f"expected {RUNTIMES} runtime children, found {runtimes}"
    except BaseException:
        _kill_all([*runtime_children(process.pid)], process)
        raise
    return MeshServer(process, ports["grpc"], ports["rest"], log_file, runtimes)


def _kill_all(runtimes: list[ProcessId], process: subprocess.Popen[bytes]) -> None:
    """Last resort, by pid: SIGKILL the server and any runtime still alive, and wait (bounded) until they are gone."""
    for runtime in runtimes:
        if runtime.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(runtime.pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10.0
    while any(r.alive() for r in runtimes) and time.monotonic() < deadline:
        time.sleep(0.02)


def _stop(server: MeshServer) -> None:
    """SIGTERM, bounded waits, SIGKILL if needed; fails when the server or a runtime did not stop by itself."""
    process = server.process
    # A runtime the supervisor restarted has a new pid: check the current children as well as the first ones.
    runtimes = list(dict.fromkeys([*server.runtimes, *runtime_children(process.pid)]))
    problems: list[str] = []
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT_S)
        if code != 0:
            problems.append(f"mesh serve exited with {code} after SIGTERM")
    except subprocess.TimeoutExpired:
        problems.append(f"mesh serve did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
    deadline = time.monotonic() + 10.0
    while any(r.alive() for r in runtimes) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [r.pid for r in runtimes if r.alive()]
    if survivors:
        problems.append(f"runtime processes {survivors} outlived mesh serve")
    _kill_all(runtimes, process)
    if problems:
        pytest.fail("; ".join(problems) + f"\n--- mesh serve output ---\n{server.log()[-LOG_SECTION_CHARS:]}")


@pytest.fixture(scope="session", params=["memory", "etcd"])
def mesh_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[MeshServer]:
    """The running mesh: a router, two built-in runtimes and the example models, shared by every e2e test.

    Once on the embedded store and once on a real etcd: every e2e test runs against both.
    """
    if request.param == "etcd":
        kv, kv_prefix = f"etcd://{request.getfixturevalue('etcd_server').endpoint}", "e2e"
    else:
        kv, kv_prefix = "memory://", "mesh"
    server = _start(tmp_path_factory.mktemp("mesh"), kv, kv_prefix)
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
def triton_grpc(mesh_server: MeshServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(mesh_server.grpc_address)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def triton_http(mesh_server: MeshServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        mesh_server.rest_address, connection_timeout=CLIENT_TIMEOUT_S, network_timeout=CLIENT_TIMEOUT_S
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def rest(mesh_server: MeshServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh_server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="session")
def channel(mesh_server: MeshServer) -> Iterator[grpc.Channel]:
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
