"""`mesh serve` as a new user starts it: from any working directory, and ready only once it can answer.

A checkout named `mesh` (what `git clone ... mesh` makes) left a folder called `mesh/` in the working directory of
the processes mesh started, which Python took for the `mesh` package; and readiness turned true before the
example models were registered, so a client that waited for ready got NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mesh.config import Settings
from mesh.serve import EmbeddedMesh, ServeOptions

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
IRIS_SETOSA = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}


def _decoy_packages(cwd: Path) -> None:
    """Folders named like mesh's packages that are not them: importing either from here fails loudly."""
    for package in ("mesh", "adapters"):
        (cwd / package).mkdir(parents=True)
        (cwd / package / "README").write_text("not the project\n")
    (cwd / "adapters" / "builtin").mkdir()
    (cwd / "adapters" / "builtin" / "__main__.py").write_text("raise SystemExit('the decoy adapters.builtin ran')\n")


def test_mesh_serve_starts_and_serves_from_a_directory_holding_mesh_and_adapters_folders(tmp_path: Path) -> None:
    cwd = tmp_path / "checkout-parent"
    _decoy_packages(cwd)
    port_file, output = tmp_path / "ports.json", tmp_path / "serve.log"
    mesh_command = Path(sys.executable).parent / "mesh"  # the console script the README's first command installs
    command = [
        str(mesh_command), "serve", "--grpc-port", "0", "--rest-port", "0", "--port-file", str(port_file),
        "--data-dir", str(tmp_path / "data"), "--kv", "memory://",
    ]  # fmt: skip
    env = {**os.environ, "MESH_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    with output.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            assert process.poll() is None, f"mesh serve exited with {process.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"no port file in {START_TIMEOUT_S:.0f} s:\n{output.read_text()}"
            time.sleep(0.05)
        rest = json.loads(port_file.read_text())["rest"]
        with httpx.Client(base_url=f"http://127.0.0.1:{rest}", timeout=30) as client:
            assert client.get("/v2/health/ready").status_code == 200
            answer = client.post("/v2/models/iris-logreg/infer", json=IRIS_SETOSA)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [0]  # setosa
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, output.read_text()
    assert "decoy" not in output.read_text()


async def test_mesh_serve_is_not_ready_before_its_example_models_are_registered(tmp_path: Path) -> None:
    """Watch readiness while `mesh serve` starts: the first moment it says ready, the examples must resolve."""
    settings = Settings(grpc_port=0, rest_port=-1, metrics_port=-1, data_dir=str(tmp_path), kv="memory://")
    mesh = EmbeddedMesh(settings, ServeOptions(runtimes=1))
    starting = asyncio.create_task(mesh.start())
    seen_not_ready = False
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            readiness = getattr(mesh.router, "readiness", None)
            if readiness is not None and readiness.ready:
                break
            seen_not_ready |= readiness is not None
            assert not starting.done() or starting.exception() is None, "mesh serve failed to start"
            assert time.monotonic() < deadline, "never ready"
            await asyncio.sleep(0.005)
        # The first look that saw ready: everything a client is promised must be there now.
        registry = mesh.router.registry
        assert registry.resolve("iris-logreg") == "iris-logreg"
        assert registry.resolve("text-upper") == "text-upper"
        assert seen_not_ready, "readiness was never seen false while starting: the test watched nothing"
        await starting
    finally:
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await mesh.stop()
