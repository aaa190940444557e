"""The native data plane in tests: HAProxy found, or installed from Debian's packages where apt and root are
available (the README's test command needs nothing else on a Debian machine), and a look into a running engine
over its runtime API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from mesh.engine.haproxy_api import RuntimeAPI
from mesh.engine.haproxy_config import MAPS, EngineFiles
from mesh.engine.haproxy_process import sidecar_command
from mesh.router import Router

APT_TIMEOUT_S = 600


def ensure_haproxy() -> tuple[str | None, str]:
    """(path of haproxy, "") — installing it with apt-get when it is missing and that is possible — or (None, why)."""
    found = shutil.which("haproxy")
    if found:
        return found, ""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None, "haproxy is not installed, and apt-get as root is not available here to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "haproxy"]
    for attempt in (install, ["apt-get", "update", "-q"], install):
        done = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
        if done.returncode == 0 and shutil.which("haproxy"):
            return shutil.which("haproxy"), ""
    return None, f"haproxy is not installed and apt-get could not install it: {done.stderr.strip()[-300:]}"


def engine_files(router: Router) -> EngineFiles:
    assert router.engine is not None, "the router runs no native engine"
    return EngineFiles(router.engine.directory)


def engine_api(router: Router) -> RuntimeAPI:
    return RuntimeAPI(engine_files(router).admin_socket)


async def engine_maps(router: Router) -> dict[str, dict[str, str]]:
    """What the running engine's route maps hold (read from HAProxy, not from mesh's memory)."""
    api, files = engine_api(router), engine_files(router)
    maps = {}
    for name in MAPS:
        answer = await api.run(f"show map {files.map(name)}")
        entries = (line.split(" ", 2)[1:] for line in answer.splitlines() if line.startswith("0x"))
        maps[name] = {key: value for key, value in entries}
    return maps


def free_port() -> int:
    """A loopback port nothing listens on now, for an engine that binds its ports itself (a sidecar); another
    process could take it before the engine does, which on a test machine does not happen in practice."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SidecarEngine:
    """A haproxy run the way the router pod's engine container runs it (mesh.engine.haproxy_process.sidecar_command),
    as a process of its own that mesh does not start, stop or own."""

    def __init__(self, directory: Path, binary: str) -> None:
        self._command = sidecar_command(str(directory), binary)
        self._log = directory.parent / f"{directory.name}-sidecar.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            self.popen = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the master and its worker (a container killed)."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self.popen = None

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""
