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

from mesh.config import DATAPLANES, Settings
from mesh.engine.access import EngineAccessLog
from mesh.engine.certificates import EngineCertificates
from mesh.engine.control import EngineControl
from mesh.engine.haproxy import HAProxyEngine, find_haproxy
from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import EngineFiles, HAProxyLayout, Listener
from mesh.engine.haproxy_process import ChildProcess, Sidecar
from mesh.metrics import RouterMetrics
from mesh.periodic import every
from mesh.placement.manager import PlacementManager

log = logging.getLogger(__name__)

CERTIFICATE_CHECK_S = 1.0
"""How often the front doors' TLS files are checked for a rotation while the engine serves them."""
INTERNAL_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class NativeEngine:
    """The native engine the settings ask for: a haproxy mesh runs as its child, or a sidecar it drives."""

    binary: str | None
    """The haproxy mesh starts; None: a sidecar, started by someone else."""

    @property
    def sidecar(self) -> bool:
        return self.binary is None


def native_engine(settings: Settings) -> NativeEngine | None:
    """The engine the settings ask for, or None for the Python data plane (asked for, or `auto` where HAProxy is not
    installed); a ValueError for settings no engine can serve."""
    choice = settings.dataplane
    if choice not in DATAPLANES:
        raise ValueError(f"dataplane {choice!r} is not one of {', '.join(DATAPLANES)}")
    if choice == "python":
        return None
    if choice == "haproxy-sidecar":
        if not settings.dataplane_dir:
            raise ValueError("dataplane 'haproxy-sidecar' needs dataplane_dir: the directory mesh and the engine share")
        if settings.grpc_port <= 0 or settings.rest_port == 0:
            raise ValueError("dataplane 'haproxy-sidecar' needs fixed public ports (the engine binds them), not 0")
        return NativeEngine(None)
    binary = find_haproxy(settings.haproxy_binary)
    if binary is None:
        if choice == "haproxy":
            raise ValueError(f"dataplane 'haproxy' asked for, but {settings.haproxy_binary!r} is not installed")
        return None
    return NativeEngine(binary)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket the engine inherits (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


def bind_address(host: str, port: int) -> str:
    """A host and port as a sidecar engine's bind line takes them (the address family said, not guessed)."""
    return f"ipv6@{host}:{port}" if ":" in host else f"ipv4@{host}:{port}"


@dataclass
class NativeFrontDoor:
    """The engine serving the public ports, with its control loop."""

    control: EngineControl
    directory: Path
    grpc_port: int
    rest_port: int | None
    sockets: list[socket.socket] = field(default_factory=list)
    """The public ports' sockets, when mesh opened them for its child engine."""
    owns_directory: bool = True
    certificate_reloads: asyncio.Task[None] | None = None
    access: EngineAccessLog | None = None
    """Writes the engine's own access lines, when the access log is on."""

    def problem(self) -> str | None:
        """What keeps the engine from serving (a readiness condition), or None."""
        return None if self.control.driver.running() else "the data-plane engine (haproxy) is not running"

    async def stop(self) -> None:
        if self.certificate_reloads is not None:
            self.certificate_reloads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.certificate_reloads
        await self.control.stop()
        if self.access is not None:
            self.access.close()
        for sock in self.sockets:
            sock.close()
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


async def start_front_door(
    engine: NativeEngine,
    settings: Settings,
    manager: PlacementManager,
    metrics: RouterMetrics,
    mesh_grpc_port: int,
    mesh_rest_port: int | None,
) -> NativeFrontDoor:
    """Start the engine on the public ports, in front of mesh's doors on their internal ports: a child engine on
    sockets mesh opens (port 0 works, and a restart serves the same ports at once), a sidecar on ports it binds."""
    serves_rest = mesh_rest_port is not None
    sockets: list[socket.socket] = []
    if engine.sidecar:
        directory = Path(settings.dataplane_dir)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        grpc = Listener(address=bind_address(settings.host, settings.grpc_port))
        rest = Listener(address=bind_address(settings.host, settings.rest_port)) if serves_rest else None
    else:
        sockets = [listening_socket(settings.host, settings.grpc_port)]
        if serves_rest:
            sockets.append(listening_socket(settings.host, settings.rest_port))
        directory = Path(settings.dataplane_dir or tempfile.mkdtemp(prefix="mesh-engine-"))
        grpc = Listener(fd=sockets[0].fileno())
        rest = Listener(fd=sockets[1].fileno()) if serves_rest else None
    owns_directory = not settings.dataplane_dir
    files = EngineFiles(directory)
    tls = settings.front_door_tls()
    certificates = EngineCertificates(tls, files) if tls is not None else None
    access: EngineAccessLog | None = None
    try:
        if certificates is not None:
            certificates.write()
        layout = HAProxyLayout(
            files=files,
            grpc=grpc,
            rest=rest,
            mesh_grpc=f"{INTERNAL_HOST}:{mesh_grpc_port}",
            mesh_rest=f"{INTERNAL_HOST}:{mesh_rest_port}" if serves_rest else None,
            tls=tls is not None,
            mtls=tls is not None and tls.mutual,
            slots=settings.dataplane_slots,
            max_message_bytes=settings.max_message_bytes,
            threads=settings.dataplane_threads,
            shared=engine.sidecar,
            latency=settings.dataplane_latency,
            access_log=settings.access_log,
        )
        process = (
            Sidecar(files)
            if engine.binary is None
            else ChildProcess(engine.binary, files, tuple(s.fileno() for s in sockets))
        )
        driver = HAProxyEngine(layout, process)
        if settings.access_log:
            placements = manager.view.placements
            access = EngineAccessLog(
                driver.instance_of, lambda m: placements[m].record.size_bytes if m in placements else 0
            )
            await access.open(files.access_socket, engine.sidecar)
        control = EngineControl(driver, manager, metrics)
        await control.start()
    except BaseException:
        if access is not None:
            access.close()
        for sock in sockets:
            sock.close()
        if owns_directory:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if sockets:
        grpc_port = sockets[0].getsockname()[1]
        rest_port = sockets[1].getsockname()[1] if serves_rest else None
    else:
        grpc_port, rest_port = settings.grpc_port, settings.rest_port if serves_rest else None
    door = NativeFrontDoor(control, directory, grpc_port, rest_port, sockets, owns_directory, access=access)
    if certificates is not None:
        api = RuntimeAPI(files.admin_socket)
        reloading = every(CERTIFICATE_CHECK_S, lambda: certificates.reload_changed(api), "TLS reload", log)
        door.certificate_reloads = asyncio.create_task(reloading, name="engine-tls-reload")
    return door
