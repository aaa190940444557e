"""Starting tritonserver as a child: by default the pip build inside nvidia-pytriton (Triton 2.51.0, CPU, python
backend only; shared/research/runtimes.md §3 has how it was found to run), or a full build named by its folder
(`--triton-home`, e.g. /opt/tritonserver in NGC's image, with the ONNX, PyTorch and TensorFlow backends).

The pip build needs three things the wheel does not set up: the python backend's stub copied into a backend folder
of our own (Triton looks for it beside libtriton_python.so), LD_LIBRARY_PATH on the wheel's bundled libraries
(libcudart and friends, even on CPU), and the venv's bin first on PATH so the stub's embedded Python finds the
venv's packages (numpy). A full build has its stubs in place and is run as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapters.common.launch import ServerProcess, free_ports, http_ready
from mesh.errors import Unavailable

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class TritonInstall:
    """Where the pip build's pieces lie in a venv."""

    venv: Path | None
    """The pip build's venv (its python runs the python backend); None for a full build."""
    root: Path
    """bin/tritonserver, backends/, caches/; the pip build's also python_backend_stubs/
    (site-packages/pytriton/tritonserver)."""
    libs: Path
    """The shared libraries the binary and the stub link (the pip build's site-packages/nvidia_pytriton.libs)."""
    python: str
    """The venv's Python as "3.11": picks the pip build's stub built for it."""

    @classmethod
    def at_home(cls, home: Path) -> TritonInstall:
        """A full build (NGC's image: /opt/tritonserver); Unavailable when `home` holds no tritonserver."""
        if not (home / "bin" / "tritonserver").is_file() or not (home / "backends").is_dir():
            raise Unavailable(f"no Triton build in {home}: expected bin/tritonserver and backends/ there")
        return cls(None, home, home / "lib", "")

    @classmethod
    def find(cls, venv: Path) -> TritonInstall:
        """Raise Unavailable, saying how to make it, when the venv holds no tritonserver."""
        for binary in sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver")):
            root = binary.parents[1]
            site = root.parents[1]
            return cls(venv, root, site / "nvidia_pytriton.libs", site.parent.name.removeprefix("python"))
        raise Unavailable(
            f"no tritonserver in {venv}: make it with `python -m adapters.common.envs triton` "
            "(or name the venv with --server-venv)"
        )

    def backends(self) -> tuple[str, ...]:
        """The backends this build ships (the pip build: python)."""
        return tuple(sorted(p.name for p in (self.root / "backends").iterdir() if p.is_dir()))


def prepare_backends(install: TritonInstall, server_dir: Path) -> Path:
    """A backend folder of our own: the build's backends, with the python stub put where Triton looks for it (a full
    build's own folder, which has it)."""
    if install.venv is None:
        return install.root / "backends"
    target = server_dir / "backends"
    for backend in install.backends():
        shutil.copytree(install.root / "backends" / backend, target / backend, dirs_exist_ok=True)
    stub = install.root / "python_backend_stubs" / install.python / "triton_python_backend_stub"
    if (target / "python").is_dir():
        if not stub.is_file():
            raise Unavailable(f"this Triton build has no python backend stub for Python {install.python} ({stub})")
        shutil.copy2(stub, target / "python" / stub.name)
    return target


@dataclass
class LaunchedTriton:
    process: ServerProcess
    http_url: str
    grpc_address: str


async def launch(
    install: TritonInstall, repository: Path, server_dir: Path, extra_args: tuple[str, ...], timeout: float
) -> LaunchedTriton:
    """Start tritonserver with explicit model control on free ports of 127.0.0.1 and wait until it is live."""
    await asyncio.to_thread(repository.mkdir, parents=True, exist_ok=True)  # Triton refuses to start without it
    backends = await asyncio.to_thread(prepare_backends, install, server_dir)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
    if install.venv is not None:
        env["PATH"] = os.pathsep.join(p for p in (str(install.venv / "bin"), env.get("PATH")) if p)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        http_port, grpc_port = free_ports(2)
        argv = [
            str(install.root / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={install.root / 'caches'}",
            "--model-control-mode=explicit",
            # Readiness would otherwise turn false while any model is unavailable (a failed load).
            "--strict-readiness=false",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            *extra_args,
        ]
        http_url = f"http://127.0.0.1:{http_port}"
        process = ServerProcess("tritonserver", argv, server_dir / "triton.log", env=env, cwd=server_dir)
        try:
            await process.start(http_ready(f"{http_url}/v2/health/live"), timeout)
        except Unavailable:
            await process.stop()
            if attempt < PORT_ATTEMPTS and "already in use" in process.log_tail():
                log.warning("tritonserver found port %d or %d taken; starting again", http_port, grpc_port)
                continue
            raise
        return LaunchedTriton(process, http_url, f"127.0.0.1:{grpc_port}")
    raise AssertionError("unreachable: the last attempt returns or raises")
