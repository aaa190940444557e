"""Readiness (mesh/health.py) as clients see it: grpc.health.v1 Check and Watch, v2 ServerReady, REST /v2/health.

Ready needs a store that answers and a reachable runtime; liveness stays true throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness.etcd import EtcdServer
from harness.serve import BUILTIN_TYPES, InProcessRuntime, serving, start_runtime

from mesh.config import Settings
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.router import Router

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHECK_SECONDS = 0.2  # the test routers re-evaluate readiness this often
FLIP_TIMEOUT_S = 10.0


class Probe:
    """One router seen from outside: gRPC health (Check, and a Watch that records every status) and REST."""

    def __init__(self, router: Router, grpc_port: int, rest_port: int) -> None:
        self.router = router
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest_port}", timeout=10)
        self.watched: list[int] = []
        self._watch = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for reply in self.health.Watch(health_pb2.HealthCheckRequest(service="")):
            self.watched.append(reply.status)

    async def status(self, service: str = "") -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

    async def expect(self, status: int, timeout: float = FLIP_TIMEOUT_S) -> float:
        """Wait (bounded) until Check answers `status`; then every other view must agree. The seconds it took."""
        started = time.monotonic()
        while (current := await self.status()) != status:
            assert time.monotonic() - started < timeout, f"still {current} after {timeout} s, expected {status}"
            await asyncio.sleep(0.05)
        ready = status == SERVING
        assert await self.status("inference.GRPCInferenceService") == status
        assert (await self.inference.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready is ready
        assert (await self.http.get("/v2/health/ready")).status_code == (200 if ready else 503)
        # Liveness is not readiness: the process serves either way.
        assert (await self.inference.ServerLive(pb.ServerLiveRequest(), timeout=5)).live
        assert (await self.http.get("/v2/health/live")).status_code == 200
        return time.monotonic() - started

    async def close(self) -> None:
        self._watch.cancel()
        await asyncio.gather(self._watch, return_exceptions=True)
        await self.http.aclose()
        await self.channel.close()


def flips(statuses: list[int]) -> list[int]:
    """The statuses with repeats removed: the flips a watcher saw."""
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


@pytest.fixture
async def make_router() -> AsyncIterator[Callable[..., Awaitable[Probe]]]:
    started: list[Probe] = []

    async def make(**settings: object) -> Probe:
        defaults = {"grpc_port": 0, "rest_port": 0, "metrics_port": -1, "health_check_seconds": CHECK_SECONDS}
        router = Router(Settings(**(defaults | settings)))  # type: ignore[arg-type]
        ports = await router.start()
        assert ports.rest is not None
        probe = Probe(router, ports.grpc, ports.rest)
        started.append(probe)
        return probe

    yield make
    for probe in started:
        await probe.close()
        await probe.router.stop(grace=0)


@pytest.fixture
async def runtimes() -> AsyncIterator[list[InProcessRuntime]]:
    """Runtimes a test starts (append them); stopped at the end."""
    started: list[InProcessRuntime] = []
    yield started
    for runtime in started:
        await runtime.stop()


async def test_health_follows_the_runtime_pool(make_router, runtimes: list[InProcessRuntime]) -> None:  # type: ignore[no-untyped-def]
    probe = await make_router(kv="memory://")
    await probe.expect(NOT_SERVING)  # no runtime yet

    for name in ("rt-a", "rt-b"):
        runtimes.append(await start_runtime(name))
        await probe.router.add_instance(name, runtimes[-1].endpoint, BUILTIN_TYPES)
    await probe.expect(SERVING, timeout=0)  # at once on registration

    # The whole pool stops, and nothing tells the router: it finds out by itself.
    for runtime in runtimes:
        await runtime.stop()
    await probe.expect(NOT_SERVING)

    # One runtime restarts in place (same endpoint, nothing registered again).
    runtimes.append(await start_runtime("rt-a", port=runtimes[0].port))
    await probe.expect(SERVING)

    await runtimes[-1].stop()
    await probe.expect(NOT_SERVING)

    # One is registered again, at a new endpoint: ready as soon as the registration returns.
    runtimes.append(await start_runtime("rt-b"))
    await probe.router.add_instance("rt-b", runtimes[-1].endpoint, BUILTIN_TYPES)
    await probe.expect(SERVING, timeout=0)

    # The watch stream's last message may still be on its way: wait for it (bounded), then the whole history must be
    # exactly these flips (an extra one, or one missing, fails).
    expected = [NOT_SERVING, SERVING, NOT_SERVING, SERVING, NOT_SERVING, SERVING]
    deadline = time.monotonic() + FLIP_TIMEOUT_S
    while len(flips(probe.watched)) < len(expected) and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
        await asyncio.sleep(0.01)
    assert flips(probe.watched) == expected


async def test_health_is_not_serving_while_the_store_is_down(
    restartable_etcd: EtcdServer,  # first: set up before the router, so it stops after it
    make_router,  # type: ignore[no-untyped-def]
    runtimes: list[InProcessRuntime],
) -> None:
    probe = await make_router(kv=f"etcd://{restartable_etcd.endpoint}", kv_prefix=f"health-{uuid.uuid4().hex[:8]}")
    runtimes.append(await start_runtime("rt-a"))
    await probe.router.add_instance("rt-a", runtimes[0].endpoint, BUILTIN_TYPES)
    await probe.expect(SERVING, timeout=0)

    await asyncio.to_thread(restartable_etcd.stop)  # blocking: the router's loop must keep running meanwhile
    await probe.expect(NOT_SERVING, timeout=5)
    assert "store" in probe.router.readiness.reason

    await asyncio.to_thread(restartable_etcd.start)
    await probe.expect(SERVING, timeout=20)
    assert flips(probe.watched) == [NOT_SERVING, SERVING, NOT_SERVING, SERVING]


@pytest.mark.slow
def test_mesh_serve_is_not_serving_while_its_runtime_restarts(tmp_path: Path) -> None:
    """`mesh serve` withdraws a runtime whose process died at once, and is ready again once it is restarted."""
    with serving(tmp_path, "--runtimes", "1", "--no-examples", "--kv", "memory://", "--rest-port", "-1") as serve:
        channel = grpc.insecure_channel(serve.grpc_address)
        health = health_pb2_grpc.HealthStub(channel)
        watched: list[int] = []
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))

        def follow() -> None:
            try:
                for reply in stream:
                    watched.append(reply.status)
            except grpc.RpcError:
                pass  # cancelled at the end

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while watched != [SERVING]:
                assert time.monotonic() < deadline, watched
                time.sleep(0.05)
            [runtime] = serve.runtime_pids()
            os.kill(runtime, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while flips(watched) != [SERVING, NOT_SERVING, SERVING]:
                assert time.monotonic() < deadline, f"watched {watched}\n{serve.output()}"
                time.sleep(0.05)
            assert serve.runtime_pids() not in ([], [runtime])
        finally:
            stream.cancel()
            thread.join(timeout=5)
            channel.close()
