"""Helpers for tests that run a router: in-process built-in runtimes, and `mesh serve` as a subprocess.

Every process is started here and stopped here by its pid (SIGTERM, a bounded wait, SIGKILL), so a fixture that
uses these cleans up even when its test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapters.builtin.core import BuiltinRuntime
from adapters.builtin.servicers import InferenceServicer, RuntimeServicer
from adapters.builtin.settings import RuntimeSettings
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# The models `mesh serve` registers from examples/ unless told --no-examples.
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

BUILTIN_TYPES = ("echo", "text", "sklearn")


@dataclass
class InProcessRuntime:
    """A real built-in runtime (its gRPC server and model loading) in the test's event loop."""

    instance_id: str
    server: grpc.aio.Server
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_runtime(instance_id: str, capacity_bytes: int = 64 * 1024 * 1024, port: int = 0) -> InProcessRuntime:
    """Serve a built-in runtime on 127.0.0.1:port (0: a free port; a port given again: a restart in place)."""
    settings = RuntimeSettings(instance_id=instance_id, capacity_bytes=capacity_bytes, max_loading_concurrency=4)
    core = BuiltinRuntime(settings)
    server = grpc.aio.server()
    rt_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(core, settings), server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot bind 127.0.0.1:{port}"
    await server.start()
    return InProcessRuntime(instance_id, server, bound)


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


def children(parent: int, command_matches: Callable[[list[str]], bool]) -> list[ProcessId]:
    """The live processes whose parent is `parent` and whose command line (argv) matches."""
    found: list[ProcessId] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is None or stat.ppid != parent or stat.state == "Z":
            continue
        if command_matches(_cmdline(int(entry.name))):
            found.append(ProcessId(int(entry.name), stat.start_ticks))
    return found


def runtime_children(parent: int) -> list[ProcessId]:
    """The built-in runtime processes (`python -m adapters.builtin`) whose parent is `parent`."""
    return children(parent, lambda argv: "adapters.builtin" in argv)


def engine_children(parent: int) -> list[ProcessId]:
    """The native engine processes (haproxy) whose parent is `parent`."""
    return children(parent, lambda argv: bool(argv) and Path(argv[0]).name == "haproxy")


@dataclass
class ServeProcess:
    """A running `mesh serve`: its process, the ports it bound, its output, and the runtimes it started."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int | None
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

    def runtime_pids(self) -> list[int]:
        """The built-in runtime processes it runs now."""
        return [child.pid for child in runtime_children(self.process.pid)]

    def log_size(self) -> int:
        return self.log_file.stat().st_size

    def log(self, since: int = 0) -> str:
        """What it wrote (stdout and stderr) from byte `since` on."""
        with self.log_file.open("rb") as file:
            file.seek(since)
            return file.read().decode(errors="replace")

    def output(self) -> str:
        return self.log()


def start_serve(
    directory: Path, *serve_args: str, global_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> ServeProcess:
    """`python -m mesh [global_args] serve --grpc-port 0 --port-file ... [serve_args]`, once it has written its
    ports (which it does once it is ready). env: more environment variables."""
    port_file, log_file = directory / "ports.json", directory / "serve.log"
    command = [
        *python_module_command("mesh"),
        *global_args,
        "serve",
        *("--grpc-port", "0", "--port-file", str(port_file), "--data-dir", str(directory / "data")),
        *serve_args,
    ]
    # Never the fixed default metrics port: tests run many routers on one host.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_METRICS_PORT": "0", **(env or {})}
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environment)
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
    except BaseException:
        _kill_all(runtime_children(process.pid), process)
        raise
    return ServeProcess(process, ports["grpc"], ports["rest"], log_file, runtime_children(process.pid))


def stop_serve(serve: ServeProcess) -> list[str]:
    """SIGTERM and bounded waits, then SIGKILL of whatever is left; what went wrong (empty: it stopped by itself,
    with exit code 0, and no runtime it started outlived it)."""
    process = serve.process
    # A runtime the supervisor restarted has a new pid: check the current children as well as the first ones.
    runtimes = list(dict.fromkeys([*serve.runtimes, *runtime_children(process.pid)]))
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
    return problems


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


@contextlib.contextmanager
def serving(
    directory: Path, *serve_args: str, global_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[ServeProcess]:
    """start_serve, then stop_serve however the block ends."""
    serve = start_serve(directory, *serve_args, global_args=global_args, env=env)
    try:
        yield serve
    finally:
        stop_serve(serve)
