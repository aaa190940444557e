"""Running a real adapter beside its real model server, behind an in-process router, for the runtime suites.

The model server runs from its own venv (adapters.common.envs, made on first use), launched by the adapter
itself (--launch), the same way a user runs one on a single machine. Every process is stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.config import Settings
from mesh.processes import python_module_command
from mesh.router import Ports, Router

REPO = Path(__file__).resolve().parents[2]
ADAPTER_START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0


@dataclass
class AdapterProcess:
    """`python -m adapters.<runtime> ...` as a subprocess: its pid, SPI endpoint and output file."""

    process: subprocess.Popen[bytes]
    endpoint: str
    instance_id: str
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, a bounded wait, SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=10)


def start_adapter(runtime: str, workdir: Path, args: Sequence[str], instance_id: str | None = None) -> AdapterProcess:
    """Start an adapter on a free SPI port and wait for its port file (it writes it once its server is ready)."""
    instance_id = instance_id or f"{runtime}-0"
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{instance_id}.port"
    output = workdir / f"{instance_id}.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*python_module_command(f"adapters.{runtime}"), "--port", "0", "--port-file", str(port_file),
             "--instance-id", instance_id, "--parent-pid", str(os.getpid()), "--log-level", "DEBUG", *args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    adapter = AdapterProcess(process, "", instance_id, output)
    deadline = time.monotonic() + ADAPTER_START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            adapter.stop()
            raise RuntimeError(f"adapter {instance_id} did not start (exit {process.poll()}):\n{adapter.log()[-4000:]}")
        time.sleep(0.1)
    adapter.endpoint = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    return adapter


@contextlib.asynccontextmanager
async def router_over(
    workdir: Path, *adapters: AdapterProcess, **settings: object
) -> AsyncIterator[tuple[Router, Ports]]:
    """An in-process router on free ports (embedded store) with the adapters as its runtime instances."""
    router = Router(
        Settings(
            grpc_port=0, rest_port=0, metrics_port=-1, kv="memory://", data_dir=str(workdir / "router"), **settings
        )  # type: ignore[arg-type]
    )
    ports = await router.start()
    try:
        for adapter in adapters:
            await router.add_instance(adapter.instance_id, adapter.endpoint)
        yield router, ports
    finally:
        await router.stop()
