"""The runtime's transport-agnostic core: which models are loaded, loading them, and running inference.

Capacity is reported, not enforced: the router accounts sizes against capacity and decides what to evict, so
this process loads whatever it is asked to (even a model bigger than its capacity).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from adapters.builtin.metrics import RuntimeMetrics
from adapters.builtin.models import Model, ModelType, model_type
from adapters.builtin.settings import RuntimeSettings
from adapters.common.errors import ModelNotLoaded, OutOfMemory
from mesh.codec import inputs_to_numpy, numpy_to_response
from mesh.errors import DeadlineExceeded, InvalidArgument, MeshError, ModelLoadFailed, Unavailable
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.single_flight import SingleFlight

log = logging.getLogger(__name__)


def _load_blocking(kind: ModelType, model_path: str) -> Model:
    """Runs in a worker thread: whatever a broken model file raises becomes one ModelLoadFailed."""
    try:
        return kind.load(model_path)
    except MeshError:
        raise
    except Exception as exc:  # a model file can fail in any way unpickling or parsing can; none may escape
        raise ModelLoadFailed(
            f"failed to load {kind.name} model from {model_path}: {type(exc).__name__}: {exc}"
        ) from exc


class BuiltinRuntime:
    """Loaded models by id, loads in flight, and the operations the two gRPC services expose."""

    def __init__(self, settings: RuntimeSettings, metrics: RuntimeMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics or RuntimeMetrics()
        self._models: dict[str, Model] = {}
        self._model_types: dict[str, str] = {}  # model id → its modelType, the metrics' label
        # One task per model id being loaded: concurrent loadModel calls for the same id share it, and
        # unloadModel cancels it so a load the router gave up on never lands.
        self._loading: SingleFlight[str, Model] = SingleFlight("load")
        self._load_slots = asyncio.Semaphore(settings.max_loading_concurrency)

    async def load(self, model_id: str, type_name: str, model_path: str) -> Model:
        """Loads the model (once, however many callers ask) and returns it (its measured sizes with it)."""
        if not model_id:
            raise InvalidArgument("modelId is empty")
        kind = model_type(type_name)
        if (model := self._models.get(model_id)) is not None:
            return model
        try:
            # A caller that goes away does not stop a load others may be waiting on; the router follows a cancelled
            # loadModel with unloadModel, which cancels the load itself.
            return await self._loading.run(model_id, self._load, model_id, kind, model_path)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and not current.cancelling():
                raise Unavailable(f"loading model {model_id} was cancelled by unloadModel") from None
            raise

    async def _load(self, model_id: str, kind: ModelType, model_path: str) -> Model:
        async with self._load_slots:
            start = time.perf_counter()
            try:
                # On timeout the worker thread runs on to completion, but its model is dropped.
                async with asyncio.timeout(self._settings.load_timeout_ms / 1000):
                    model = await asyncio.to_thread(_load_blocking, kind, model_path)
            except TimeoutError:
                self._metrics.load_failed(kind.name)
                log.warning("load of model %s timed out after %d ms", model_id, self._settings.load_timeout_ms)
                raise DeadlineExceeded(
                    f"loading model {model_id} took longer than {self._settings.load_timeout_ms} ms"
                ) from None
            except MeshError as exc:
                self._metrics.load_failed(kind.name)
                elapsed_ms = (time.perf_counter() - start) * 1000
                log.warning("load of model %s failed after %.1f ms: %s", model_id, elapsed_ms, exc.message)
                raise
        limit = self._settings.memory_limit_bytes
        held = sum(m.size_bytes for m in self._models.values())
        if limit and held + model.size_bytes > limit:
            self._metrics.load_failed(kind.name)
            log.warning("model %s (%d bytes) does not fit: %d of %d held", model_id, model.size_bytes, held, limit)
            raise OutOfMemory(
                f"model {model_id} needs {model.size_bytes} bytes; this runtime holds {held} of its {limit}-byte limit"
            )
        self._check_device_memory(model_id, kind.name, model)
        self._models[model_id] = model
        self._model_types[model_id] = kind.name
        self._metrics.loaded(kind.name, start, model.size_bytes)
        elapsed_ms = (time.perf_counter() - start) * 1000
        log.info("loaded model %s (type %s, %d bytes) in %.1f ms", model_id, kind.name, model.size_bytes, elapsed_ms)
        return model

    def _check_device_memory(self, model_id: str, kind: str, model: Model) -> None:
        """OutOfMemory when the model's (simulated) accelerator memory does not fit beside the others'."""
        devices = self._settings.device_capacity_bytes
        held = sum(m.device_bytes for m in self._models.values())
        if model.device_bytes and held + model.device_bytes > sum(devices):
            self._metrics.load_failed(kind)
            raise OutOfMemory(
                f"model {model_id} needs {model.device_bytes} bytes of accelerator memory; this runtime holds "
                f"{held} of its {sum(devices)}"
            )

    def device_used_bytes(self) -> int:
        return sum(m.device_bytes for m in self._models.values())

    def unload(self, model_id: str) -> None:
        """Drops the model, cancelling its load if one is in flight; an unknown id is not an error."""
        task = self._loading.cancel(model_id)
        if task is not None:
            log.info("cancelled the load of model %s", model_id)
        model = self._models.pop(model_id, None)
        if model is not None:
            self._metrics.unloaded(self._model_types.pop(model_id, ""), model.size_bytes)
            size, start = model.size_bytes, time.perf_counter()
            # The last reference unless a predict is still running: the model's memory is freed here.
            del model
            elapsed_ms = (time.perf_counter() - start) * 1000
            log.info("unloaded model %s (%d bytes) in %.1f ms", model_id, size, elapsed_ms)
        elif task is None:
            log.info("unload of model %s: not loaded", model_id)

    def purge(self) -> None:
        """Unloads everything: the router's view of this instance starts empty."""
        ids = list(dict.fromkeys([*self._loading.keys(), *self._models]))
        for model_id in ids:
            self.unload(model_id)
        if ids:
            log.info("purged %d models", len(ids))

    def predict_size(self, type_name: str, model_path: str) -> tuple[int, int]:
        """A fast, conservative estimate from the file on disk (see each model type's multiplier): host bytes and
        accelerator bytes."""
        kind = model_type(type_name)
        return kind.estimate_size(model_path), kind.estimate_device_size(model_path)

    def model(self, model_id: str) -> Model:
        """The loaded model, or ModelNotLoaded."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotLoaded(model_id)
        return model

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._models

    async def stream(self, request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferResponse]:
        """The responses of a model that streams (ModelStreamInfer), one per piece of its answer."""
        model = self.model(request.model_name)
        pieces = model.stream(inputs_to_numpy(request))  # Unimplemented for a model that does not stream
        async for outputs in pieces:
            yield numpy_to_response(
                request.model_name, outputs, model_version=request.model_version, request_id=request.id
            )

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Decodes the inputs, runs the model's predict, encodes its outputs; each stage is timed."""
        model = self.model(request.model_name)
        timers = self._metrics.stages(self._model_types[request.model_name])
        started = time.perf_counter()
        inputs = inputs_to_numpy(request)
        requested = [output.name for output in request.outputs]
        decoded = time.perf_counter()
        timers.preprocess.observe((decoded - started) * 1000)
        if model.offload_predict:
            outputs = await asyncio.to_thread(model.predict, inputs, requested)
        else:
            outputs = model.predict(inputs, requested)
        predicted = time.perf_counter()
        timers.predict.observe((predicted - decoded) * 1000)
        response = numpy_to_response(
            request.model_name, outputs, model_version=request.model_version, request_id=request.id
        )
        timers.postprocess.observe((time.perf_counter() - predicted) * 1000)
        return response
