"""Preferred labels: a tie-break, never a requirement. Among the instances that can hold a copy, those carrying
more of the labels a model prefers are chosen first; with none of them reachable, the model loads elsewhere."""

from __future__ import annotations

from harness.fakes import MB, FakeRuntime

from mesh.placement import policy
from mesh.placement.records import InstanceRecord, ModelRecord


def test_an_instance_carrying_the_preferred_labels_wins_over_a_roomier_one() -> None:
    roomy = policy.InstanceView(InstanceRecord("rt-a", "x", 100 * MB, ("echo",)), [])
    zone_b = policy.InstanceView(InstanceRecord("rt-b", "x", 10 * MB, ("echo",), labels=("zone:b", "ssd")), [])
    assert policy.choose_instance("echo", MB, [roomy, zone_b]).instance_id == "rt-a"  # type: ignore[union-attr]
    chosen = policy.choose_instance("echo", MB, [roomy, zone_b], preferred=("zone:b",))
    assert chosen is not None and chosen.instance_id == "rt-b"
    # Preferred, not required: when only the roomy one can hold it, it goes there.
    assert policy.choose_instance("echo", 20 * MB, [roomy, zone_b], preferred=("zone:b",)).instance_id == "rt-a"  # type: ignore[union-attr]


async def test_a_registered_preference_places_the_model_and_can_be_changed(make_cluster) -> None:  # type: ignore[no-untyped-def]
    router = await make_cluster(
        FakeRuntime("rt-a", capacity_bytes=100 * MB), FakeRuntime("rt-b", labels=("zone:b",))
    ).router()
    await router.registry.register(ModelRecord("m", "echo", "/models/m", preferred_labels=("zone:b",)))
    assert await router.use("m") == "rt-b"
    # Registering it again with another preference is not a new spec: it changes how the next copy is placed.
    await router.registry.register(ModelRecord("m", "echo", "/models/m", preferred_labels=("zone:c",)))
    assert router.manager.view.models["m"].record.preferred_labels == ("zone:c",)
