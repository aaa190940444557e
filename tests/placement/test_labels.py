"""Required labels: a model registered with labels loads only on runtime instances that carry all of them (a
tenant's own runtime), through the management API as a client registers it; bad labels are refused clearly."""

from __future__ import annotations

import grpc
import pytest
from harness.router import start_runtime

from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.placement.records import InstanceRecord, ModelRecord, checked_labels

MB = 1024 * 1024


def test_labels_are_stored_sorted_once_and_old_records_have_none() -> None:
    record = ModelRecord("m", "echo", labels=checked_labels(["rt:b", "rt:a", "rt:b"]))
    assert record.labels == ("rt:a", "rt:b")
    assert ModelRecord.from_bytes(record.to_bytes()) == record
    assert checked_labels(label for label in "b,a,,b".split(",") if label) == ("a", "b")  # a generator, as flags give
    assert ModelRecord.from_bytes(b'{"model_id":"m","model_type":"echo"}').labels == ()
    assert InstanceRecord.from_bytes(b'{"instance_id":"i","endpoint":"e","capacity_bytes":1}').labels == ()


@pytest.mark.parametrize("label", ["", "a b", "a,b", "é", "x" * 129, "tab\there"])
def test_a_label_that_cannot_be_one_is_named_in_the_error(label: str) -> None:
    with pytest.raises(ValueError, match="is not one"):
        checked_labels([label])


async def test_a_model_requiring_a_label_loads_only_on_an_instance_carrying_it(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([])
    # Tenant a's runtime has far more room: without labels, every model would load there.
    for instance_id, capacity, labels in (("rt-a", 512 * MB, ("tenant:a",)), ("rt-b", 64 * MB, ("tenant:b",))):
        runtime = await start_runtime(instance_id, capacity, labels)
        mesh.runtimes.append(runtime)
        await mesh.router.add_instance(instance_id, runtime.endpoint, ("echo",))
    path = mesh.tmp / "echo.json"
    path.write_text("{}")
    management = mm_grpc.ModelMeshStub(mesh.channel)
    for model_id, labels in (("fraud-b", ["tenant:b"]), ("fraud-a", ["tenant:a"]), ("anywhere", [])):
        await management.registerModel(
            mm.RegisterModelRequest(
                modelId=model_id,
                modelInfo=mm.ModelInfo(type="echo", path=str(path)),
                meshRequiredLabels=labels,
                loadNow=True,
                sync=True,
            ),
            timeout=30,
        )
    copies = {m: set(mesh.router.manager.view.placements[m].record.copies) for m in ("fraud-a", "fraud-b")}
    assert copies == {"fraud-a": {"rt-a"}, "fraud-b": {"rt-b"}}
    assert (await mesh.infer("fraud-b", 3)).model_name == "fraud-b"

    orphan = await management.registerModel(
        mm.RegisterModelRequest(
            modelId="orphan",
            modelInfo=mm.ModelInfo(type="echo", path=str(path)),
            meshRequiredLabels=["tenant:c"],
            loadNow=True,
            sync=True,
        ),
        timeout=30,
    )
    assert orphan.status == mm.ModelStatusInfo.LOADING_FAILED, orphan
    assert any("carries the labels it requires: tenant:c" in error for error in orphan.errors), orphan.errors


async def test_a_bad_label_is_invalid_argument_naming_it(make_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh = await make_mesh([64 * MB])
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await mm_grpc.ModelMeshStub(mesh.channel).registerModel(
            mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="echo"), meshRequiredLabels=["a b"]),
            timeout=30,
        )
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'm': required label 'a b' is not one" in (bad.value.details() or "")
