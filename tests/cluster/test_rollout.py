"""A rollout without a cold-load storm: runtimes stopped one by one (SIGTERM, as a Deployment's rolling update
does) hand their recently used models to the others before they leave routing (adapters/common/handoff.py and
CopyScaler.hand_off), under a skewed workload through two routers.

Every request succeeds; each stopped runtime says every recently used model was served elsewhere before it left;
the cache misses during the roll are no more than the models the stopped runtimes held (here: none at all, as
each model in use is loaded elsewhere before its runtime goes). The latency figures of a roll, against its steady
state and against a roll without the hand-off, are bench's (`python -m bench --only rollout`)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import grpc
import httpx
import pytest
from harness.cluster import CALL_TIMEOUT_S, ClusterFactory, Router, describe, echo_request, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

MODELS = [f"m{i}" for i in range(8)]
BALLAST = 1024 * 1024
HANDOFF_GRACE_S = 20.0
STOPPED_WITHIN_S = HANDOFF_GRACE_S + 10.0


def cache_misses(router: Router) -> float:
    """The router's modelmesh_cache_miss_total, read from its /metrics."""
    port = json.loads(router.port_file.read_text())["metrics"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=CALL_TIMEOUT_S).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelmesh_cache_miss_total"
    )


async def test_runtimes_stopped_one_by_one_hand_their_models_over_and_no_request_fails(
    make_cluster: ClusterFactory,
) -> None:
    # Room for four models per runtime, eight models: the two runtimes left while one is stopped hold them all, so
    # a hand-off never has to evict (a cache too small for the working set misses whatever mesh does).
    handoff = ("--handoff-grace-s", str(HANDOFF_GRACE_S))
    cluster = await make_cluster(runtimes=3, routers=2, capacity_bytes=int(4.5 * BALLAST), runtime_args=handoff)
    for model_id in MODELS:
        await cluster.register_echo(model_id, BALLAST)
    await cluster.wait_registered(MODELS)
    for model_id in MODELS:
        await cluster.infer(model_id)

    failures: list[str] = []
    served = 0
    done = asyncio.Event()
    weights = [1 / (rank + 1) for rank in range(len(MODELS))]  # Zipf: m0 most used
    rng = random.Random(7)

    async def client(worker: int) -> None:
        nonlocal served
        value = worker * 1_000_000
        while not done.is_set():
            model_id = rng.choices(MODELS, weights)[0]
            router = cluster.routers[value % len(cluster.routers)]
            value += 1
            try:
                await router.inference.ModelInfer(echo_request(model_id, value), timeout=CALL_TIMEOUT_S)
                served += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{model_id} via {router.name}: {describe(exc)}")
            await asyncio.sleep(0.01)  # a steady rate, not a flood: the roll is the subject

    workers = [asyncio.create_task(client(w)) for w in range(4)]
    try:

        async def steady() -> bool:
            return served >= 200

        await wait_until(steady, 60.0, "a steady workload")
        misses_before = sum(cache_misses(r) for r in cluster.routers)
        held = 0
        for index in range(len(cluster.runtimes)):
            runtime = cluster.runtimes[index]
            held += len((await cluster.layout(MODELS))[runtime.instance_id])
            runtime.popen.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while runtime.alive():
                assert time.monotonic() - started < STOPPED_WITHIN_S, f"{runtime.name} did not stop"
                await asyncio.sleep(0.05)
            assert "draining: every recently used model is served elsewhere" in runtime.log(), runtime.log()[-3000:]
            restarted = await cluster.restart_runtime(index)
            for router in cluster.routers:
                await wait_until(
                    lambda router=router, back=restarted.instance_id: _lists(router, back),
                    30.0,
                    f"{router.name} sees it back",
                )
        misses = sum(cache_misses(r) for r in cluster.routers) - misses_before
    finally:
        done.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert served > 200
    assert misses <= held
    assert misses == 0, f"{misses} cold loads during the roll"


async def _lists(router: Router, instance_id: str) -> bool:
    return instance_id in await router.instances()
