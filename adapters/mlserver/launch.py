"""Starting MLServer as a child, from its own venv (`python -m adapters.common.envs mlserver`): `mlserver start
REPOSITORY`, which makes REPOSITORY both the model repository and the folder of the server's settings.json (the
command line overrides any model_repository_root). The settings written here: 127.0.0.1 only (MLServer binds 0.0.0.0
unless told), free ports, and no model loaded at start (the adapter loads each one by name). The server's working
folder (its log, .metrics) is the adapter's --server-dir."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from adapters.common.launch import ServerProcess, free_ports, http_ready
from adapters.mlserver.layout import IMPLEMENTATIONS, MODEL_TYPES
from mesh.errors import Unavailable

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
HOST = "127.0.0.1"


@dataclass(frozen=True)
class MLServerInstall:
    """Where MLServer lies in a venv."""

    venv: Path
    site_packages: Path

    @classmethod
    def find(cls, venv: Path) -> MLServerInstall:
        """Raise Unavailable, saying how to make it, when the venv holds no MLServer."""
        for package in sorted(venv.glob("lib/python3.*/site-packages/mlserver")):
            if (venv / "bin" / "mlserver").is_file():
                return cls(venv, package.parent)
        raise Unavailable(
            f"no MLServer in {venv}: make it with `python -m adapters.common.envs mlserver` "
            "(or name the venv with --server-venv)"
        )

    def model_types(self) -> tuple[str, ...]:
        """The model types whose runtime package (mlserver_sklearn, ...) this venv holds."""
        return tuple(t for t in MODEL_TYPES if (self.site_packages / IMPLEMENTATIONS[t].split(".")[0]).is_dir())


@dataclass
class LaunchedMLServer:
    process: ServerProcess
    http_url: str
    grpc_address: str


def write_settings(
    repository: Path, ports: tuple[int, int, int], parallel_workers: int, max_message_bytes: int
) -> None:
    http_port, grpc_port, metrics_port = ports
    settings = {
        "host": HOST,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": False,
        "parallel_workers": parallel_workers,
        # The router forwards requests up to its own limit; gRPC's default 4 MiB would refuse larger ones here.
        "grpc_max_message_length": max_message_bytes,
    }
    repository.mkdir(parents=True, exist_ok=True)
    (repository / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


async def launch(
    install: MLServerInstall,
    repository: Path,
    server_dir: Path,
    parallel_workers: int,
    max_message_bytes: int,
    timeout: float,
) -> LaunchedMLServer:
    """Start `mlserver start repository` (working in server_dir) on free ports of 127.0.0.1; wait until ready."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(install.venv)
    env["PATH"] = os.pathsep.join(p for p in (str(install.venv / "bin"), env.get("PATH")) if p)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = tuple(free_ports(3, HOST))
        await asyncio.to_thread(write_settings, repository, ports, parallel_workers, max_message_bytes)
        http_url = f"http://{HOST}:{ports[0]}"
        argv = [str(install.venv / "bin" / "mlserver"), "start", str(repository)]
        await asyncio.to_thread(server_dir.mkdir, parents=True, exist_ok=True)
        process = ServerProcess("mlserver", argv, server_dir / "mlserver.log", env=env, cwd=server_dir)
        try:
            await process.start(http_ready(f"{http_url}/v2/health/ready"), timeout)
        except Unavailable:
            await process.stop()
            tail = process.log_tail().lower()
            if attempt < PORT_ATTEMPTS and ("address already in use" in tail or "failed to bind" in tail):
                log.warning("mlserver found one of ports %s taken; starting again", ports)
                continue
            raise
        log.info("mlserver serves REST on %d, gRPC on %d, metrics on %d", *ports)
        return LaunchedMLServer(process, http_url, f"{HOST}:{ports[1]}")
    raise AssertionError("unreachable: the last attempt returns or raises")
