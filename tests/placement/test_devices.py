"""Accelerator memory through real gRPC runtimes (the built-in runtime, which simulates device memory: an echo
model's config says what it holds there): GPU models load only where there is device memory, evict each other
when it is full, and ListInstances shows each instance's device capacity and use."""

from __future__ import annotations

from harness.router import Mesh

from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc

GB = 1024**3
MB = 1024**2


async def instances(mesh: Mesh) -> dict[str, admin.InstanceEntry]:
    reply = await admin_grpc.MeshAdminStub(mesh.channel).ListInstances(admin.ListInstancesRequest(), timeout=10)
    return {i.instanceId: i for i in reply.instances}


async def test_gpu_models_go_to_device_memory_and_evict_each_other_there(make_mesh) -> None:  # type: ignore[no-untyped-def]
    # rt-a: host memory only, the roomier; rt-b: one device of 2.5 GB.
    mesh = await make_mesh([64 * MB, 16 * MB], devices=[(), (2 * GB + GB // 2,)])
    for model_id, device in (("cpu", 0), ("g1", GB), ("g2", GB), ("g3", GB)):
        await mesh.register_echo(model_id, device_bytes=device)
    for model_id in ("cpu", "g1", "g2"):
        await mesh.infer(model_id)
    listed = await instances(mesh)
    assert (listed["rt-b"].deviceCapacityInBytes, listed["rt-b"].deviceUsedInBytes) == (2 * GB + GB // 2, 2 * GB)
    assert sorted(listed["rt-b"].models) == ["g1", "g2"] and list(listed["rt-a"].models) == ["cpu"]
    assert listed["rt-a"].deviceCapacityInBytes == 0
    await mesh.infer("g3")  # no room for a third: g1, the least recently used GPU model, makes room (not cpu)
    listed = await instances(mesh)
    assert sorted(listed["rt-b"].models) == ["g2", "g3"] and list(listed["rt-a"].models) == ["cpu"]
    assert listed["rt-b"].deviceUsedInBytes == 2 * GB
