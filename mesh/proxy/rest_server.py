"""The REST front door: KServe v2 / Triton HTTP routes that convert with mesh.codec and call the DataPlane.

Status codes: errors are `{"error": message}` with mesh.errors.http_status of the error's gRPC code, mapped in
one middleware. A model or server that is not ready answers 503 (retryable), as KServe does; Triton answers 400
for a model that is not ready, but a client waiting for a load should retry, and tritonclient's is_*_ready only
checks for 200.

`/mm/{model}/v2/models/{name}/infer` infers `model`, whatever `name` says: the REST form of the gRPC door's
mm-model-id header, for clients that can only be given a base URL. A KServe transformer is one: its predict posts to
`<predictor base URL>/v2/models/<its own name>/infer` (adapters/kserve).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from mesh import codec
from mesh.access_log import AccessNote
from mesh.errors import InvalidArgument, MeshError, Overloaded, Unavailable, http_status
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.metrics import RouterMetrics
from mesh.proxy.dataplane import MODEL_STREAM_INFER, DataPlane, Target
from mesh.proxy.streams import relay
from mesh.tls import ServerTLS

log = logging.getLogger(__name__)

DEFAULT_PORT = 8008
MAX_BODY_BYTES = 64 * 1024 * 1024
HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary-data extension: the JSON part's size

_DATAPLANE = web.AppKey("dataplane", DataPlane)
_METRICS = web.AppKey("metrics", RouterMetrics)
_MAX_BODY = web.AppKey("max_body_bytes", int)

# aiohttp's own errors as the gRPC code that names them in the metrics' code label.
_HTTP_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
UNMATCHED = "REST (unmatched)"

# Headers that describe this HTTP hop, not the request: the gRPC call to the runtime has its own. The rest reach the
# model as gRPC metadata (a KServe-SDK model reads them in its handlers' `headers`), as KServe's REST server passes
# them; mesh's routing headers (mm-*) stay with the router, as on the gRPC door.
_HOP_BY_HOP = frozenset({
    "host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer", "expect", "content-length",
    "content-type", "content-encoding", "accept-encoding", "user-agent", "proxy-authorization", "proxy-connection",
    HEADER_LENGTH.lower(),
})  # fmt: skip
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors_to_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become HTTP: MeshError by its code, aiohttp's own (404, 405, 413) by theirs; and where
    each request is measured, labelled `<HTTP method> <route>` with the gRPC code name of its status."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return await handler(request)
    except MeshError as err:
        code = err.grpc_code
        response = _error(http_status(err.grpc_code), err.message)
        if isinstance(err, Overloaded):
            response.headers["Retry-After"] = str(max(math.ceil(err.retry_after_s), 1))
        return response
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = _HTTP_CODES.get(err.status, grpc.StatusCode.INTERNAL)
        generic = f"{err.status}: {err.reason}"  # aiohttp's default text adds nothing to the reason
        detail = err.text if err.text and err.text != generic else err.reason
        return _error(err.status, f"{detail} ({request.method} {request.path})")
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED  # the client went away
        raise
    except Exception as err:
        code = grpc.StatusCode.INTERNAL
        log.exception("REST %s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(err).__name__}: {err}")
    finally:
        resource = request.match_info.route.resource
        method = f"{request.method} {resource.canonical}" if resource is not None else UNMATCHED
        request.app[_METRICS].request(method, code, started, request.match_info.get("name", ""))


def _dataplane(request: web.Request) -> DataPlane:
    return request.app[_DATAPLANE]


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def passed_headers(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The request's headers the runtime sees, as gRPC metadata: those gRPC can carry (lowercase token names, printable
    ASCII values, no binary `-bin` or reserved `grpc-` keys) and that are not about the HTTP hop or routing."""
    passed = []
    for name, value in request.headers.items():
        key = name.lower()
        if key in _HOP_BY_HOP or key.startswith(("mm-", "grpc-")) or key.endswith("-bin"):
            continue
        if _METADATA_KEY.fullmatch(key) and _METADATA_VALUE.fullmatch(value):
            passed.append((key, value))
    return tuple(passed)


def _header_length(request: web.Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None


async def _server_live(request: web.Request) -> web.Response:
    if not await _dataplane(request).server_live():
        raise Unavailable("server is not live")
    return web.json_response({"live": True})


async def _server_ready(request: web.Request) -> web.Response:
    if not await _dataplane(request).server_ready():
        raise Unavailable("server is not ready")
    return web.json_response({"ready": True})


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response(codec.server_metadata_to_json(_dataplane(request).server_metadata()))


async def _model_metadata(request: web.Request) -> web.Response:
    metadata = await _dataplane(request).model_metadata(*_model(request))
    return web.json_response(codec.model_metadata_to_json(metadata))


async def _model_ready(request: web.Request) -> web.Response:
    name, version = _model(request)
    if not await _dataplane(request).model_ready(name, version):
        raise Unavailable(f"model '{name}' is not ready")
    return web.json_response({"name": name, "ready": True})


async def _model_infer(request: web.Request) -> web.Response:
    name, version = _model(request)
    try:
        body = await request.read()  # aiohttp undoes any Content-Encoding, and counts the limit after it
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[_MAX_BODY]
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit, text=f"Maximum request body size {limit} exceeded, set by max_message_bytes"
        ) from None
    infer_request, encoding = codec.decode_infer_request(
        body, _header_length(request), model_name=name, model_version=version
    )
    response = await _dataplane(request).model_infer(infer_request, passed_headers(request))
    payload, header_length = codec.encode_infer_response(response, encoding)
    if header_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload, content_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
    )


async def _generate(request: web.Request) -> web.Response:
    """The generate extension: one answer (ModelInfer under the hood), as JSON."""
    name, version = _model(request)
    infer_request = codec.generate_request(await request.read(), name, version)
    response = await _dataplane(request).model_infer(infer_request, passed_headers(request))
    return web.json_response(codec.generate_response_to_json(response))


async def _generate_stream(request: web.Request) -> web.StreamResponse:
    """The generate extension, streamed: each of the model's responses (ModelStreamInfer) as a server-sent event
    `data: {...}`. An error before the first response is an HTTP error; after it, an event `data: {"error": ...}`
    ends the stream."""
    name, version = _model(request)
    infer_request = codec.generate_request(await request.read(), name, version)

    async def one_request() -> AsyncIterator[bytes]:
        yield infer_request.SerializeToString()

    target = Target(name)
    responses = relay(
        _dataplane(request), MODEL_STREAM_INFER, one_request(), target, passed_headers(request), None, AccessNote()
    )
    try:
        item = await anext(responses, None)
        first = pb.ModelStreamInferResponse.FromString(item) if item is not None else None
        if first is not None and first.error_message:
            raise InvalidArgument(first.error_message)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        message = first
        try:
            while message is not None and not message.error_message:
                event = codec.generate_response_to_json(message.infer_response)
                await stream.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                item = await anext(responses, None)
                message = pb.ModelStreamInferResponse.FromString(item) if item is not None else None
            if message is not None:
                await stream.write(b"data: " + json.dumps({"error": message.error_message}).encode() + b"\n\n")
        except MeshError as err:
            await stream.write(b"data: " + json.dumps({"error": err.message}).encode() + b"\n\n")
        await stream.write_eof()
        return stream
    finally:
        await responses.aclose()


def create_app(dataplane: DataPlane, metrics: RouterMetrics, max_body_bytes: int = MAX_BODY_BYTES) -> web.Application:
    """The REST application over a data plane (bodies up to max_body_bytes, the router's message limit)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors_to_json])
    app[_DATAPLANE] = dataplane
    app[_METRICS] = metrics
    app[_MAX_BODY] = max_body_bytes
    app.add_routes(
        [
            web.get("/v2/health/live", _server_live),
            web.get("/v2/health/ready", _server_ready),
            web.get("/v2", _server_metadata),
            web.get("/v2/models/{name}", _model_metadata),
            web.post("/v2/models/{name}/generate", _generate),
            web.post("/v2/models/{name}/generate_stream", _generate_stream),
            web.get("/v2/models/{name}/versions/{version}", _model_metadata),
            web.get("/v2/models/{name}/ready", _model_ready),
            web.get("/v2/models/{name}/versions/{version}/ready", _model_ready),
            web.post("/v2/models/{name}/infer", _model_infer),
            web.post("/v2/models/{name}/versions/{version}/infer", _model_infer),
            web.post("/mm/{name}/v2/models/{asked}/infer", _model_infer),
        ]
    )
    return app


async def start_rest_server(
    dataplane: DataPlane,
    metrics: RouterMetrics,
    host: str,
    port: int,
    max_body_bytes: int = MAX_BODY_BYTES,
    tls: ServerTLS | None = None,
) -> tuple[web.AppRunner, int]:
    """Serves the REST front door on host:port (0 picks a free port); returns the runner and the bound port.

    Stop it with `await runner.cleanup()`.
    """
    runner = web.AppRunner(
        create_app(dataplane, metrics, max_body_bytes), access_log=None
    )  # one log line per request is noise here
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls.ssl_context() if tls else None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    log.info("REST server listening on %s:%d", host, bound)
    return runner, bound
