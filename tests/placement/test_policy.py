"""The placement ranking and victim choice, as pure functions over records."""

from mesh.placement.policy import (
    InstanceView,
    ResidentCopy,
    choose_instance,
    over_capacity,
    victims_for,
    why_unplaceable,
)
from mesh.placement.records import InstanceRecord


def instance(instance_id: str, capacity: int, copies=(), types=(), loads=0) -> InstanceView:
    return InstanceView(InstanceRecord(instance_id, f"{instance_id}:1", capacity, tuple(types)), list(copies), loads)


def copy(model_id: str, size: int, last_used: int, evictable: bool = True) -> ResidentCopy:
    return ResidentCopy(model_id, size, last_used, evictable)


def test_an_instance_with_room_beats_one_that_must_evict():
    full = instance("a", 100, [copy("m1", 90, last_used=1)])
    roomy = instance("b", 100, [copy("m2", 50, last_used=1000)])
    choice = choose_instance("sklearn", 40, [full, roomy])
    assert choice is not None and choice.instance_id == "b" and choice.victims == ()


def test_among_fitting_instances_the_one_with_most_free_space_wins():
    choice = choose_instance("t", 10, [instance("a", 100, [copy("x", 60, 1)]), instance("b", 100, [copy("y", 20, 1)])])
    assert choice is not None and choice.instance_id == "b"


def test_loads_in_flight_outrank_free_space():
    choice = choose_instance("t", 10, [instance("a", 100, loads=1), instance("b", 50, loads=0)])
    assert choice is not None and choice.instance_id == "b"


def test_eviction_takes_the_least_recently_used_copies_cluster_wide():
    a = instance("a", 100, [copy("a-old", 50, last_used=10), copy("a-new", 50, last_used=500)])
    b = instance("b", 100, [copy("b-mid", 50, last_used=200), copy("b-new", 50, last_used=600)])
    choice = choose_instance("t", 40, [a, b])
    assert choice is not None
    assert choice.instance_id == "a"
    assert [v.model_id for v in choice.victims] == ["a-old"]


def test_victims_are_taken_oldest_first_until_enough_is_free():
    inst = instance("a", 100, [copy("m3", 30, 30), copy("m1", 30, 10), copy("m2", 30, 20)])
    victims = victims_for(inst, 60)
    assert victims is not None and [v.model_id for v in victims] == ["m1", "m2"]


def test_busy_copies_are_never_victims():
    inst = instance("a", 100, [copy("busy", 90, 1, evictable=False), copy("idle", 10, 99)])
    assert victims_for(inst, 20) is None
    assert choose_instance("t", 20, [inst]) is None


def test_type_constraint_and_exclusions():
    typed = instance("a", 100, types=["sklearn"])
    anything = instance("b", 10)
    assert choose_instance("text", 5, [typed, anything]).instance_id == "b"
    assert choose_instance("sklearn", 5, [typed, anything], excluded=frozenset({"b"})).instance_id == "a"
    assert choose_instance("text", 5, [typed, anything], excluded=frozenset({"b"})) is None


def test_a_model_larger_than_any_instance_is_unplaceable_and_the_reason_says_so():
    insts = [instance("a", 100), instance("b", 200)]
    assert choose_instance("t", 500, insts) is None
    reason, retryable = why_unplaceable("t", 500, [i.record for i in insts])
    assert "500" in reason and "200" in reason and not retryable
    reason, retryable = why_unplaceable("onnx", 5, [instance("a", 100, types=["sklearn"]).record])
    assert "onnx" in reason and not retryable
    assert why_unplaceable("t", 5, [])[1]


def test_over_capacity_after_a_size_correction_evicts_lru():
    inst = instance("a", 100, [copy("new", 80, 1000, evictable=False), copy("old", 40, 5), copy("mid", 10, 50)])
    assert [v.model_id for v in over_capacity(inst)] == ["old"]
    assert over_capacity(instance("a", 100, [copy("x", 100, 1)])) == ()


def test_ties_break_deterministically_on_instance_id():
    insts = [instance("b", 100), instance("a", 100)]
    assert choose_instance("t", 10, insts).instance_id == "a"
    assert choose_instance("t", 10, list(reversed(insts))).instance_id == "a"
