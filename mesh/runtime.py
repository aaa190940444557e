"""The client side of the runtime SPI, and the byte-level channel requests are forwarded on."""

from __future__ import annotations

import grpc

from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.placement.records import Footprint, ModelRecord
from mesh.tls import ClientTLS

PROBE_METHOD = "/mesh.RuntimeProbe/Answer"


def _identity(data: bytes) -> bytes:
    return data


def _channel(endpoint: str, max_message_bytes: int, tls: ClientTLS | None) -> grpc.aio.Channel:
    if tls is not None:
        return grpc.aio.secure_channel(endpoint, tls.grpc_credentials(), options=_options(max_message_bytes))
    return grpc.aio.insecure_channel(endpoint, options=_options(max_message_bytes))


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Runtimes are local: don't let a down runtime hold requests in reconnect backoff for long.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class RuntimeClient:
    """One runtime instance: its SPI stub and a cache of raw pass-through method callables."""

    def __init__(
        self,
        instance_id: str,
        endpoint: str,
        max_message_bytes: int = 64 * 1024 * 1024,
        data_endpoint: str = "",
        tls: ClientTLS | None = None,
    ) -> None:
        """data_endpoint: where forwarded requests go when not to `endpoint` (an adapter's model server);
        tls: dial both over TLS with these files (None: plaintext)."""
        self.instance_id = instance_id
        self.endpoint = endpoint
        self.data_endpoint = data_endpoint
        self.tls_generation = tls.generation() if tls is not None else ()
        self._channel = _channel(endpoint, max_message_bytes, tls)
        self._data_channel = _channel(data_endpoint, max_message_bytes, tls) if data_endpoint else self._channel
        self._spi = rt_grpc.ModelRuntimeStub(self._channel)
        self._methods: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._streams: dict[str, grpc.aio.StreamStreamMultiCallable] = {}

    def method(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A callable that sends and receives raw message bytes: the proxy never re-encodes a request."""
        call = self._methods.get(path)
        if call is None:
            call = self._data_channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
            self._methods[path] = call
        return call

    def stream(self, path: str) -> grpc.aio.StreamStreamMultiCallable:
        """A raw-bytes callable for a streamed method (any cardinality: unary and server-streaming calls are
        streams of one message on the wire)."""
        call = self._streams.get(path)
        if call is None:
            call = self._data_channel.stream_stream(path, request_serializer=_identity, response_deserializer=_identity)
            self._streams[path] = call
        return call

    async def answers(self, timeout: float) -> bool:
        """Whether the server forwarded requests go to answers a call now (a dead process does not; one that
        answered UNAVAILABLE itself does). The call names a method no server has: its UNIMPLEMENTED is the answer.
        A real call, not the channel's state, which still says READY for a moment after the server died."""
        probe = self._data_channel.unary_unary(
            PROBE_METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            await probe(b"", timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return True

    def cannot_connect(self) -> bool:
        """True while a channel fails to connect; asking starts an idle channel connecting, for the next ask."""
        return any(
            channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            for channel in {self._channel, self._data_channel}
        )

    async def status(self, timeout: float) -> rt.RuntimeStatusResponse:
        return await self._spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=timeout, wait_for_ready=True)

    async def predict_size(self, model: ModelRecord, timeout: float) -> Footprint:
        request = rt.PredictModelSizeRequest(
            modelId=model.model_id, modelType=model.model_type, modelPath=model.path, modelKey=model.key
        )
        predicted = await self._spi.predictModelSize(request, timeout=timeout)
        return Footprint(predicted.sizeInBytes, predicted.meshDeviceSizeInBytes)

    async def load(self, model: ModelRecord, timeout: float) -> Footprint:
        """Load and return the memory the copy holds (asking modelSize when the load response says 0)."""
        request = rt.LoadModelRequest(
            modelId=model.model_id, modelType=model.model_type, modelPath=model.path, modelKey=model.key
        )
        loaded = await self._spi.loadModel(request, timeout=timeout)
        if loaded.sizeInBytes:
            return Footprint(loaded.sizeInBytes, loaded.meshDeviceSizeInBytes)
        measured = await self._spi.modelSize(rt.ModelSizeRequest(modelId=model.model_id), timeout=30)
        return Footprint(measured.sizeInBytes, measured.meshDeviceSizeInBytes or loaded.meshDeviceSizeInBytes)

    async def unload(self, model_id: str, timeout: float = 30) -> None:
        await self._spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()
        if self._data_channel is not self._channel:
            await self._data_channel.close()
