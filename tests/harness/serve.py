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
from collections.abc import Iterator
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


@dataclass
class ServeProcess:
    """A running `python -m mesh ... serve`: its process, the ports from its port file, and its output files."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int | None
    stdout: Path
    stderr: Path

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def runtime_pids(self) -> list[int]:
        """The built-in runtime processes it runs now (children whose command is `-m adapters.builtin`)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[1]) == self.process.pid and fields[0] != "Z":
                    if b"adapters.builtin" in (entry / "cmdline").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        return pids

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def start_serve(directory: Path, *serve_args: str, global_args: tuple[str, ...] = ()) -> ServeProcess:
    """`python -m mesh [global_args] serve --grpc-port 0 --port-file ... [serve_args]`, once it has written ports."""
    port_file, stdout, stderr = directory / "ports.json", directory / "serve.out", directory / "serve.err"
    command = [
        *python_module_command("mesh"),
        *global_args,
        "serve",
        *("--grpc-port", "0", "--port-file", str(port_file), "--data-dir", str(directory / "data")),
        *serve_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_METRICS_PORT": "0"}  # never the fixed default port
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"mesh serve exited with {process.returncode}:\n{stderr.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mesh serve wrote no port file in {START_TIMEOUT_S:.0f} s:\n{stderr.read_text()}")
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
    except BaseException:
        _kill(process)
        raise
    return ServeProcess(process, ports["grpc"], ports["rest"], stdout, stderr)


def stop_serve(serve: ServeProcess) -> int:
    """SIGTERM and a bounded wait (then SIGKILL, also of any runtime left); the exit code."""
    runtimes = serve.runtime_pids()
    serve.process.send_signal(signal.SIGTERM)
    try:
        return serve.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(serve.process)
        return serve.process.returncode
    finally:
        for pid in runtimes:
            with contextlib.suppress(OSError):  # gone already, as it should be
                if b"adapters.builtin" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@contextlib.contextmanager
def serving(directory: Path, *serve_args: str, global_args: tuple[str, ...] = ()) -> Iterator[ServeProcess]:
    """start_serve, then stop_serve however the block ends."""
    serve = start_serve(directory, *serve_args, global_args=global_args)
    try:
        yield serve
    finally:
        stop_serve(serve)
