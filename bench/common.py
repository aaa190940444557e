"""What every scenario shares: child server processes, the machine description, result files and plots."""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # generous: a router under a profiler writes its profile while it stops


class Server:
    """A child process that announces its port in a JSON port file; stopped by pid, killed if it lingers."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, cwd: Path = REPO, env: dict[str, str] | None = None
    ) -> None:
        """cwd and env: where the child runs and its environment (default: the repository, this environment)."""
        self.name = name
        self.port_file = workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*argv, "--port-file", str(self.port_file)], cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ports(self) -> dict[str, Any]:
        """The port file's contents ({"port": N, ...}), once the child has written it."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        return json.loads(self.port_file.read_text())

    def wait_port(self) -> int:
        return int(self.wait_ports()["port"])

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """kill -9 (a teardown that must not wait for the child's own graceful stop)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        if code not in (0, -signal.SIGTERM):
            print(f"{self.name} exited with {code}:\n{self.log_tail()}", file=sys.stderr)


def runtime_argv(instance_id: str = "bench-rt", capacity_bytes: int = 100_000_000) -> list[str]:
    """A built-in runtime process on 127.0.0.1, port picked by the OS, that stops when the benchmark dies."""
    return [
        PY, "-m", "adapters.builtin", "--host", "127.0.0.1", "--port", "0", "--capacity-bytes", str(capacity_bytes),
        "--instance-id", instance_id, "--parent-pid", str(os.getpid()), "--log-level", "INFO",
    ]  # fmt: skip


def machine() -> dict[str, Any]:
    """Cores, CPU model, versions, date and load: what every result file states."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """1/5/15-minute load: anything else running on a 2-core machine shows up in every number."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def target(name: str, met: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "met": bool(met), "detail": detail}


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def client_mode(client: Callable[[dict], Awaitable[dict]]) -> bool:
    """`python -m bench.<scenario> --client PLAN RESULTS`: this process is the scenario's load generator. Runs the
    client coroutine on the plan (JSON), writes what it returns (JSON), and says True; False in any other process."""
    if len(sys.argv) != 4 or sys.argv[1] != "--client":
        return False
    results = asyncio.run(client(json.loads(Path(sys.argv[2]).read_text())))
    Path(sys.argv[3]).write_text(json.dumps(results))
    return True


def print_targets(found: list[dict]) -> None:
    for target in found:
        print(f"{'met' if target['met'] else 'NOT MET'}: {target['name']}: {target['detail']}")
