"""Accelerator (GPU) memory counted: a copy fits where both host and device memory have room, eviction frees the
dimension that is short, and a runtime that runs out of device memory below what it reports is capped there
while the load goes on elsewhere (mesh/placement/policy.py, loader.py, instance_health.py)."""

from __future__ import annotations

from harness.fakes import MB, FakeRuntime

from mesh.placement import policy
from mesh.placement.records import InstanceRecord

GB = 1024 * MB


def resident(model_id: str, last_used_ms: int, size: int = MB, device: int = 0) -> policy.ResidentCopy:
    return policy.ResidentCopy(model_id, size, last_used_ms, True, device_bytes=device)


def test_eviction_frees_the_dimension_that_is_short() -> None:
    gpu = InstanceRecord("rt-gpu", "x", capacity_bytes=100 * MB, model_types=("echo",), device_capacity_bytes=4 * GB)
    copies = [
        resident("cpu-oldest", 1, size=10 * MB),  # least recently used, but holds no device memory
        resident("gpu-old", 2, device=2 * GB),
        resident("gpu-new", 3, device=2 * GB),
    ]
    view = policy.InstanceView(gpu, copies)
    # Host memory has room; device memory is full: only a copy holding device memory frees what is short.
    assert [v.model_id for v in policy.victims_for(view, MB, device_bytes=GB) or ()] == ["gpu-old"]
    # Both short: least worth first, each taken only while it frees a dimension still short.
    tight = policy.InstanceView(InstanceRecord("rt", "x", 13 * MB, ("echo",), device_capacity_bytes=4 * GB), copies)
    assert [v.model_id for v in policy.victims_for(tight, 2 * MB, device_bytes=GB) or ()] == ["cpu-oldest", "gpu-old"]
    assert policy.victims_for(view, MB, device_bytes=5 * GB) is None


def test_a_model_that_needs_device_memory_goes_only_where_there_is_some() -> None:
    cpu = policy.InstanceView(InstanceRecord("rt-cpu", "x", 100 * MB, ("echo",)), [])
    gpu = policy.InstanceView(InstanceRecord("rt-gpu", "x", 10 * MB, ("echo",), device_capacity_bytes=GB), [])
    assert policy.choose_instance("echo", MB, [cpu, gpu], device_bytes=GB // 2).instance_id == "rt-gpu"  # type: ignore[union-attr]
    assert policy.choose_instance("echo", MB, [cpu, gpu]).instance_id == "rt-cpu"  # more room  # type: ignore[union-attr]
    assert policy.choose_instance("echo", MB, [cpu, gpu], device_bytes=2 * GB) is None
    reason, retryable = policy.why_unplaceable("echo", MB, [cpu.record, gpu.record], device_bytes=2 * GB)
    assert not retryable and reason == (
        f"it needs {2 * GB} bytes of accelerator memory but the most any instance for 'echo' offers is {GB}"
    )


async def test_gpu_models_evict_each_other_and_leave_host_only_models_alone(make_cluster) -> None:  # type: ignore[no-untyped-def]
    gpu = FakeRuntime("rt-gpu", capacity_bytes=100 * MB, device_capacity_bytes=4 * GB)
    gpu.device_sizes.update({"g1": 2 * GB, "g2": 2 * GB, "g3": 2 * GB})
    router = await make_cluster(gpu).router()
    await router.register("cpu-model", "g1", "g2", "g3")
    for model_id in ("cpu-model", "g1", "g2", "g3"):  # cpu-model is the least recently used, but holds no GPU memory
        await router.use(model_id)
    assert gpu.unloads == ["g1"]
    placement = router.manager.view.placements["g3"].record
    assert (placement.copies["rt-gpu"].device_bytes, placement.device_bytes) == (2 * GB, 2 * GB)


async def test_a_runtime_out_of_device_memory_is_capped_there_and_the_request_is_served(make_cluster) -> None:  # type: ignore[no-untyped-def]
    # rt-a reports 8 GB of GPU memory but has 4; rt-b reports and has 4.
    liar = FakeRuntime("rt-a", device_capacity_bytes=8 * GB, device_memory_bytes=4 * GB)
    honest = FakeRuntime("rt-b", device_capacity_bytes=4 * GB)
    sizes = {"g1": 2 * GB, "g2": 2 * GB, "g3": 2 * GB, "g4": 2 * GB}
    for runtime in (liar, honest):
        runtime.device_sizes.update(sizes)
    router = await make_cluster(liar, honest).router()
    await router.register(*sizes)
    for model_id in sizes:
        await router.use(model_id)
    placed = {m: [i for i, _ in router.manager.copies.loaded_copies(m)] for m in sizes}
    assert all(len(holders) == 1 for holders in placed.values()), placed  # every request served
    weighed = router.manager.health.weighed(router.manager.view.instances["rt-a"].record)
    assert weighed.device_capacity_bytes == 4 * GB  # capped at what it held when it ran out
    assert len(liar.loads) == len(liar.loaded) + 1  # one load ran out of device memory there, and went on elsewhere
    assert sum(device for m, device in sizes.items() if liar.loaded.get(m)) <= 4 * GB
