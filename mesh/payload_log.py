"""Payload logging: the requests and responses of chosen models, sent to sinks for drift monitoring and audits,
without ever slowing or blocking the requests themselves.

`MESH_PAYLOAD_LOG` names the sinks, separated by spaces; each is a URI whose query says which payloads it takes:

    http://collector:8080/events?models=fraud,churn&sample=0.1&headers=x-request-id,x-tenant
    file:///var/log/mesh/payloads.jsonl?models=fraud

- `http(s)://...`: each payload POSTed as a CloudEvent in binary mode, as KServe's payload logger sends them
  (ce-type `org.kubeflow.serving.inference.request` / `.response`, the same ce-id for both, the model in
  ce-inferenceservicename); the body is the v2 JSON of the tensors (KServe's REST form, converted here from gRPC).
- `file://PATH`: one JSON object per line (the CloudEvent attributes and the `data`), appended.
- `models=` the model ids or names asked for (a vmodel, a namespace's bare name) it takes; none: every model.
  `sample=` the share of requests taken (0 to 1, default 1). `headers=` request headers copied into the event.

Only what can be taken without waiting is taken: a request's payloads go into a bounded queue per sink
(QUEUE_LIMIT payloads and QUEUE_BYTES bytes); a full queue drops them, counted in
`modelmesh_payload_log_dropped_total{sink, reason}`, and a sink that fails or does not answer within
SEND_TIMEOUT_S has that payload dropped too. Conversion to JSON and sending happen in each sink's own task.
Requests the native data plane serves itself are not logged (they do not reach Python).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
from google.protobuf.message import DecodeError

from mesh import codec
from mesh.errors import InvalidArgument, MeshError
from mesh.gen import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
QUEUE_BYTES = 64 * 1024 * 1024
SEND_TIMEOUT_S = 2.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


@dataclass(frozen=True)
class Payload:
    """One request and its response, as the data plane forwarded them (bytes, converted later)."""

    method: str
    asked: str
    model_id: str
    instance_id: str
    request: bytes
    response: bytes
    headers: dict[str, str]


@dataclass
class SinkSpec:
    uri: str
    models: frozenset[str] = frozenset()
    sample: float = 1.0
    headers: tuple[str, ...] = ()

    def takes(self, asked: str, model_id: str) -> bool:
        if self.models and asked not in self.models and model_id not in self.models:
            return False
        return self.sample >= 1.0 or random.random() < self.sample  # noqa: S311 - sampling, not security


def through_mesh(specs: Sequence[SinkSpec]) -> Callable[[str], bool]:
    """The names (model ids, vmodel names) whose requests a native data plane must send through mesh, so that their
    payloads are logged: those a sink takes (every one, when a sink takes all models)."""
    if not specs:
        return lambda name: False
    if any(not spec.models for spec in specs):
        return lambda name: True
    return frozenset().union(*(spec.models for spec in specs)).__contains__


def parse_sinks(text: str) -> list[SinkSpec]:
    """The sinks of MESH_PAYLOAD_LOG; InvalidArgument says which is wrong and why."""
    return [_parse_sink(item) for item in text.split()]


def _parse_sink(uri: str) -> SinkSpec:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file"):
        raise InvalidArgument(f"payload log sink {uri!r}: the scheme must be http, https or file")
    if parts.scheme == "file" and not parts.path:
        raise InvalidArgument(f"payload log sink {uri!r}: a file sink needs a path (file:///var/log/payloads.jsonl)")
    query = {k: ",".join(v) for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"models", "sample", "headers"}
    if unknown:
        raise InvalidArgument(f"payload log sink {uri!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    try:
        sample = float(query.get("sample", "1"))
    except ValueError:
        raise InvalidArgument(f"payload log sink {uri!r}: sample must be a number from 0 to 1") from None
    if not 0 <= sample <= 1:
        raise InvalidArgument(f"payload log sink {uri!r}: sample must be from 0 to 1, got {sample:g}")
    target = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return SinkSpec(
        target,
        frozenset(m for m in query.get("models", "").split(",") if m),
        sample,
        tuple(h.lower() for h in query.get("headers", "").split(",") if h),
    )


@dataclass
class _Sink:
    spec: SinkSpec
    queue: asyncio.Queue[Payload] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0
    task: asyncio.Task[None] | None = None


class PayloadLog:
    def __init__(self, specs: Sequence[SinkSpec], count_dropped: Any = None, router_id: str = "mesh") -> None:
        self._sinks = [_Sink(spec) for spec in specs]
        self._count_dropped = count_dropped or (lambda sink, reason: None)
        self._source = f"mesh://{router_id}/"
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def start(self) -> None:
        if any(s.spec.uri.startswith("http") for s in self._sinks):
            self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S, trust_env=False)
        for sink in self._sinks:
            sink.task = asyncio.create_task(self._drain(sink), name=f"payload-log {sink.spec.uri}")

    async def stop(self) -> None:
        """Deliver what is queued (for at most SEND_TIMEOUT_S), then stop."""
        queued = [s.queue.join() for s in self._sinks if s.task is not None]
        if queued:
            await asyncio.wait([asyncio.ensure_future(q) for q in queued], timeout=SEND_TIMEOUT_S)
        for sink in self._sinks:
            if sink.task is not None:
                sink.task.cancel()
        await asyncio.gather(*(s.task for s in self._sinks if s.task is not None), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def pending(self) -> int:
        return sum(s.queue.qsize() for s in self._sinks)

    def offer(self, payload_of: Any, asked: str, model_id: str) -> None:
        """Queue the payload for every sink that takes it (payload_of() builds it, only if one does)."""
        payload: Payload | None = None
        for sink in self._sinks:
            if not sink.spec.takes(asked, model_id):
                continue
            payload = payload or payload_of()
            size = len(payload.request) + len(payload.response)
            if sink.queue.qsize() >= QUEUE_LIMIT or sink.queued_bytes + size > QUEUE_BYTES:
                self._count_dropped(sink.spec.uri, "queue_full")
                continue
            sink.queued_bytes += size
            sink.queue.put_nowait(payload)

    async def _drain(self, sink: _Sink) -> None:
        while True:
            payload = await sink.queue.get()
            sink.queued_bytes -= len(payload.request) + len(payload.response)
            try:
                await self._send(sink.spec, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sink's failure drops its payload, never the data plane
                self._count_dropped(sink.spec.uri, "send_failed")
                log.debug("payload for %s not sent to %s: %s", payload.model_id, sink.spec.uri, exc)
            finally:
                sink.queue.task_done()

    async def _send(self, spec: SinkSpec, payload: Payload) -> None:
        events = self._events(spec, payload)
        if spec.uri.startswith("file:"):
            lines = "".join(json.dumps({**attrs, "data": data}) + "\n" for attrs, data in events)
            await asyncio.to_thread(_append, Path(urlsplit(spec.uri).path), lines)
            return
        assert self._client is not None
        for attrs, data in events:
            headers = {f"ce-{k}": str(v) for k, v in attrs.items()} | {"content-type": "application/json"}
            response = await self._client.post(spec.uri, content=json.dumps(data), headers=headers)
            response.raise_for_status()

    def _events(self, spec: SinkSpec, payload: Payload) -> list[tuple[dict[str, Any], Any]]:
        """(CloudEvent attributes, data) for the request and the response."""
        request_data, response_data = _as_json(payload)
        event_id = (request_data.get("id") if isinstance(request_data, dict) else "") or str(uuid.uuid4())
        base = {
            "specversion": "1.0",
            "id": event_id,
            "source": self._source,
            "inferenceservicename": payload.asked,
            "modelid": payload.model_id,
            "instance": payload.instance_id,
            "endpoint": payload.method,
        }
        headers = {f"header-{h}": payload.headers[h] for h in spec.headers if h in payload.headers}
        return [
            ({**base, "type": REQUEST_TYPE, **headers}, request_data),
            ({**base, "type": RESPONSE_TYPE}, response_data),
        ]


def _as_json(payload: Payload) -> tuple[Any, Any]:
    """The payload's request and response as v2 JSON (ModelInfer), else as base64 of their bytes."""
    if payload.method == MODEL_INFER:
        try:
            request = codec.infer_request_to_json(pb.ModelInferRequest.FromString(payload.request))
            response, _ = codec.infer_response_to_json(
                pb.ModelInferResponse.FromString(payload.response), codec.OutputEncoding(binary_default=False)
            )
            return request, response
        except (MeshError, DecodeError) as exc:
            log.debug("payload of %s kept as bytes: %s", payload.model_id, exc)
    return (
        {"base64": base64.b64encode(payload.request).decode("ascii")},
        {"base64": base64.b64encode(payload.response).decode("ascii")},
    )


def _append(path: Path, lines: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(lines)
