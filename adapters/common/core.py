"""The adapter core: the SPI's operations over a puller and a model server, transport-agnostic.

A load is pull → server load, once per model id however many callers ask, bounded by the loading
concurrency and the load timeout; a failed, timed-out or cancelled load leaves nothing behind (files
removed, server told to unload), as the SPI contract requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from adapters.common import devices
from adapters.common.errors import ModelNotLoaded
from adapters.common.model_server import ModelServer
from adapters.common.settings import AdapterSettings
from adapters.puller import Puller
from mesh.errors import DeadlineExceeded, InvalidArgument
from mesh.gen import model_runtime_pb2 as rt
from mesh.single_flight import SingleFlight

log = logging.getLogger(__name__)


def disk_size(path: Path) -> int:
    """Bytes in a file, or in every file under a folder (symlinks not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(folder, name)).st_size for name in files)
    return total


class AdapterCore:
    """Loaded models and their sizes, loads in flight, and the five SPI operations."""

    def __init__(self, settings: AdapterSettings, server: ModelServer, puller: Puller) -> None:
        self._settings = settings
        self._server = server
        self._puller = puller
        self._sizes: dict[str, int] = {}
        self._loading: SingleFlight[str, int] = SingleFlight("load")
        self._load_slots = asyncio.Semaphore(settings.max_loading_concurrency)

    def estimate(self, disk_bytes: int) -> int:
        """The documented estimate when the server reports no memory: bytes on disk × the size multiplier."""
        if disk_bytes <= 0:
            return self._settings.default_model_size_bytes
        return int(disk_bytes * self._settings.size_multiplier)

    async def load(self, model_id: str, model_type: str, model_path: str, model_key: str) -> int:
        """Load (once, however many callers ask) and return the model's size in bytes."""
        if not model_id:
            raise InvalidArgument("modelId is empty")
        self._server.check_model_id(model_id)
        if (size := self._sizes.get(model_id)) is not None:
            return size
        return await self._loading.run(model_id, self._load, model_id, model_type, model_path, model_key)

    async def _load(self, model_id: str, model_type: str, model_path: str, model_key: str) -> int:
        timeout_s = self._settings.load_timeout_ms / 1000
        async with self._load_slots:
            try:
                async with asyncio.timeout(timeout_s):
                    pulled = await self._puller.pull(model_id, model_path, model_key)
                    kind = model_type or pulled.model_type or ""
                    log.info("loading %s (type %s, %d bytes on disk)", model_id, kind, pulled.disk_size_bytes)
                    reported = await self._server.load(model_id, kind, pulled)
            except BaseException as exc:
                await self._undo(model_id)
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded(f"loading model {model_id} took over {timeout_s:.0f}s") from exc
                raise
        size = reported or self.estimate(pulled.disk_size_bytes)
        self._sizes[model_id] = size
        log.info("loaded %s (%d bytes%s)", model_id, size, "" if reported else ", estimated from disk")
        return size

    async def _undo(self, model_id: str) -> None:
        """Leave nothing of a load that did not finish: the server may hold half of it, the files are there."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._server.unload(model_id))
        await asyncio.to_thread(self._puller.remove, model_id)

    async def unload(self, model_id: str) -> None:
        """Unload (cancelling a load in flight); unknown models are fine: the router may unload twice."""
        task = self._loading.cancel(model_id)
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
        self._sizes.pop(model_id, None)
        await self._server.unload(model_id)
        await asyncio.to_thread(self._puller.remove, model_id)
        log.info("unloaded %s", model_id)

    def predict_size(self, model_path: str) -> int:
        """Must answer at once: the bytes of a local model on disk × the multiplier, else the default size."""
        path = Path(model_path.removeprefix("file://")) if model_path else None
        if path is not None and path.is_absolute() and path.exists():
            return self.estimate(disk_size(path))
        return self._settings.default_model_size_bytes

    async def model_size(self, model_id: str) -> int:
        if model_id not in self._sizes:
            raise ModelNotLoaded(model_id)
        reported = await self._server.size(model_id)
        if reported:
            self._sizes[model_id] = reported
        return self._sizes[model_id]

    async def purge(self) -> None:
        """Nothing loaded, no files: what the router assumes once runtimeStatus says READY."""
        await self._loading.cancel_all()
        self._sizes.clear()
        await self._server.unload_all()
        await asyncio.to_thread(self._puller.purge)

    def status(self) -> rt.RuntimeStatusResponse:
        s, server = self._settings, self._server
        return rt.RuntimeStatusResponse(
            status=rt.RuntimeStatusResponse.READY,
            capacityInBytes=s.capacity_bytes,
            maxLoadingConcurrency=s.max_loading_concurrency,
            modelLoadingTimeoutMs=s.load_timeout_ms,
            defaultModelSizeInBytes=s.default_model_size_bytes,
            runtimeVersion=server.runtime_version,
            methodInfos={m: rt.RuntimeStatusResponse.MethodInfo(idInjectionPath=p) for m, p in server.methods.items()},
            meshDataEndpoint=s.advertise_data or server.data_endpoint,
            meshModelTypes=server.model_types,
            meshLabels=s.labels,
            meshDevices=self._devices(),
        )

    def _devices(self) -> list[rt.DeviceMemory]:
        """The capacities it was told, else the GPUs the model server can use, as nvidia-smi reports them."""
        if self._settings.device_capacity_bytes:
            return [rt.DeviceMemory(capacityInBytes=c) for c in self._settings.device_capacity_bytes]
        return [rt.DeviceMemory(capacityInBytes=d.capacity_bytes, usedInBytes=d.used_bytes) for d in devices.detect()]
