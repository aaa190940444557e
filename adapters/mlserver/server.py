"""MLServer as mesh's model server: each model is a folder in MLServer's repository (a model-settings.json pointing
at the pulled files), loaded and unloaded by name through MLServer's REST repository API
(`POST /v2/repository/models/{name}/load|unload`); inference goes from the router straight to MLServer's gRPC port.

MLServer answers a load once the model is ready in every inference worker, and an unload once it is gone from
them, so the router's view of memory matches on return. It reports no memory per model: sizes are the adapter
core's estimate from disk.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from adapters.common.http_server import HttpModelServer
from adapters.mlserver import layout
from adapters.mlserver.launch import LaunchedMLServer, MLServerInstall, launch
from adapters.mlserver.settings import MLServerSettings
from adapters.puller import PulledModel
from mesh.errors import MeshError, ModelLoadFailed, Unavailable

log = logging.getLogger(__name__)


class MLServer(HttpModelServer):
    """One MLServer, launched here (`settings.launch`) or already running."""

    server_name = "MLServer"

    def __init__(self, settings: MLServerSettings, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(settings.http_url)
        self._settings = settings
        self._repository = settings.model_repository
        self._max_message_bytes = max_message_bytes
        self._install = MLServerInstall.find(settings.server_venv) if settings.launch else None
        self._launched: LaunchedMLServer | None = None
        self.runtime_version = "mlserver"
        self.data_endpoint = settings.grpc_address
        if settings.model_types:
            self.model_types = settings.model_types
        elif self._install is not None:
            self.model_types = self._install.model_types()
        else:
            self.model_types = layout.MODEL_TYPES

    def check_model_id(self, model_id: str) -> None:
        layout.check_model_name(model_id)

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.to_thread(self._repository.mkdir, parents=True, exist_ok=True)
        if self._install is not None:
            self._launched = await launch(
                self._install,
                self._repository,
                self._settings.server_dir,
                self._settings.parallel_workers,
                self._max_message_bytes,
                timeout,
            )
            self._base_url, self.data_endpoint = self._launched.http_url, self._launched.grpc_address
        await self._connect("/v2/health/ready", time.monotonic() + timeout)
        metadata = (await self._call("GET", "/v2")).json()
        self.runtime_version = f"{metadata.get('name', 'mlserver')}/{metadata.get('version', '')}".rstrip("/")
        log.info("%s ready at %s (gRPC %s), model types %s", self.runtime_version, self._base_url,
                 self.data_endpoint, ",".join(self.model_types))  # fmt: skip

    async def load(self, model_id: str, model_type: str, model: PulledModel) -> int | None:
        layout.check_model_name(model_id)
        settings = await asyncio.to_thread(layout.model_settings, model_id, model_type, model.path)
        await asyncio.to_thread(layout.write_model, self._repository, model_id, settings)
        response = await self._call("POST", f"/v2/repository/models/{layout.url_segment(model_id)}/load", timeout=None)
        if response.status_code == 200:
            return None
        what = f"{settings.get('implementation', 'no implementation')} from {settings['parameters']['uri']}"
        if response.status_code == 404:
            raise ModelLoadFailed(
                f"MLServer found no model {model_id!r} in its repository ({_error_text(response)}): was it started"
                f" on the adapter's --model-repository ({self._repository})?"
            )
        log_hint = f" (server log: {self._launched.process.log_path})" if self._launched else ""
        raise ModelLoadFailed(f"MLServer could not load model {model_id!r} ({what}): {_error_text(response)}{log_hint}")

    async def unload(self, model_id: str) -> None:
        try:
            layout.check_model_name(model_id)
        except MeshError:
            return  # never loaded: no name for it here
        response = await self._call("POST", f"/v2/repository/models/{layout.url_segment(model_id)}/unload")
        # 404: MLServer does not have it, which is what an unload wants.
        if response.status_code not in (200, 404):
            raise MeshError(f"MLServer could not unload model {model_id!r}: {_error_text(response)}")
        await asyncio.to_thread(layout.remove_model, self._repository, model_id)

    async def unload_all(self) -> None:
        index = await self._call("POST", "/v2/repository/index", json={})
        if index.status_code != 200:
            raise Unavailable(f"MLServer's repository index failed: {_error_text(index)}")
        names = {entry["name"] for entry in index.json() if entry.get("state") != "UNAVAILABLE"}
        await asyncio.gather(*(self.unload(name) for name in names))
        if names:
            log.info("unloaded %d model(s) MLServer held: %s", len(names), ", ".join(sorted(names)))
        await asyncio.to_thread(layout.clear_repository, self._repository)

    async def close(self) -> None:
        await self._close_client()
        if self._launched is not None:
            await self._launched.process.stop()
            self._launched = None


def _error_text(response: httpx.Response) -> str:
    """MLServer's {"error": ...}, or the last line of a plain-text traceback (its answer with parallel_workers 0)."""
    try:
        return str(response.json()["error"]).strip()
    except (ValueError, KeyError, TypeError):
        lines = response.text.strip().splitlines()
        return f"HTTP {response.status_code} {lines[-1][:500] if lines else ''}".strip()
