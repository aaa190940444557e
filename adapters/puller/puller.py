"""The puller: one folder per model under a root, filled from local storage or S3 and swapped in whole.

A pull writes into a fresh staging folder ('.pull-*' under the root) and renames it into place only when every
file has arrived, so a runtime never sees half a model, a failed pull leaves the previous files alone, and a
second pull of the same id replaces the first in one step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.puller import azure_blob, gcs, http, local, s3
from adapters.puller.destination import Destination
from adapters.puller.names import is_inside, model_dir_name, relative_parts
from adapters.puller.storage import (
    AzureLocation,
    GcsLocation,
    HttpLocation,
    Location,
    S3Location,
    parse_model_key,
    redacted,
    resolve_location,
)
from mesh.errors import InvalidArgument, MeshError, ModelLoadFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PulledModel:
    model_id: str
    directory: Path  # the model's own folder under the puller root
    path: Path  # the file or folder inside `directory` named after model_path's last component
    disk_size_bytes: int  # total bytes of the pulled files
    model_type: str | None  # the model key's model_type.name, when given
    predictor: str | None = None  # the model key's predictor, when given (a KServe transformer's)


class Puller:
    """Pulls models into per-model folders under `root`; see docs/runtimes/puller.md for sources and safety rules."""

    def __init__(
        self,
        root: Path,
        storage_config_dir: Path | None = None,
        local_roots: Sequence[Path] = (),
        max_bytes: int = http.MAX_BYTES,
    ) -> None:
        """max_bytes: the most one http(s) pull downloads, and unpacks from an archive."""
        self._root = Path(root).resolve()
        self._max_bytes = max_bytes
        self._storage_config_dir = storage_config_dir
        self._local_roots = tuple(Path(r).resolve() for r in local_roots)
        self._s3_clients = s3.S3Clients()
        # Guards the rename that installs or discards a model folder, and the stop flags of pulls in flight.
        self._lock = threading.Lock()
        self._in_flight: dict[str, set[threading.Event]] = {}

    async def pull(self, model_id: str, model_path: str, model_key: str = "") -> PulledModel:
        """Fetches the model into its folder, replacing any previous pull of the same id."""
        stop = threading.Event()
        with self._lock:
            self._in_flight.setdefault(model_id, set()).add(stop)
        start = time.perf_counter()
        try:
            pulled = await asyncio.to_thread(self._pull_blocking, model_id, model_path, model_key, stop)
        except asyncio.CancelledError:
            stop.set()  # the worker thread can't be interrupted; it stops at its next file and installs nothing
            raise
        except MeshError as exc:
            log.warning("pull of model %s from %s failed: %s", model_id, redacted(model_path), exc.message)
            raise
        finally:
            with self._lock:
                flags = self._in_flight.get(model_id, set())
                flags.discard(stop)
                if not flags:
                    self._in_flight.pop(model_id, None)
        log.info(
            "pulled model %s from %s: %d bytes in %.2fs",
            model_id,
            redacted(model_path),
            pulled.disk_size_bytes,
            time.perf_counter() - start,
        )
        return pulled

    def remove(self, model_id: str) -> None:
        """Deletes the model's folder (nothing to do when absent) and stops any pull of it still in flight."""
        directory = self._model_dir(model_id)
        with self._lock:
            for stop in self._in_flight.get(model_id, ()):
                stop.set()
            doomed = self._set_aside(directory)
        if doomed is not None:
            shutil.rmtree(doomed, ignore_errors=True)
            log.info("removed the files of model %s", model_id)

    def purge(self) -> None:
        """Deletes everything under the root: used when a runtime starts with nothing loaded."""
        with self._lock:
            for flags in self._in_flight.values():
                for stop in flags:
                    stop.set()
        if not self._root.is_dir():
            return
        for entry in self._root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        log.info("purged the puller root %s", self._root)

    def _model_dir(self, model_id: str) -> Path:
        directory = self._root / model_dir_name(model_id)
        if directory.parent != self._root or not is_inside(directory, self._root) or directory == self._root:
            raise InvalidArgument(f"model id {model_id!r} does not name a folder inside {self._root}")
        return directory

    def _pull_blocking(self, model_id: str, model_path: str, model_key: str, stop: threading.Event) -> PulledModel:
        directory = self._model_dir(model_id)
        key = parse_model_key(model_key)
        location = resolve_location(model_path, key, self._storage_config_dir)
        self._root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=self._root))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from a runtime running as another user
            destination = Destination(staging, stop)
            name = _local_name(location)
            self._fetch(location, name, destination)
            self._install(staging, directory, destination)
        except OSError as exc:
            raise ModelLoadFailed(f"writing the files of model {model_id} from {location} failed: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # already gone once installed
        return PulledModel(model_id, directory, directory / name, destination.size_bytes, key.model_type, key.predictor)

    def _fetch(self, location: Location, name: str, destination: Destination) -> None:
        if isinstance(location, S3Location):
            s3.download(self._s3_clients.get(location.settings), location, name, destination)
        elif isinstance(location, GcsLocation):
            gcs.download(location, name, destination)
        elif isinstance(location, AzureLocation):
            azure_blob.download(location, name, destination)
        elif isinstance(location, HttpLocation):
            http.download(location, name, destination, self._max_bytes)
        else:
            source = local.resolve_source(location.path, self._local_roots, self._root)
            local.copy_source(source, name, destination)

    def _install(self, staging: Path, directory: Path, destination: Destination) -> None:
        with self._lock:
            destination.check_stopped()
            previous = self._set_aside(directory)
            os.rename(staging, directory)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def _set_aside(self, directory: Path) -> Path | None:
        """Renames an existing model folder out of the way (caller holds the lock) so it can be deleted unlocked."""
        doomed = self._root / f".old-{uuid.uuid4().hex}"
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            return None
        return doomed


def _local_name(location: Location) -> str:
    """The name the model gets inside its folder: model_path's last component, as upstream names it."""
    if isinstance(location, HttpLocation):
        name = http.local_name(location)
        relative_parts(name, f"model path {location}'s last component")
        return name
    path = location.key if isinstance(location, S3Location | GcsLocation | AzureLocation) else location.path
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name in ("", "."):
        name = "_model"
    relative_parts(name, f"model path {path!r}'s last component")
    return name
