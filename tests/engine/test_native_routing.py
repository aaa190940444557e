"""A real HAProxy in front of a router: loaded models are served by the engine, misses by mesh.

Each test proves where requests went by two counts that cannot agree by accident: the runtime's own count of the
calls it received, and the engine's count of the requests it routed natively (its stick table, read over its
runtime API); a request through mesh's door reaches the runtime without the engine counting it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from harness.engine import engine_api, engine_maps
from harness.router import Mesh, meshes

from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import model_runtime_pb2 as rt
from mesh.gen import model_runtime_pb2_grpc as rt_grpc
from mesh.placement.records import ModelRecord, now_ms

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
WAIT_S = 15.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.02)


async def native_count(mesh: Mesh, model_id: str) -> int:
    """Requests the engine routed natively for the model."""
    assert mesh.router.engine is not None
    traffic = await mesh.router.engine.control.driver.traffic()
    return traffic[model_id].requests if model_id in traffic else 0


async def routed(mesh: Mesh, model_id: str, table: str = "by_name") -> bool:
    """The engine's map holds a route for the model (False while the engine is not answering)."""
    try:
        return model_id in (await engine_maps(mesh.router))[table]
    except OSError:
        return False


def value(reply: pb.ModelInferResponse) -> int:
    """The INT32 the echo model sent back."""
    return int.from_bytes(reply.raw_output_contents[0], "little", signed=True)


def runtime_infers(mesh: Mesh) -> int:
    return sum(r.calls[INFER] for r in mesh.runtimes)


async def test_a_loaded_model_is_served_by_the_engine(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    assert not await routed(mesh, "m")
    reply = await mesh.infer("m", 1)  # a miss: mesh's door loads the model and forwards
    assert value(reply) == 1
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    for n in range(10):
        assert value(await mesh.infer("m", n)) == n
    assert await native_count(mesh, "m") == 10
    assert runtime_infers(mesh) == 11  # the miss through mesh, and the 10 the engine counted


async def test_header_and_vmodel_requests_are_native(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.router.registry.set_vmodel("v", "m")
    await mesh.infer("m", 1)
    await eventually(lambda: routed(mesh, "v", "vmodels"), "the vmodel v published")
    # The body names something else: the runtime takes the model id from the header the engine sets.
    by_model = await mesh.infer("anything", 2, metadata=(("mm-model-id", "m"),))
    by_vmodel = await mesh.infer("v", 3, metadata=(("mm-vmodel-id", "v"),))
    by_body = await mesh.infer("v", 4)  # the body names the vmodel
    assert [r.model_name for r in (by_model, by_vmodel, by_body)] == ["m", "m", "m"]
    assert [value(r) for r in (by_model, by_vmodel, by_body)] == [2, 3, 4]
    assert await native_count(mesh, "m") == 3
    assert runtime_infers(mesh) == 4


async def test_a_stream_named_by_its_header_is_relayed_by_the_engine(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """HAProxy relays an HTTP/2 stream message by message: ModelStreamInfer with mm-model-id goes to the copy natively,
    every token comes back; the engine counts the stream once, the runtime's call is one."""
    mesh = await make_mesh([64 * 1024 * 1024])
    (mesh.tmp / "t.json").write_text(json.dumps({"max_tokens": 64}))
    await mesh.router.registry.register(ModelRecord("t", "tokens", str(mesh.tmp / "t.json")))
    stream = mesh.channel.stream_stream(STREAM_INFER)

    async def tokens(metadata: tuple[tuple[str, str], ...]) -> list[str]:
        prompts = [_prompt("the quick brown fox"), _prompt("jumps")]
        call = stream(iter(p.SerializeToString() for p in prompts), metadata=metadata, timeout=30)
        words = []
        async for raw in call:
            reply = pb.ModelStreamInferResponse.FromString(raw)
            assert not reply.error_message, reply.error_message
            words.append(reply.infer_response.raw_output_contents[0][4:].decode())
        return words

    assert "".join(await tokens(())) == "the quick brown foxjumps"  # a miss: through mesh, which loads t
    await eventually(lambda: routed(mesh, "t", "by_header"), "the route to t published")
    assert "".join(await tokens((("mm-model-id", "t"),))) == "the quick brown foxjumps"
    assert await native_count(mesh, "t") == 1
    assert sum(r.calls[STREAM_INFER] for r in mesh.runtimes) == 2


def _prompt(text: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="t")
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(text.encode())
    return request


async def test_unknown_models_and_bad_requests_get_mesh_answers(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await mesh.infer("nobody")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nobody" in (unknown.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await mesh.infer("m", metadata=(("mm-model-id", "m"), ("mm-vmodel-id", "v")))
    assert both.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_several_copies_are_balanced(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024, 64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m")
    await mesh.router.manager.add_copy("m")
    await eventually(lambda: _has_two_copies(mesh), "a second copy of m routed", timeout=WAIT_S)
    before = [r.calls[INFER] for r in mesh.runtimes]
    for n in range(40):
        await mesh.infer("m", n)
    served = [r.calls[INFER] - b for r, b in zip(mesh.runtimes, before, strict=True)]
    assert sum(served) == 40
    assert min(served) >= 5, f"one copy got almost everything: {served}"


async def _has_two_copies(mesh: Mesh) -> bool:
    return len((await engine_maps(mesh.router))["by_name"].get("m", "").split(",")) == 2


async def test_eviction_order_is_the_lru_order_of_engine_traffic(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Three models fill the runtime, loaded a, b, c. Traffic through the engine then uses them c, a, b: the next
    load must evict c, the least recently used in that traffic (by load order alone it would be a)."""
    mesh = await make_mesh([3 * 1024 * 1024 + 512 * 1024])
    for model_id in ("a", "b", "c", "d"):
        await mesh.register_echo(model_id, ballast_bytes=1024 * 1024)
    for model_id in ("a", "b", "c"):
        await mesh.infer(model_id)
    for model_id in ("a", "b", "c"):
        await eventually(lambda m=model_id: routed(mesh, m), f"the route to {model_id} published")
    # The engine's last-use times are read off its stick table's expiry, to within a couple of milliseconds:
    # uses are spaced wider than that, and the loads' own marks are well before the engine's traffic.
    await eventually(_clock_past(now_ms() + 10), "the clock to move on")
    engine_traffic_from = now_ms()
    for model_id in ("c", "a", "b"):
        await mesh.infer(model_id)
        await eventually(_clock_past(now_ms() + 5), "the clock to move on")
    usage = mesh.router.manager.usage
    await eventually(
        _async(lambda: all(usage.last_used_ms(m) >= engine_traffic_from - 3 for m in "abc")), "the engine's usage read"
    )
    assert {m: await native_count(mesh, m) for m in "abc"} == {"a": 1, "b": 1, "c": 1}
    await mesh.infer("d")  # a miss: room is made by evicting the least recently used
    loaded = {m for m in "abcd" if await mesh.runtimes[0].is_loaded(m)}
    assert loaded == {"a", "b", "d"}


def _clock_past(ms: int) -> Callable[[], Awaitable[bool]]:
    return _async(lambda: now_ms() > ms)


def _negated(check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return not await check()

    return run


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def test_a_copy_drains_before_it_is_unloaded(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """Requests the engine has in flight on a copy finish before the copy is unloaded: none fails."""
    mesh = await make_mesh([64 * 1024 * 1024])
    path = mesh.tmp / "slow.json"
    path.write_text('{"predict_seconds": 0.5}')
    await mesh.router.registry.register(ModelRecord("slow", "echo", str(path)))
    await mesh.infer("slow")
    await eventually(lambda: routed(mesh, "slow"), "the route to slow published")
    in_flight = [asyncio.create_task(mesh.infer("slow", v)) for v in range(4)]
    await eventually(lambda: _engine_in_flight(mesh, "slow"), "requests in flight in the engine")
    await mesh.router.manager.unload_copy("slow", "rt-a")
    replies = await asyncio.gather(*in_flight)
    assert [value(r) for r in replies] == [0, 1, 2, 3]
    assert not await mesh.runtimes[0].is_loaded("slow")
    # A full resync that read the view before the unload may write the route back once; the next one drops it.
    await eventually(_negated(lambda: routed(mesh, "slow")), "the route to slow withdrawn")


async def _engine_in_flight(mesh: Mesh, model_id: str) -> bool:
    assert mesh.router.engine is not None
    traffic = await mesh.router.engine.control.driver.traffic()
    return model_id in traffic and traffic[model_id].in_flight > 0


async def test_the_engine_is_started_again_when_it_dies(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m")
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    engine = mesh.router.engine
    assert engine is not None
    old_pid = _engine_pid(mesh)
    os.kill(old_pid, signal.SIGKILL)
    await eventually(_async(lambda: _engine_pid(mesh) not in (None, old_pid)), "a new engine process")
    await eventually(lambda: routed(mesh, "m"), "the route to m published again")
    before = await native_count(mesh, "m")
    assert value(await mesh.infer("m", 5)) == 5
    assert await native_count(mesh, "m") == before + 1


def _engine_pid(mesh: Mesh) -> int | None:
    assert mesh.router.engine is not None
    return mesh.router.engine.control.driver.pid()


async def test_a_dead_runtime_is_answered_through_mesh(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """The engine's copy is on a runtime that died: the request is sent again through mesh's door (the runtime's
    server is marked down on the refused connection), which loads the model on the other runtime."""
    mesh = await make_mesh([64 * 1024 * 1024, 64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m")
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    holder = [r for r in mesh.runtimes if await r.is_loaded("m")][0]
    await holder.server.stop(0)
    reply = await mesh.infer("m", 9)
    assert value(reply) == 9


async def test_engine_api_answers(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    assert "Name: HAProxy" in await engine_api(mesh.router).run("show info")


async def test_each_routers_engine_follows_the_shared_store(tmp_path, haproxy_binary, etcd_server) -> None:  # type: ignore[no-untyped-def]
    """Two routers on one etcd, each with its engine: a model loaded through one is served natively by the other's
    engine, which learned the copy from the store's watch."""
    store = {"kv": f"etcd://{etcd_server.endpoint}", "kv_prefix": f"engine-{uuid.uuid4().hex[:12]}"}
    async with meshes(tmp_path, store, dataplane="haproxy", haproxy_binary=haproxy_binary) as make:
        first = await make([64 * 1024 * 1024])
        second = await first.join()
        await first.register_echo("m")
        await first.infer("m", 1)
        await eventually(lambda: routed(second, "m"), "the second router's engine routes m")
        assert value(await second.infer("m", 3)) == 3
        assert await native_count(second, "m") == 1
        assert runtime_infers(first) == 2


async def test_messages_over_the_limit_are_refused_with_the_engine_in_front(make_mesh) -> None:  # type: ignore[no-untyped-def]
    limit = 64 * 1024
    mesh = await make_mesh([64 * 1024 * 1024], max_message_bytes=limit)
    await mesh.register_echo("m")
    await mesh.infer("m")
    await eventually(lambda: routed(mesh, "m", "by_header"), "the route to m published")
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="UINT8", shape=[limit])
    request.raw_input_contents.append(b"\0" * limit)  # the message: the tensor and a few bytes more
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.inference.ModelInfer(request, metadata=(("mm-model-id", "m"),), timeout=WAIT_S)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(limit) in (refused.value.details() or "")
    assert await native_count(mesh, "m") == 0  # mesh's door refused it; the runtime never saw it
    request.raw_input_contents[0] = b"\0" * (limit - 64)
    request.inputs[0].shape[0] = limit - 64
    reply = await mesh.inference.ModelInfer(request, metadata=(("mm-model-id", "m"),), timeout=WAIT_S)
    assert len(reply.raw_output_contents[0]) == limit - 64
    assert await native_count(mesh, "m") == 1


async def test_a_stale_route_gets_a_retryable_answer_from_the_runtime(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """What a request meets when the engine's route is stale (the copy was evicted by another router, or the runtime
    restarted, and the engine has not seen it yet): the built-in runtime answers UNAVAILABLE to a request that
    names the model in mm-model-id (only the engine sends it so), and NOT_FOUND to a router's own forward."""
    mesh = await make_mesh([64 * 1024 * 1024])
    async with grpc.aio.insecure_channel(mesh.runtimes[0].endpoint) as channel:
        runtime = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="gone")
        request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
        with pytest.raises(grpc.aio.AioRpcError) as from_engine:
            await runtime.ModelInfer(request, metadata=(("mm-model-id", "gone"),), timeout=WAIT_S)
        assert from_engine.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "retry" in (from_engine.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as from_router:
            await runtime.ModelInfer(request, timeout=WAIT_S)
        assert from_router.value.code() is grpc.StatusCode.NOT_FOUND


def request_count(mesh: Mesh, code: str) -> float:
    """ModelInfer requests with that status in the router's request-latency histogram."""
    labels = {"method": "inference.GRPCInferenceService/ModelInfer", "code": code}
    sample = mesh.router.metrics.collectors.get_sample_value("modelmesh_api_request_milliseconds_count", labels)
    return sample or 0.0


async def test_requests_the_engine_served_are_in_the_request_latency_histogram(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m", 1)  # a miss: mesh's door serves it, and counts it
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    assert request_count(mesh, "OK") == 1
    for n in range(10):
        await mesh.infer("m", n)
    assert await native_count(mesh, "m") == 10

    async def counted() -> bool:
        return request_count(mesh, "OK") == 11

    await eventually(counted, "the engine's 10 requests in modelmesh_api_request_milliseconds")
    # A copy gone behind the engine's back: the runtime's UNAVAILABLE, forwarded by the engine, counted as such.
    async with grpc.aio.insecure_channel(mesh.runtimes[0].endpoint) as channel:
        await rt_grpc.ModelRuntimeStub(channel).unloadModel(rt.UnloadModelRequest(modelId="m"), timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await mesh.infer("m", 5, metadata=(("mm-model-id", "m"),))
    assert gone.value.code() is grpc.StatusCode.UNAVAILABLE

    async def unavailable_counted() -> bool:
        return request_count(mesh, "UNAVAILABLE") == 1

    await eventually(unavailable_counted, "the engine's UNAVAILABLE answer in the histogram")


async def test_a_large_request_named_by_its_body_is_routed_natively(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """A message larger than the engine buffers (16 KiB): the model's name is read from its first bytes."""
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m")
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    for size in (100, 20_000, 1_000_000):
        request = pb.ModelInferRequest(model_name="m")
        request.inputs.add(name="x", datatype="UINT8", shape=[size])
        request.raw_input_contents.append(bytes(size))
        reply = await mesh.inference.ModelInfer(request, timeout=WAIT_S)
        assert len(reply.raw_output_contents[0]) == size
    assert await native_count(mesh, "m") == 3


async def test_a_deleted_vmodel_is_not_served_once_the_delete_is_answered(make_mesh) -> None:  # type: ignore[no-untyped-def]
    """The engine's routes follow the records in a task; a registry change is answered only once they have."""
    mesh = await make_mesh([64 * 1024 * 1024])
    await mesh.register_echo("m")
    await mesh.infer("m")
    registry = mesh.router.registry
    for n in range(10):
        await registry.set_vmodel(f"v{n}", "m")
        assert value(await mesh.infer("x", n, metadata=(("mm-vmodel-id", f"v{n}"),))) == n
        await registry.delete_vmodel(f"v{n}")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await mesh.infer("x", n, metadata=(("mm-vmodel-id", f"v{n}"),))
        assert gone.value.code() is grpc.StatusCode.NOT_FOUND
    assert await native_count(mesh, "m") >= 1  # the vmodel requests were served natively


async def test_a_model_whose_payloads_are_logged_is_served_through_mesh(make_mesh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "payloads.jsonl"
    mesh = await make_mesh([64 * 1024 * 1024], payload_log=f"file://{log}?models=logged")
    await mesh.register_echo("logged")
    await mesh.register_echo("plain")
    for model in ("logged", "plain"):
        await mesh.infer(model, 1)  # the misses, through mesh
    await eventually(lambda: routed(mesh, "plain"), "the route to plain published")
    for n in range(5):
        assert value(await mesh.infer("logged", n)) == n
        assert value(await mesh.infer("plain", n)) == n
    assert not await routed(mesh, "logged")  # no native route: its requests pass through mesh, to be logged
    assert await native_count(mesh, "logged") == 0 and await native_count(mesh, "plain") == 5
    await mesh.router.payloads.stop()  # delivers what is queued
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 6  # request and response of each of the 6 requests for "logged"


async def test_the_access_log_has_the_engines_requests_and_mesh_doors_alike(make_mesh, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="mesh.access")
    mesh = await make_mesh([64 * 1024 * 1024], access_log=True)
    await mesh.register_echo("m")
    await mesh.infer("m", 1)  # the miss, through mesh's door
    await eventually(lambda: routed(mesh, "m"), "the route to m published")
    for n in range(3):
        await mesh.infer("m", n)

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "mesh.access"]

    async def four() -> bool:
        return len(lines()) >= 4

    await eventually(four, "an access line for each of the 4 requests")
    first, *native = lines()
    assert (first.model, first.hit, first.code) == ("m", False, "OK")  # type: ignore[attr-defined]
    instance = mesh.runtimes[0].instance_id
    for record in native:
        assert (record.model, record.hit, record.code, record.instance) == ("m", True, "OK", instance)  # type: ignore[attr-defined]
        assert record.method == INFER and record.response_bytes > 0  # type: ignore[attr-defined]
    assert await native_count(mesh, "m") == 3  # the three were the engine's
