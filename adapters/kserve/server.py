"""Custom KServe-SDK models, served by the KServe host (adapters/kserve/host.py): each loaded model has a folder in
the host's repository holding a mesh-model.json that names its pulled files; the host loads and unloads it by
name through KServe's REST repository API; inference goes from the router straight to the host's gRPC port, where
KServe's own servicer runs the model's preprocess, predict and postprocess.

Models share the host's process. A launched host that dies (a model's code may kill it) is started again at once
on the same ports, and the models it held are loaded into it again: their copies stay where the router placed
them, and calls in the gap are retried by the router, as for any runtime that stops answering. The host reports
no memory per model: sizes are the adapter core's estimate from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import httpx

from adapters.common import repository
from adapters.common.http_server import HttpModelServer
from adapters.common.launch import ServerProcess
from adapters.kserve.launch import HostPorts, KServeInstall, start_host
from adapters.kserve.settings import MODEL_TYPES, KServeSettings
from adapters.puller import PulledModel
from mesh.errors import MeshError, ModelLoadFailed, Unavailable

log = logging.getLogger(__name__)

POINTER_FILE = "mesh-model.json"  # host.py's POINTER_FILE: the host imports nothing of mesh's
MODEL_FILE = "model.py"
PREDICTOR_PATH = "/mm/"
"""The router's REST path that names the model to infer, whatever model the rest of the path names (its route is
in mesh/proxy/rest_server.py; the adapter does not import the REST server for one string)."""
RESTART_PAUSE_S = 1.0
"""Between attempts to start a dead host again (its ports may take a moment to be free)."""
SERVER = "the KServe host"


class KServeHost(HttpModelServer):
    """The KServe host, launched here (`settings.launch`, and started again when it dies) or already running."""

    server_name = SERVER

    def __init__(self, settings: KServeSettings, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(settings.http_url)
        self._settings = settings
        self._repository = settings.model_repository
        self._max_message_bytes = max_message_bytes
        self._install = KServeInstall.find(settings.server_venv) if settings.launch else None
        self._process: ServerProcess | None = None
        self._ports: HostPorts | None = None
        self._up: asyncio.Event | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._loaded: set[str] = set()
        self.model_types = MODEL_TYPES
        self.runtime_version = "kserve"
        self.data_endpoint = settings.grpc_address

    def check_model_id(self, model_id: str) -> None:
        repository.check_url_name(model_id, SERVER)

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.to_thread(self._repository.mkdir, parents=True, exist_ok=True)
        self._up = asyncio.Event()
        if self._install is not None:
            self._process, self._ports = await self._start(timeout)
            self._base_url, self.data_endpoint = self._ports.http_url, self._ports.grpc_address
            self._keeper = asyncio.create_task(self._keep_running(timeout), name="kserve-host-keeper")
        await self._connect("/v2/health/live", time.monotonic() + timeout)
        self._up.set()
        metadata = (await self._call("GET", "/v2")).json()
        self.runtime_version = f"{metadata.get('name', 'kserve')}/{metadata.get('version', '')}".rstrip("/")
        log.info("%s ready at %s (gRPC %s)", self.runtime_version, self._base_url, self.data_endpoint)

    async def _start(self, timeout: float, ports: HostPorts | None = None) -> tuple[ServerProcess, HostPorts]:
        assert self._install is not None
        settings = self._settings
        return await start_host(
            self._install, self._repository, settings.server_dir, self._max_message_bytes, timeout, ports
        )

    async def _keep_running(self, timeout: float) -> None:
        """Start the host again whenever it exits, on the same ports, and load into it what it held."""
        assert self._up is not None and self._ports is not None
        while True:
            process = self._process
            assert process is not None and process.process is not None
            code = await process.process.wait()
            self._up.clear()
            log.error(
                "%s exited with %s, holding %d model(s) (a model's code may have ended it); starting it again."
                " Its log: %s", SERVER, code, len(self._loaded), process.log_tail(5),
            )  # fmt: skip
            while True:
                try:
                    self._process, _ = await self._start(timeout, self._ports)
                    break
                except Unavailable as exc:
                    log.error("%s did not start again: %s", SERVER, exc)
                    await asyncio.sleep(RESTART_PAUSE_S)
            self._up.set()
            await asyncio.gather(*(self._load_again(model_id) for model_id in sorted(self._loaded)))

    async def _load_again(self, model_id: str) -> None:
        try:
            await self._load_by_name(model_id)
        except MeshError as exc:
            log.warning("model %s was not loaded again after the host restarted: %s", model_id, exc.message)
            self._loaded.discard(model_id)

    async def _host_up(self) -> None:
        if self._up is not None:
            await self._up.wait()

    async def load(self, model_id: str, model_type: str, model: PulledModel) -> int | None:
        repository.check_url_name(model_id, SERVER)
        folder = _model_folder(model.path)
        pointer = {"name": model_id, "path": str(folder)}
        if model.predictor:
            pointer["predictor_url"] = self._predictor_url(model_id, model.predictor)
        await asyncio.to_thread(repository.write_model, self._repository, model_id, POINTER_FILE, pointer, SERVER)
        await self._host_up()
        try:
            await self._load_by_name(model_id)
        except MeshError:
            await asyncio.to_thread(repository.remove_model, self._repository, model_id)
            raise
        self._loaded.add(model_id)
        return None

    def _predictor_url(self, model_id: str, predictor: str) -> str:
        """Where a transformer's predict sends its request: the router's REST door, under the path that names the
        predictor (KServe's client adds /v2/models/<the transformer's name>/infer, which the router ignores there)."""
        if predictor == model_id:
            raise ModelLoadFailed(f"custom model {model_id!r} names itself as its predictor")
        if "/" in predictor:
            raise ModelLoadFailed(f"predictor {predictor!r} contains '/', which the router's REST path cannot carry")
        return f"{self._settings.router_url}{PREDICTOR_PATH}{repository.url_segment(predictor)}"

    async def _load_by_name(self, model_id: str) -> None:
        start = self._log_size()
        path = f"/v2/repository/models/{repository.url_segment(model_id)}/load"
        response = await self._call("POST", path, timeout=None)
        if response.status_code != 200:
            hint = _last_error_line(self._log_since(start))
            raise ModelLoadFailed(
                f"{SERVER} could not load custom model {model_id!r}: {_error_text(response)}"
                + (f" ({hint})" if hint else "")
            )

    async def unload(self, model_id: str) -> None:
        self._loaded.discard(model_id)
        try:
            repository.check_url_name(model_id, SERVER)
        except MeshError:
            return  # never loaded: no name for it here
        await self._host_up()
        response = await self._call("POST", f"/v2/repository/models/{repository.url_segment(model_id)}/unload")
        # 404: the host does not have it, which is what an unload wants.
        if response.status_code not in (200, 404):
            raise MeshError(f"{SERVER} could not unload model {model_id!r}: {_error_text(response)}")
        await asyncio.to_thread(repository.remove_model, self._repository, model_id)

    async def unload_all(self) -> None:
        listing = await self._call("GET", "/v2/models")
        if listing.status_code != 200:
            raise Unavailable(f"{SERVER}'s model list failed: {_error_text(listing)}")
        names = set(listing.json()["models"])
        await asyncio.gather(*(self.unload(name) for name in names))
        if names:
            log.info("unloaded %d model(s) the KServe host held: %s", len(names), ", ".join(sorted(names)))
        await asyncio.to_thread(repository.clear_repository, self._repository)

    def _log_path(self) -> Path | None:
        return self._process.log_path if self._process is not None else None

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._close_client()
        if self._process is not None:
            await self._process.stop()
            self._process = None


def _model_folder(path: Path) -> Path:
    """The pulled model's folder: the path itself, or the folder of a model.py pulled alone."""
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise ModelLoadFailed(f"a custom model is a folder holding {MODEL_FILE}; {path} has none")
        return path
    if path.name == MODEL_FILE:
        return path.parent
    raise ModelLoadFailed(f"a custom model is a folder holding {MODEL_FILE}, not a file ({path.name})")


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]).strip()
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.text.strip()[:500]}".strip()


def _last_error_line(lines: list[str]) -> str:
    """The last line of a traceback the host logged while loading (the exception, with its message)."""
    for line in reversed(lines):
        if line and not line.startswith((" ", "\t")) and ("Error" in line or "Exception" in line):
            return line.strip()[:500]
    return ""
