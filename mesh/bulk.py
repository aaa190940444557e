"""Registering and unregistering many models at once from a YAML file, through the management API.

The file is a list of models, or a mapping with a `models:` list (the form of examples/models.yaml):

    models:
      - id: fraud-v3            # required
        type: sklearn           # required (`format` is accepted as another name for it)
        path: fraud-v3.joblib   # relative paths are resolved against the file's folder (or path_root)
        key: ""                 # optional, passed to the runtime as is

The models already registered are listed once (meshadmin.ListModels), so an id registered with the same spec
costs no call and counts as already present; every other entry is one registerModel call, `concurrency` at a
time on one grpc.aio channel. The server decides what is a conflict: a different spec under a registered id is
its ALREADY_EXISTS, reported with the server's message.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.management import management_channel_aio
from mesh.tls import ClientTLS

DEFAULT_CONCURRENCY = 64
# Retried with a short backoff: the router or its store blinked. Registration is idempotent, so a retry is safe.
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE})
ATTEMPTS = 3
RETRY_BACKOFF_S = 0.25
FIELDS = {"id", "type", "format", "path", "key"}


# A listing of many thousands of models exceeds grpc's default 4 MiB receive limit.
class SpecError(ValueError):
    """The models file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model_id: str
    model_type: str
    path: str = ""
    key: str = ""

    def info(self) -> mm.ModelInfo:
        return mm.ModelInfo(type=self.model_type, path=self.path, key=self.key)


@dataclass(frozen=True, slots=True)
class Failure:
    model_id: str
    code: str
    message: str


@dataclass
class BulkResult:
    """What a bulk call did: `done` (registered, or unregistered), `unchanged` (already so), `failed`."""

    done: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.done) + len(self.unchanged) + len(self.failed)

    def failures_by_code(self) -> dict[str, list[Failure]]:
        grouped: defaultdict[str, list[Failure]] = defaultdict(list)
        for failure in self.failed:
            grouped[failure.code].append(failure)
        return dict(sorted(grouped.items(), key=lambda item: -len(item[1])))


Progress = Callable[[int, int], None]


# ---- the file ------------------------------------------------------------------------------------------


def read_specs(path: Path, path_root: Path | None = None) -> list[ModelSpec]:
    """The models a file lists, with relative paths resolved against path_root (default: the file's folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read it: {exc}") from exc
    try:
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(document, dict) and set(document) == {"models"}:
        document = document["models"]
    if not isinstance(document, list):
        raise SpecError(f"{path}: expected a list of models, or a mapping with one key `models:` holding that list")
    root = (path_root or path.resolve().parent).resolve()
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(document, start=1):
        spec = _spec(entry, f"{path}: entry {number}", root)
        if spec.model_id in seen:
            raise SpecError(f"{path}: entry {number} repeats id '{spec.model_id}' of entry {seen[spec.model_id]}")
        seen[spec.model_id] = number
        specs.append(spec)
    return specs


def _spec(entry: Any, where: str, root: Path) -> ModelSpec:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected a mapping with id, type, path (and key), got {entry!r}")
    model_id = entry.get("id")
    if model_id is not None:
        where = f"{where} (id '{model_id}')"
    unknown = sorted(str(k) for k in set(entry) - FIELDS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are id, type, path, key")
    if "type" in entry and "format" in entry:
        raise SpecError(f"{where}: give `type` or `format`, not both")
    values = {name: entry.get(name) for name in ("id", "path", "key")}
    values["type"] = entry.get("type", entry.get("format"))
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            # YAML reads 0123 as a number and yes as a boolean: the text the author meant is lost, so say so.
            raise SpecError(f"{where}: `{name}` must be a string (quote it), got {value!r}")
    for name in ("id", "type"):
        if not values[name]:
            raise SpecError(f"{where}: `{name}` is missing")
    return ModelSpec(values["id"], values["type"], resolve_path(values["path"] or "", root), values["key"] or "")


def resolve_path(path: str, root: Path) -> str:
    """A local path made absolute against root, as the runtimes need it; URIs (s3://...) are left alone."""
    if not path or "://" in path:
        return path
    return str((root / Path(path).expanduser()).resolve())


# ---- the calls -----------------------------------------------------------------------------------------


async def register_all(
    address: str,
    specs: list[ModelSpec],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = 30.0,
    progress: Progress | None = None,
    tls: ClientTLS | None = None,
) -> BulkResult:
    """Register every spec not registered yet; idempotent, so a second run changes nothing."""
    started = time.perf_counter()
    result = BulkResult()
    async with management_channel_aio(address, tls) as channel:
        registered = await _registered(channel, timeout)
        todo: list[ModelSpec] = []
        for spec in specs:
            present = registered.get(spec.model_id)
            if present is not None and (present.type, present.path, present.key) == (
                spec.model_type,
                spec.path,
                spec.key,
            ):
                result.unchanged.append(spec.model_id)
            else:
                todo.append(spec)  # new, or a conflict the server will name
        stub = mm_grpc.ModelMeshStub(channel)

        async def register(spec: ModelSpec) -> None:
            request = mm.RegisterModelRequest(modelId=spec.model_id, modelInfo=spec.info())
            await stub.registerModel(request, timeout=timeout)

        await _run(todo, register, result, concurrency, progress, len(specs))
    result.seconds = time.perf_counter() - started
    return result


async def unregister_all(
    address: str,
    specs: list[ModelSpec],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = 30.0,
    progress: Progress | None = None,
    tls: ClientTLS | None = None,
) -> BulkResult:
    """Unregister every listed id that is registered (whatever its spec); ids not registered are unchanged."""
    started = time.perf_counter()
    result = BulkResult()
    async with management_channel_aio(address, tls) as channel:
        registered = await _registered(channel, timeout)
        todo = [spec for spec in specs if spec.model_id in registered]
        result.unchanged.extend(spec.model_id for spec in specs if spec.model_id not in registered)
        stub = mm_grpc.ModelMeshStub(channel)

        async def unregister(spec: ModelSpec) -> None:
            await stub.unregisterModel(mm.UnregisterModelRequest(modelId=spec.model_id), timeout=timeout)

        await _run(todo, unregister, result, concurrency, progress, len(specs))
    result.seconds = time.perf_counter() - started
    return result


async def _registered(channel: grpc.aio.Channel, timeout: float) -> dict[str, mm.ModelInfo]:
    listing = await admin_grpc.MeshAdminStub(channel).ListModels(admin.ListModelsRequest(), timeout=timeout)
    return {m.modelId: m.modelInfo for m in listing.models}


async def _run(
    specs: Iterable[ModelSpec],
    call: Callable[[ModelSpec], Any],
    result: BulkResult,
    concurrency: int,
    progress: Progress | None,
    total: int,
) -> None:
    """`concurrency` workers share one iterator, so no more than that many calls (or tasks) exist at once."""
    pending = iter(specs)

    async def worker() -> None:
        for spec in pending:
            failure = await _attempt(call, spec)
            if failure is None:
                result.done.append(spec.model_id)
            else:
                result.failed.append(failure)
            if progress is not None:
                progress(result.total, total)

    if progress is not None:
        progress(result.total, total)
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def _attempt(call: Callable[[ModelSpec], Any], spec: ModelSpec) -> Failure | None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await call(spec)
            return None
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRIED and attempt < ATTEMPTS:
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                continue
            return Failure(spec.model_id, exc.code().name, exc.details() or "")
    raise AssertionError("unreachable: the last attempt returns")
