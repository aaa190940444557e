"""Starting TorchServe as a child, from its venv (shared/research/runtimes.md §4 has how it was found to run).

What the launch has to get right:
- `--enable-model-api`, else registration answers 405, and `--disable-token-auth`, else every call needs a key;
- a temp folder of its own (TEMP): the `torchserve` launcher keeps its pid file there, and the JVM
  (java.io.tmpdir) its worker sockets and extracted archives, so two TorchServes on one machine do not meet;
- stopping the whole process group: the launcher's child, the JVM, outlives the launcher and keeps the ports.
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
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PORTS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


@dataclass
class LaunchedTorchServe:
    process: ServerProcess
    management_url: str
    grpc_address: str


def find_launcher(venv: Path) -> Path:
    """The venv's `torchserve` script; raise Unavailable, saying how to get what is missing."""
    launcher = venv / "bin" / "torchserve"
    if not launcher.is_file():
        raise Unavailable(
            f"no torchserve in {venv}: make it with `python -m adapters.common.envs torchserve` "
            "(or name the venv with --server-venv)"
        )
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").is_file()) and shutil.which("java") is None:
        raise Unavailable("TorchServe needs Java 11 or later: no `java` on PATH and no JAVA_HOME")
    return launcher


def config_text(ports: dict[str, int], model_store: Path, workers: int) -> str:
    """config.properties for a server on 127.0.0.1 only, with the model API on and token auth off."""
    return "\n".join(
        [
            "# Written by mesh's TorchServe adapter (adapters/torchserve/launch.py) at each start.",
            f"inference_address=http://127.0.0.1:{ports['inference']}",
            f"management_address=http://127.0.0.1:{ports['management']}",
            f"metrics_address=http://127.0.0.1:{ports['metrics']}",
            "grpc_inference_address=127.0.0.1",
            f"grpc_inference_port={ports['grpc_inference']}",
            "grpc_management_address=127.0.0.1",
            f"grpc_management_port={ports['grpc_management']}",
            f"model_store={model_store}",
            f"default_workers_per_model={workers}",
            # TorchServe's default (6.5 MB) is below the router's message limit (64 MiB).
            f"max_request_size={MAX_MESSAGE_BYTES}",
            f"max_response_size={MAX_MESSAGE_BYTES}",
            "enable_model_api=true",
            "disable_token_authorization=true",
            "",
        ]
    )


def server_env(server_dir: Path, open_inference_protocol: bool) -> dict[str, str]:
    # TS_* variables from the caller's environment would override the written config (TS_CONFIG_FILE replaces
    # --ts-config outright), so none is passed on.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env["TEMP"] = str(server_dir / "tmp")
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(server_dir / "logs")
    if open_inference_protocol:
        env["TS_OPEN_INFERENCE_PROTOCOL"] = "oip"
    return env


async def launch(
    venv: Path, model_store: Path, server_dir: Path, workers: int, open_inference_protocol: bool, timeout: float
) -> LaunchedTorchServe:
    """Start TorchServe on free ports of 127.0.0.1 and wait until its management API answers."""
    launcher = find_launcher(venv)

    def prepare() -> None:
        # A stale pid file in the temp folder would make the launcher think TorchServe is already running.
        shutil.rmtree(server_dir / "tmp", ignore_errors=True)
        for folder in (server_dir / "tmp", server_dir / "logs", model_store):
            folder.mkdir(parents=True, exist_ok=True)

    await asyncio.to_thread(prepare)
    env = server_env(server_dir, open_inference_protocol)
    config = server_dir / "config.properties"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        await asyncio.to_thread(config.write_text, config_text(ports, model_store, workers))
        argv = [
            str(launcher), "--start", "--foreground", "--ncs",
            "--model-store", str(model_store), "--ts-config", str(config),
            "--disable-token-auth", "--enable-model-api",
        ]  # fmt: skip
        management_url = f"http://127.0.0.1:{ports['management']}"
        process = ServerProcess("torchserve", argv, server_dir / "torchserve.log", env=env, cwd=server_dir)
        try:
            await process.start(http_ready(f"{management_url}/api-description"), timeout)
        except Unavailable:
            await process.stop()
            if attempt < PORT_ATTEMPTS and "Address already in use" in process.log_tail(60):
                log.warning("TorchServe found one of the ports %s taken; starting again", sorted(ports.values()))
                continue
            raise
        return LaunchedTorchServe(process, management_url, f"127.0.0.1:{ports['grpc_inference']}")
    raise AssertionError("unreachable: the last attempt returns or raises")
