"""The data plane's one retry (proxy/dataplane.py): a copy that turns out gone costs an idempotent request one more
try on another copy (or a fresh load), never two, and never for a method that may change the server."""

from __future__ import annotations

import grpc
import pytest
from harness.fakes import FakeCluster, FakeRuntime, rpc_error

from mesh.errors import RuntimeFailure, Unavailable
from mesh.health import Readiness
from mesh.proxy import wire
from mesh.proxy.dataplane import MODEL_INFER, DataPlane, Target
from mesh.registry import Naming

CUSTOM = "/example.Custom/Mutate"  # any method routed by a header; not known to be safe to send twice


async def dataplane(cluster: FakeCluster) -> tuple[DataPlane, object]:
    router = await cluster.router()
    await router.register("m")
    readiness = Readiness(cluster.kv, router.manager, period_seconds=60)
    return DataPlane(router.registry, router.manager, readiness, router.metrics), router


def failing_first(code: grpc.StatusCode, times: int = 1):  # type: ignore[no-untyped-def]
    """A reply that fails `times` times with `code`, then echoes."""
    calls = []

    def reply(body: bytes) -> bytes:
        calls.append(body)
        if len(calls) <= times:
            raise rpc_error(code, "no such model")
        return b"ok"

    return reply


async def test_a_copy_the_runtime_no_longer_has_is_dropped_and_the_request_retried_once(make_cluster):
    runtime = FakeRuntime("rt-a", replies={MODEL_INFER: failing_first(grpc.StatusCode.NOT_FOUND)})
    plane, router = await dataplane(make_cluster(runtime))
    assert await plane.forward(MODEL_INFER, b"request", Target("m")) == b"ok"
    assert runtime.loads == ["m", "m"]  # the copy was dropped and loaded again for the retry
    assert len(runtime.forwarded) == 2


async def test_a_second_gone_copy_fails_the_request_unavailable(make_cluster):
    runtime = FakeRuntime("rt-a", replies={MODEL_INFER: failing_first(grpc.StatusCode.NOT_FOUND, times=5)})
    plane, _ = await dataplane(make_cluster(runtime))
    with pytest.raises(Unavailable, match="runtime instance 'rt-a' serving model 'm' is unavailable"):
        await plane.forward(MODEL_INFER, b"request", Target("m"))
    assert len(runtime.forwarded) == 2


async def test_a_method_that_may_change_the_server_is_not_sent_twice(make_cluster):
    runtime = FakeRuntime("rt-a", replies={CUSTOM: failing_first(grpc.StatusCode.NOT_FOUND)})
    plane, _ = await dataplane(make_cluster(runtime))
    with pytest.raises(Unavailable):
        await plane.forward(CUSTOM, b"request", Target("m", Naming.MODEL_HEADER))
    assert len(runtime.forwarded) == 1


async def test_unavailable_from_a_server_that_still_answers_keeps_the_copy(make_cluster):
    runtime = FakeRuntime("rt-a", replies={MODEL_INFER: failing_first(grpc.StatusCode.UNAVAILABLE)})
    plane, router = await dataplane(make_cluster(runtime))
    assert await plane.forward(MODEL_INFER, b"request", Target("m")) == b"ok"
    assert runtime.loads == ["m"]  # its own UNAVAILABLE (a full queue, a handler's error): the copy stays
    assert router.manager.health.reachable("rt-a")


async def test_other_runtime_errors_pass_through_with_their_code_and_no_retry(make_cluster):
    runtime = FakeRuntime("rt-a", replies={MODEL_INFER: failing_first(grpc.StatusCode.INVALID_ARGUMENT)})
    plane, _ = await dataplane(make_cluster(runtime))
    with pytest.raises(RuntimeFailure) as failure:
        await plane.forward(MODEL_INFER, b"request", Target("m"))
    assert failure.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    assert len(runtime.forwarded) == 1


async def test_a_vmodel_request_reaches_the_runtime_naming_the_concrete_model(make_cluster):
    runtime = FakeRuntime("rt-a")
    plane, router = await dataplane(make_cluster(runtime))
    await router.registry.set_vmodel("v", "m", sync=True)
    request = wire.replace_string(b"", 1, "v")
    await plane.forward(MODEL_INFER, request, Target("v"))
    [(_, body)] = runtime.forwarded
    assert wire.read_string(body, 1) == "m"
