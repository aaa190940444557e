"""Starting the KServe host (adapters/kserve/host.py) as a child, from its own venv (`python -m adapters.common.envs
kserve`), on free ports of 127.0.0.1; and starting it again on the same ports, which the router already sends
inference to, when it dies."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from adapters.common.launch import ServerProcess, free_ports, http_ready
from mesh.errors import Unavailable

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
HOST_SCRIPT = Path(__file__).resolve().parent / "host.py"
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class KServeInstall:
    """Where kserve lies in a venv."""

    venv: Path

    @classmethod
    def find(cls, venv: Path) -> KServeInstall:
        """Raise Unavailable, saying how to make it, when the venv holds no kserve."""
        if any(venv.glob("lib/python3.*/site-packages/kserve/model.py")) and (venv / "bin" / "python").exists():
            return cls(venv)
        raise Unavailable(
            f"no kserve in {venv}: make it with `python -m adapters.common.envs kserve` "
            "(or name the venv with --server-venv)"
        )


@dataclass
class HostPorts:
    http: int
    grpc: int

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http}"

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self.grpc}"


async def start_host(
    install: KServeInstall, repository: Path, server_dir: Path, max_message_bytes: int, timeout: float,
    ports: HostPorts | None = None,
) -> tuple[ServerProcess, HostPorts]:  # fmt: skip
    """Start the host (on `ports`, or on free ones, trying others if they were taken); wait until it answers."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(install.venv)
    await asyncio.to_thread(server_dir.mkdir, parents=True, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        chosen = ports or HostPorts(*free_ports(2, HOST))
        argv = [
            str(install.venv / "bin" / "python"), "-P", str(HOST_SCRIPT), "--repository", str(repository),
            "--host", HOST, "--http-port", str(chosen.http), "--grpc-port", str(chosen.grpc),
            "--max-message-bytes", str(max_message_bytes),
        ]  # fmt: skip
        process = ServerProcess("kserve host", argv, server_dir / "kserve.log", env=env, cwd=server_dir)
        try:
            await process.start(http_ready(f"{chosen.http_url}/v2/health/live"), timeout)
        except Unavailable:
            await process.stop()
            taken = "address already in use" in process.log_tail().lower()
            if ports is None and taken and attempt < PORT_ATTEMPTS:
                log.warning("the kserve host found one of ports %s taken; starting again", chosen)
                continue
            raise
        log.info("kserve host serves REST on %d, gRPC on %d", chosen.http, chosen.grpc)
        return process, chosen
    raise AssertionError("unreachable: the last attempt returns or raises")
