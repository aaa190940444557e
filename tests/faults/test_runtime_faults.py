"""Runtime faults under a real workload: SIGKILL during a load and during inference, and a runtime that hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from harness.cluster import ClusterFactory, describe, wait_until
from workload import Workload, consistent

pytestmark = pytest.mark.slow


async def test_a_runtime_killed_during_a_load_leaves_the_model_loaded_on_another(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster(runtimes=2, routers=2)
    await cluster.register_echo("steady")
    await cluster.register_echo("slow", load_seconds=3.0)
    await cluster.wait_registered(["steady", "slow"])
    await cluster.infer("steady")
    workload = Workload(cluster, ["steady"], clients=2).start()

    first = asyncio.gather(*(cluster.infer("slow", router=k % 2) for k in range(6)), return_exceptions=True)

    async def loading_somewhere() -> bool:
        return any(r.load_requests("slow") for r in cluster.runtimes)

    await wait_until(loading_somewhere, 10.0, "a runtime is loading slow")
    [loader] = [r for r in cluster.runtimes if r.load_requests("slow")]
    loader.kill()
    results = await first
    outcomes = await workload.stop()

    # Each first request was answered: the router's load failed with the runtime gone, and it loaded elsewhere.
    assert [describe(r) for r in results if r is not None] == []
    assert outcomes.broken == [], outcomes.broken
    [survivor] = [r for r in cluster.runtimes if r.alive()]
    assert await cluster.holders("slow") == {survivor.instance_id}
    await consistent(cluster, ["steady", "slow"])


async def test_a_runtime_killed_during_inference_has_its_requests_retried_on_another_copy(
    make_cluster: ClusterFactory, dataplane: str
) -> None:
    """mesh's doors send the requests in flight on the dead copy once more, to the other: none fails. The native
    engine cannot (a request already sent is not resent by HAProxy): those few get UNAVAILABLE, every later one is
    served, through the other copy or mesh's door."""
    clients = 8
    # Two copies of "hot": one follows load as soon as a request is in flight, and is never retired here.
    cluster = await make_cluster(
        runtimes=2,
        routers=2,
        env={"MESH_SCALE_UP_IN_FLIGHT": "0", "MESH_IDLE_COPY_SECONDS": "1e12"},
    )
    await cluster.register_echo("hot")
    await cluster.wait_registered(["hot"])

    async def two_copies() -> bool:
        await cluster.infer("hot")
        return len(await cluster.holders("hot")) == 2

    await wait_until(two_copies, 15.0, "hot has two copies", poll=0.1)
    workload = Workload(cluster, ["hot"], clients=clients).start()
    await asyncio.sleep(1.0)
    served_before = workload.outcomes.served
    cluster.runtimes[0].kill()
    await asyncio.sleep(3.0)
    outcomes = await workload.stop()

    assert outcomes.broken == [], outcomes.broken
    failed = sum(outcomes.retryable.values())
    if dataplane == "python":
        assert failed == 0, outcomes.retryable  # in-flight requests on the dead copy were retried on the other
    else:
        assert failed <= clients, outcomes.retryable  # at most the requests in flight when it died
        assert all(status.startswith("UNAVAILABLE") for status in outcomes.retryable), outcomes.retryable
    assert outcomes.served > served_before + 50
    await consistent(cluster, ["hot"])


async def test_a_runtime_that_hangs_on_load_times_out_and_the_model_loads_on_another(
    make_cluster: ClusterFactory,
) -> None:
    # The runtimes report a 2 s load timeout, which the router enforces on every loadModel it sends them.
    cluster = await make_cluster(runtimes=2, routers=1, runtime_args=["--load-timeout-ms", "2000"])
    await cluster.register_echo("stuck")
    await cluster.wait_registered(["stuck"])
    # Placement breaks ties on the instance id: the first load goes to rt-0, which is frozen (SIGSTOP), as a
    # runtime stuck in a driver call or a swap storm is: connected, and silent.
    hung = cluster.runtimes[0]
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        await cluster.infer("stuck", timeout=30)
        waited = time.monotonic() - started
        assert await cluster.runtimes[1].has("stuck")  # (rt-0 answers nothing while frozen)
        stored = await cluster.stored_placement("stuck")
        assert stored is not None and set(stored.copies) == {"rt-1"}, stored
        assert "rt-0" in stored.failures and "DEADLINE_EXCEEDED" in stored.failures["rt-0"].message, stored
        assert 2.0 <= waited < 20.0, waited  # one load timeout, then the load elsewhere
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    # Thawed, the runtime had its late load undone (the router unloads what it gave up on).
    await wait_until(lambda: _not_loaded(cluster, "stuck", hung.instance_id), 15.0, "rt-0 unloaded stuck")
    await consistent(cluster, ["stuck"])


async def _not_loaded(cluster, model_id: str, instance_id: str) -> bool:  # type: ignore[no-untyped-def]
    [runtime] = [r for r in cluster.runtimes if r.instance_id == instance_id]
    return not await runtime.has(model_id)
