"""The engine in front of mesh: which data plane serves the public ports, and starting it there.

With a native engine the public ports (8033, 8008) are the engine's: mesh opens their listening sockets itself (so
port 0 works, and an engine restart serves the same ports at once) and hands them to the engine, while its own
doors listen on internal loopback ports that only the engine calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mesh.config import Settings
from mesh.engine.certificates import EngineCertificates
from mesh.engine.control import EngineControl
from mesh.engine.haproxy import HAProxyEngine, find_haproxy
from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import EngineFiles, HAProxyLayout, Listener
from mesh.metrics import RouterMetrics
from mesh.periodic import every
from mesh.placement.manager import PlacementManager

log = logging.getLogger(__name__)

DATAPLANES = ("auto", "haproxy", "python")
CERTIFICATE_CHECK_S = 1.0
"""How often the front doors' TLS files are checked for a rotation while the engine serves them."""
INTERNAL_HOST = "127.0.0.1"


def engine_binary(settings: Settings) -> str | None:
    """The engine binary the settings ask for: None for the Python data plane (asked for, or `auto` where HAProxy is
    not installed)."""
    choice = settings.dataplane
    if choice not in DATAPLANES:
        raise ValueError(f"dataplane {choice!r} is not one of {', '.join(DATAPLANES)}")
    if choice == "python":
        return None
    binary = find_haproxy(settings.haproxy_binary)
    if choice == "haproxy" and binary is None:
        raise ValueError(f"dataplane 'haproxy' asked for, but {settings.haproxy_binary!r} is not installed")
    return binary


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket the engine inherits (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


@dataclass
class NativeFrontDoor:
    """The engine serving the public ports, with its control loop."""

    control: EngineControl
    directory: Path
    sockets: list[socket.socket] = field(default_factory=list)
    certificate_reloads: asyncio.Task[None] | None = None

    def problem(self) -> str | None:
        """What keeps the engine from serving (a readiness condition), or None."""
        return None if self.control.driver.running() else "the data-plane engine (haproxy) is not running"

    @property
    def grpc_port(self) -> int:
        return self.sockets[0].getsockname()[1]

    @property
    def rest_port(self) -> int | None:
        return self.sockets[1].getsockname()[1] if len(self.sockets) > 1 else None

    async def stop(self) -> None:
        if self.certificate_reloads is not None:
            self.certificate_reloads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.certificate_reloads
        await self.control.stop()
        for sock in self.sockets:
            sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


async def start_front_door(
    binary: str,
    settings: Settings,
    manager: PlacementManager,
    metrics: RouterMetrics,
    mesh_grpc_port: int,
    mesh_rest_port: int | None,
) -> NativeFrontDoor:
    """Open the public ports and start the engine on them, in front of mesh's doors on their internal ports."""
    sockets = [listening_socket(settings.host, settings.grpc_port)]
    if mesh_rest_port is not None:
        sockets.append(listening_socket(settings.host, settings.rest_port))
    directory = Path(tempfile.mkdtemp(prefix="mesh-engine-"))
    files = EngineFiles(directory)
    tls = settings.front_door_tls()
    certificates = EngineCertificates(tls, files) if tls is not None else None
    try:
        if certificates is not None:
            certificates.write()
        layout = HAProxyLayout(
            files=files,
            grpc=Listener(fd=sockets[0].fileno()),
            rest=Listener(fd=sockets[1].fileno()) if mesh_rest_port is not None else None,
            mesh_grpc=f"{INTERNAL_HOST}:{mesh_grpc_port}",
            mesh_rest=f"{INTERNAL_HOST}:{mesh_rest_port}" if mesh_rest_port is not None else None,
            tls=tls is not None,
            mtls=tls is not None and tls.mutual,
            slots=settings.dataplane_slots,
            max_message_bytes=settings.max_message_bytes,
            threads=settings.dataplane_threads,
        )
        engine = HAProxyEngine(binary, layout, tuple(s.fileno() for s in sockets))
        control = EngineControl(engine, manager, metrics)
        await control.start()
    except BaseException:
        for sock in sockets:
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    door = NativeFrontDoor(control, directory, sockets)
    if certificates is not None:
        api = RuntimeAPI(files.admin_socket)
        reloading = every(CERTIFICATE_CHECK_S, lambda: certificates.reload_changed(api), "TLS reload", log)
        door.certificate_reloads = asyncio.create_task(reloading, name="engine-tls-reload")
    return door
