"""Triton as mesh's model server: models are folders in Triton's repository, loaded and unloaded through its
repository API (REST `/v2/repository/...`; Triton runs with --model-control-mode=explicit), and inference goes
from the router straight to Triton's gRPC port.

Triton answers an unload at once and unloads in the background (the index says UNLOADING meanwhile), so an unload
here waits for the model to leave the index's serving states: the router counts its memory as free on return.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from adapters.common.http_server import HttpModelServer
from adapters.puller import PulledModel
from adapters.triton import layout
from adapters.triton.launch import LaunchedTriton, TritonInstall, launch
from adapters.triton.memory import python_stub_bytes
from adapters.triton.settings import TritonSettings
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable

log = logging.getLogger(__name__)

UNLOAD_WAIT_S = 30.0
"""How long an unload waits for Triton to finish it before moving on (with a warning)."""
BUSY_STATES = frozenset({"READY", "LOADING", "UNLOADING"})
"""Repository index states of a model that still holds (or is about to hold) memory."""
LOG_LINES_QUOTED = 5


class TritonServer(HttpModelServer):
    """One Triton server, launched here (`settings.launch`) or already running."""

    server_name = "Triton"

    def __init__(self, settings: TritonSettings) -> None:
        super().__init__(settings.http_url)
        self._settings = settings
        self._repository = settings.model_repository
        self._install = _install(settings) if settings.launch else None
        self._launched: LaunchedTriton | None = None
        self.runtime_version = "triton"
        self.data_endpoint = settings.grpc_address
        if settings.model_types:
            self.model_types = settings.model_types
        elif self._install is not None:
            backends = set(self._install.backends())
            self.model_types = tuple(t for t in layout.MODEL_TYPES if layout.BACKENDS[t] in backends)
        else:
            self.model_types = layout.MODEL_TYPES

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.to_thread(self._repository.mkdir, parents=True, exist_ok=True)
        if self._install is not None:
            self._launched = await launch(
                self._install, self._repository, self._settings.server_dir, self._settings.server_args, timeout
            )
            self._base_url, self.data_endpoint = self._launched.http_url, self._launched.grpc_address
        await self._connect("/v2/health/live", time.monotonic() + timeout)
        metadata = await self._call("GET", "/v2")
        self.runtime_version = f"triton/{metadata.json().get('version', '?')}"
        log.info("Triton %s: HTTP %s, gRPC %s, repository %s", self.runtime_version, self._base_url,
                 self.data_endpoint, self._repository)  # fmt: skip

    def check_model_id(self, model_id: str) -> None:
        layout.check_model_name(model_id)

    async def load(self, model_id: str, model_type: str, model: PulledModel) -> int | None:
        plan = await asyncio.to_thread(layout.plan_layout, model_type, model.path)
        await asyncio.to_thread(layout.write_layout, self._repository, model_id, plan)
        log.debug("wrote %s into Triton's repository (%s)", model_id, plan.note)
        log_start = self._log_size()
        response = await self._call("POST", f"/v2/repository/models/{model_id}/load", json={}, timeout=None)
        if response.status_code != 200:
            message = f"Triton could not load model {model_id}: {_error_text(response)}"
            log.warning("%s", message)
            raise ModelLoadFailed(message + self._log_lines(log_start, model_id, message))
        return await self.size(model_id)

    async def size(self, model_id: str) -> int | None:
        """A python model's stub processes, measured; None (the core's disk estimate) for other backends, whose
        memory Triton does not report per model on CPU."""
        return await asyncio.to_thread(python_stub_bytes, self._repository, model_id)

    async def unload(self, model_id: str) -> None:
        try:
            layout.check_model_name(model_id)
        except InvalidArgument:
            return  # never loaded: a name Triton can't hold was refused at load
        await self._unload_names([model_id])
        await asyncio.to_thread(layout.remove_model, self._repository, model_id)

    async def unload_all(self) -> None:
        index = await self._index()
        await self._unload_names({entry["name"] for entry in index if entry.get("state") in BUSY_STATES})
        await asyncio.to_thread(layout.clear_repository, self._repository)

    async def close(self) -> None:
        await self._close_client()
        if self._launched is not None:
            await self._launched.process.stop()

    async def _unload_names(self, names: Iterable[str]) -> None:
        """Ask Triton to unload each model, then wait until none of them is in a busy state."""
        pending = set(names)
        for name in pending:
            await self._request_unload(name)
        deadline = time.monotonic() + UNLOAD_WAIT_S
        delay = 0.02
        while pending:
            states = _states(await self._index())
            for name in list(pending):
                state = states.get(name, set())
                if not state & BUSY_STATES:
                    pending.discard(name)
                elif state == {"READY"}:
                    # A load that was in flight at the first request finished after it: unload again.
                    await self._request_unload(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                log.warning("Triton still holds %s %.0fs after the unload request", sorted(pending), UNLOAD_WAIT_S)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _request_unload(self, name: str) -> None:
        response = await self._call("POST", f"/v2/repository/models/{name}/unload", json={})
        # Triton 2.51 answers 200 even for a model it does not know; older ones said UNAVAILABLE (ModelMesh's note).
        if response.status_code != 200 and name in _states(await self._index()):
            raise Unavailable(f"Triton could not unload model {name}: {_error_text(response)}")

    async def _index(self) -> list[dict[str, Any]]:
        response = await self._call("POST", "/v2/repository/index", json={})
        if response.status_code != 200:
            raise Unavailable(f"Triton's repository index failed: {_error_text(response)}")
        return list(response.json())

    def _log_lines(self, start: int, model_id: str, message: str) -> str:
        """Triton's log lines about the model since `start` (a launched server's log) that say more than `message`:
        a load response can be as terse as "failed to poll from model repository" while the log says why."""
        quoted = f"'{model_id}'"
        lines = [
            line
            for line in self._log_since(start)
            if line[:1] in "EW" and quoted in line and not _already_said(line, message)
        ]
        return "".join(f"\n  log: {line}" for line in lines[-LOG_LINES_QUOTED:])

    def _log_path(self) -> Path | None:
        return self._launched.process.log_path if self._launched else None


def _states(index: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Model name → the states of its versions in the repository index."""
    states: dict[str, set[str]] = {}
    for entry in index:
        states.setdefault(entry["name"], set()).add(entry.get("state", ""))
    return states


def _already_said(line: str, message: str) -> bool:
    """Whether the reason a log line gives (after its "what failed: ") is in the message already."""
    detail = line.split("] ", 1)[-1].strip().strip('"').replace("\\n", "\n")
    reason = detail.split(": ", 1)[-1].strip()
    return bool(reason) and reason in message


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]).strip()
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.text[:500]}"


def _install(settings: TritonSettings) -> TritonInstall:
    return TritonInstall.at_home(settings.home) if settings.home else TritonInstall.find(settings.server_venv)
