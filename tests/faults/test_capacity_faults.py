"""Runtimes whose reported capacity is wrong: mesh goes by the sizes the runtime reports (ModelSize) and by its
out-of-memory answers, and stops overfilling it."""

from __future__ import annotations

import asyncio

import pytest
from harness.cluster import ClusterFactory
from workload import Workload, consistent

pytestmark = pytest.mark.slow

MB = 1024 * 1024
MODELS = [f"big-{i}" for i in range(6)]


async def _held_bytes(cluster, model_ids) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Per router: the bytes of LOADED copies it lists on rt-0 (the sizes the runtime reported)."""
    held = {}
    for router in cluster.routers:
        models = await router.models()
        held[router.name] = sum(
            models[m].sizeInBytes
            for m in model_ids
            if m in models and any(c.location == "rt-0" for c in models[m].status.modelCopyInfos)
        )
    return held


async def test_a_runtime_reporting_more_capacity_than_it_has_is_not_overfilled(make_cluster: ClusterFactory) -> None:
    # It says 8 MiB; it holds at most 3.5 MiB and answers RESOURCE_EXHAUSTED past that, as a server out of memory.
    cluster = await make_cluster(
        runtimes=1, routers=1, capacity_bytes=8 * MB, runtime_args=["--memory-limit-bytes", str(int(3.5 * MB))]
    )
    for model_id in MODELS:
        await cluster.register_echo(model_id, ballast_bytes=MB)
    await cluster.wait_registered(MODELS)

    # One after another: the fourth does not fit; the router caps the instance at what it held and evicts.
    for model_id in MODELS:
        await cluster.infer(model_id)
    layout = await cluster.layout(MODELS)
    # The cap is what it held when it refused (three, less a model's worth of rounding): two or three fit under it.
    assert 2 <= len(layout["rt-0"]) <= 3 and MODELS[-1] in layout["rt-0"], layout
    assert max((await _held_bytes(cluster, MODELS)).values()) <= 3.5 * MB

    # Mixed traffic over all six from then on: every request answered, the runtime never asked to overfill.
    workload = Workload(cluster, MODELS, clients=3).start()
    await asyncio.sleep(4.0)
    outcomes = await workload.stop()
    assert outcomes.broken == [], outcomes.broken
    assert outcomes.served > 20, outcomes
    refused = cluster.runtimes[0].log().count("does not fit")
    assert refused <= 1, f"the runtime refused {refused} loads: the router kept overfilling it"
    await consistent(cluster, MODELS)


async def test_a_runtime_reporting_less_capacity_than_it_has_is_filled_only_that_far(
    make_cluster: ClusterFactory,
) -> None:
    # It could hold everything; it says 2.5 MiB, and mesh believes it.
    cluster = await make_cluster(runtimes=1, routers=1, capacity_bytes=int(2.5 * MB))
    for model_id in MODELS:
        await cluster.register_echo(model_id, ballast_bytes=MB)
    await cluster.wait_registered(MODELS)
    for model_id in MODELS:
        await cluster.infer(model_id)
        assert max((await _held_bytes(cluster, MODELS)).values()) <= 2.5 * MB
    assert len((await cluster.layout(MODELS))["rt-0"]) == 2
    await consistent(cluster, MODELS)
