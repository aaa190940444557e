"""TorchServe as mesh's model server: each model is a link in TorchServe's model store, registered and
unregistered through its management API (REST `POST /models`, `DELETE /models/<id>`), and inference goes from
the router straight to TorchServe's gRPC port: its own InferenceAPIsService/Predictions (the router writes the
model id into model_name), and its KServe v2 service when TorchServe serves one (TS_OPEN_INFERENCE_PROTOCOL=oip).

A model's size is the memory TorchServe reports for its workers (DescribeModel's memoryUsage, sampled by its
metrics collector once a minute), else, for a server launched here, the resident memory of those worker
processes read from /proc (the same figure TorchServe samples), else nothing (the core estimates from disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx

from adapters.common.http_server import HttpModelServer
from adapters.puller import PulledModel
from adapters.torchserve import layout
from adapters.torchserve.launch import LaunchedTorchServe, find_launcher, launch
from adapters.torchserve.settings import TorchServeSettings
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable
from mesh.single_flight import SingleFlight

log = logging.getLogger(__name__)

PREDICTIONS = "org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
OIP_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
OIP_METHODS = {f"{OIP_SERVICE}/ModelInfer": (1,), f"{OIP_SERVICE}/ModelMetadata": (1,)}
REGISTER_TIMEOUT_S = 600.0
"""A backstop only: the core's load timeout bounds a load; TorchServe's own startup_timeout bounds its workers."""
UNREGISTER_TIMEOUT_S = 180.0
"""TorchServe waits up to its unregister_model_timeout (120 s) for a model's workers to stop."""
LOG_LINES_QUOTED = 8
PAGE_SIZE = 100


class TorchServeServer(HttpModelServer):
    """One TorchServe, launched here (`settings.launch`) or already running."""

    model_types = layout.MODEL_TYPES
    server_name = "TorchServe"

    def __init__(self, settings: TorchServeSettings) -> None:
        super().__init__(settings.management_url)
        self._settings = settings
        self._store = settings.model_store
        self._archiver = settings.archiver
        if settings.launch:
            find_launcher(settings.server_venv)  # fail at start, naming what is missing
        self._launched: LaunchedTorchServe | None = None
        self._registering: SingleFlight[str, httpx.Response] = SingleFlight("register")
        self.runtime_version = "torchserve"
        self.data_endpoint = settings.grpc_address
        self.methods = {PREDICTIONS: (1,)}

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await asyncio.to_thread(self._store.mkdir, parents=True, exist_ok=True)
        s = self._settings
        if s.launch:
            self._launched = await launch(
                s.server_venv, self._store, s.server_dir, s.workers_per_model, s.open_inference_protocol, timeout
            )
            self._base_url, self.data_endpoint = self._launched.management_url, self._launched.grpc_address
        response = await self._connect("/api-description", deadline)
        self.runtime_version = f"torchserve/{response.json().get('info', {}).get('version', '?')}"
        if await self._serves_oip(deadline):
            self.methods = {PREDICTIONS: (1,), **OIP_METHODS}
        oip = "on" if len(self.methods) > 1 else "off"
        log.info("TorchServe %s: management %s, gRPC %s, model store %s, v2 (OIP) %s", self.runtime_version,
                 self._base_url, self.data_endpoint, self._store, oip)  # fmt: skip

    def check_model_id(self, model_id: str) -> None:
        layout.check_model_name(model_id)

    async def load(self, model_id: str, model_type: str, model: PulledModel) -> int | None:
        entry = await asyncio.to_thread(layout.plan_entry, model_id, model)
        if entry.archive is not None:
            await self._archive(model_id, entry.archive)
        await asyncio.to_thread(layout.link, self._store, entry)
        log.debug("linked %s into TorchServe's model store (%s)", entry.name, entry.note)
        log_start = self._log_size()
        response = await self._register(model_id, entry.name)
        if response.status_code == 409:
            # TorchServe still holds the id from a load whose undo did not reach it: replace that registration.
            await self._unregister(model_id)
            response = await self._register(model_id, entry.name)
        if response.status_code != 200:
            hint = " (start TorchServe with --enable-model-api)" if response.status_code == 405 else ""
            raise ModelLoadFailed(
                f"TorchServe could not register model {model_id} ({entry.note}): {_error_text(response)}{hint}"
                + self._log_lines(log_start, model_id)
            )
        return await self.size(model_id)

    async def unload(self, model_id: str) -> None:
        try:
            layout.check_model_name(model_id)
        except InvalidArgument:
            return  # never loaded: a name TorchServe can't hold was refused at load
        await self._registered(model_id)
        await self._unregister(model_id)
        await asyncio.to_thread(layout.unlink, self._store, model_id)

    async def size(self, model_id: str) -> int | None:
        response = await self._call("GET", f"/models/{quote(model_id, safe='')}")
        if response.status_code != 200:
            return None
        workers = [w for version in response.json() for w in version.get("workers", [])]
        reported = sum(int(w.get("memoryUsage") or 0) for w in workers)
        if reported > 0 or self._launched is None:
            return reported or None
        measured = await asyncio.to_thread(_resident_bytes, [int(w["pid"]) for w in workers if w.get("pid")])
        return measured or None

    async def unload_all(self) -> None:
        for model_id in self._registering.keys():
            await self._registered(model_id)
        for name in await self._model_names():
            await self._unregister(name)
        await asyncio.to_thread(layout.clear_store, self._store)

    async def close(self) -> None:
        await self._registering.cancel_all()
        await self._close_client()
        if self._launched is not None:
            await self._launched.process.stop()

    async def _register(self, model_id: str, url: str) -> httpx.Response:
        params = {
            "url": url,
            "model_name": model_id,
            "initial_workers": str(self._settings.workers_per_model),
            "synchronous": "true",
        }
        # TorchServe goes on registering whatever we do: a load that gives up leaves the registration running, for
        # unload to wait on.
        return await self._registering.run(model_id, self._post_model, params)

    async def _post_model(self, params: dict[str, str]) -> httpx.Response:
        return await self._call("POST", "/models", params=params, timeout=REGISTER_TIMEOUT_S)

    async def _registered(self, model_id: str) -> None:
        """Wait for a registration still in flight (its load was given up): unregistering before it ends would find
        nothing, and the registration would finish afterwards."""
        pending = self._registering.running(model_id)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pending), REGISTER_TIMEOUT_S)

    async def _unregister(self, name: str) -> None:
        response = await self._call("DELETE", f"/models/{quote(name, safe='')}", timeout=UNREGISTER_TIMEOUT_S)
        if response.status_code not in (200, 404):  # 404: TorchServe does not have it, which is what we want
            raise Unavailable(f"TorchServe could not unregister model {name}: {_error_text(response)}")

    async def _model_names(self) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            params = {"limit": str(PAGE_SIZE), **({"next_page_token": token} if token else {})}
            response = await self._call("GET", "/models", params=params)
            if response.status_code != 200:
                raise Unavailable(f"TorchServe could not list its models: {_error_text(response)}")
            body = response.json()
            names += [m["modelName"] for m in body.get("models", [])]
            token = body.get("nextPageToken", "")
            if not token:
                return names

    async def _archive(self, model_id: str, args: layout.ArchiveArgs) -> None:
        if not self._archiver.is_file():
            raise ModelLoadFailed(
                f"model {model_id} is a folder to archive, and torch-model-archiver is not at {self._archiver}: "
                "make the venv with `python -m adapters.common.envs torchserve`, or name one with --archiver"
            )
        started = time.perf_counter()
        await asyncio.to_thread(args.export_path.mkdir, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *args.argv(self._archiver, model_id), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await process.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            # The archiver ends with a traceback; its last line is the message.
            last = (output.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
            raise ModelLoadFailed(
                f"torch-model-archiver could not archive model {model_id} (exit {process.returncode}): {last}"
            )
        log.info("archived %s with torch-model-archiver in %.2fs", model_id, time.perf_counter() - started)

    async def _serves_oip(self, deadline: float) -> bool:
        """Whether the gRPC port serves TorchServe's KServe v2 service; waits for the port to answer at all."""
        async with grpc.aio.insecure_channel(self.data_endpoint) as channel:
            server_live = channel.unary_unary(f"/{OIP_SERVICE}/ServerLive")
            while True:
                try:
                    await server_live(b"", timeout=5.0)
                    return True
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                        return False
                    if time.monotonic() > deadline:
                        raise Unavailable(
                            f"TorchServe's gRPC inference port {self.data_endpoint} did not answer: {exc.details()}"
                        ) from exc
                await asyncio.sleep(0.2)

    def _log_lines(self, start: int, model_id: str) -> str:
        """The model's worker output since `start` (a launched server's log), for a failed registration: TorchServe
        answers only "Failed to start workers", and the handler's traceback is in the log."""
        worker = f"-{model_id}_"  # TorchServe's worker threads are named W-<port>-<model>_<version>
        marker = "MODEL_LOG - "
        lines = [line.split(marker, 1)[1] for line in self._log_since(start) if worker in line and marker in line]
        return "".join(f"\n  log: {line}" for line in _first_traceback(lines)[-LOG_LINES_QUOTED:])

    def _log_path(self) -> Path | None:
        return self._launched.process.log_path if self._launched else None


def _first_traceback(lines: list[str]) -> list[str]:
    """The first Python traceback among log lines (the handler's own error; the worker's death follows it), or
    all the lines when there is none."""
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:
        return lines
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith((" ", "\t"))), len(lines) - 1)
    return [line for line in lines[start : end + 1] if line.strip(" ^~")]


def _resident_bytes(pids: list[int]) -> int:
    """Resident memory of processes of this machine (/proc/<pid>/statm), skipping any that are gone."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def _error_text(response: httpx.Response) -> str:
    """TorchServe's error body is {"code", "type", "message"}."""
    try:
        body = response.json()
        return f"HTTP {response.status_code} {body['type']}: {str(body['message']).strip()}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.text[:500]}"
