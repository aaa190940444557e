"""The placement ranking and victim choice, as pure functions over records."""

import pytest

from mesh.placement.policy import (
    InstanceView,
    ResidentCopy,
    choose_instance,
    gdsf_clock,
    gdsf_priority,
    over_capacity,
    victims_for,
    why_unplaceable,
)
from mesh.placement.records import InstanceRecord


def instance(instance_id: str, capacity: int, copies=(), types=(), loads=0, labels=()) -> InstanceView:
    record = InstanceRecord(instance_id, f"{instance_id}:1", capacity, tuple(types), labels=tuple(labels))
    return InstanceView(record, list(copies), loads)


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


def test_a_model_that_requires_labels_loads_only_where_all_of_them_are():
    tenant_a = instance("a", 1000, labels=["rt:ns-a/mlserver", "gpu"])
    tenant_b = instance("b", 100, labels=["rt:ns-b/mlserver"])  # less room: without labels, a would win
    unlabelled = instance("c", 10_000)
    assert choose_instance("t", 5, [tenant_a, tenant_b, unlabelled], labels=("rt:ns-b/mlserver",)).instance_id == "b"
    assert choose_instance("t", 5, [tenant_a, tenant_b], labels=("rt:ns-a/mlserver", "gpu")).instance_id == "a"
    assert choose_instance("t", 5, [tenant_b, unlabelled], labels=("rt:ns-a/mlserver",)) is None
    assert choose_instance("t", 5, [tenant_a, tenant_b, unlabelled]).instance_id == "c"  # no labels: any instance
    reason, retryable = why_unplaceable("t", 5, [tenant_b.record], ("rt:ns-a/mlserver",))
    assert "carries the labels it requires: rt:ns-a/mlserver" in reason and not retryable


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


def used(model_id: str, size: int, last_used: int, uses: int, clock: float = 0.0) -> ResidentCopy:
    return ResidentCopy(model_id, size, last_used, True, uses, clock)


def test_gdsf_evicts_large_rarely_used_copies_before_small_popular_ones_whatever_their_recency():
    inst = instance("a", 100, [used("big-rare", 60, 900, uses=2), used("small-hot", 20, 10, uses=50)])
    assert [v.model_id for v in victims_for(inst, 50, "gdsf")] == ["big-rare"]
    assert [v.model_id for v in victims_for(inst, 50, "lru")] == ["small-hot", "big-rare"]


def test_gdsf_priority_is_the_clock_at_last_use_plus_uses_per_byte():
    assert gdsf_priority(used("m", 50, 1, uses=10, clock=0.5)) == 0.5 + 10 / 50


def test_gdsf_clock_rises_to_the_dearest_victim_and_never_falls():
    victims = [used("a", 10, 1, uses=1), used("b", 10, 1, uses=3)]
    assert gdsf_clock(0.0, victims) == 0.3
    assert gdsf_clock(1.0, victims) == 1.0
    assert gdsf_clock(0.2, []) == 0.2


def test_gdsf_ages_copies_no_longer_used_behind_copies_used_since_the_clock_rose():
    # Once popular, idle since; the other used once after evictions raised the clock.
    inst = instance("a", 100, [used("stale", 50, 10, uses=20, clock=0.0), used("fresh", 50, 900, 1, clock=1.0)])
    assert [v.model_id for v in victims_for(inst, 10, "gdsf")] == ["stale"]


def test_gdsf_picks_the_instance_whose_dearest_victim_is_worth_least():
    a = instance("a", 100, [used("a-hot", 100, 10, uses=500)])
    b = instance("b", 100, [used("b-cold", 100, 900, uses=1)])
    assert choose_instance("t", 50, [a, b], eviction="gdsf").instance_id == "b"
    assert choose_instance("t", 50, [a, b], eviction="lru").instance_id == "a"


def test_an_unknown_eviction_policy_is_refused():
    with pytest.raises(ValueError, match="fifo"):
        victims_for(instance("a", 10, [copy("m", 10, 1)]), 5, "fifo")
