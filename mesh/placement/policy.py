"""Choosing where a model loads and which copies make room: pure functions over records, no I/O.

The ranking follows ModelMesh's placement order in spirit: an instance that fits the model without evicting
anything beats one that must evict; among those that fit, fewer loads in flight, then more free space (device
memory first, for a model that needs some); among
those that must evict, the one whose victims were used least recently (this is what makes the LRU
cluster-wide rather than per instance), then fewer victims. Ties break on instance id so a decision is
deterministic for the same inputs.

Memory has two dimensions: host bytes, and accelerator (GPU) bytes for runtimes that report devices. A copy fits
where both have room; eviction frees the dimension that is short (a copy holding no device memory is no victim
when only device memory is short).

Which copies are "worth least" is the eviction policy: "lru" (least recently used first, the default), "gdsf"
(Greedy-Dual-Size-Frequency: lowest clock + uses / size first, so large, rarely used copies go before small,
popular ones; the clock rises to each evicted copy's priority, which ages copies no longer used) or "cost"
(GDSF with each model's measured load time as its cost: clock + uses × load time / size, so a copy that takes
20 s to load again is kept over one that takes 20 ms, at the same size and use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mesh.placement.records import InstanceRecord


@dataclass(frozen=True)
class ResidentCopy:
    """A copy on an instance, as eviction sees it."""

    model_id: str
    size_bytes: int
    last_used_ms: int
    # Loading copies and copies serving requests right now are never victims.
    evictable: bool
    # For "gdsf" only: the requests counted for the model, and the GDSF clock when the last one was counted.
    uses: int = 0
    clock: float = 0.0
    device_bytes: int = 0
    # For "cost" only: how long the model's last load took (0: not measured yet, counted as 1 ms).
    load_ms: int = 0


@dataclass(frozen=True)
class InstanceView:
    record: InstanceRecord
    copies: Sequence[ResidentCopy]
    loads_in_flight: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(c.size_bytes for c in self.copies)

    @property
    def free_bytes(self) -> int:
        return self.record.capacity_bytes - self.used_bytes

    @property
    def used_device_bytes(self) -> int:
        return sum(c.device_bytes for c in self.copies)

    @property
    def free_device_bytes(self) -> int:
        return self.record.device_capacity_bytes - self.used_device_bytes


@dataclass(frozen=True)
class LoadPlan:
    """Where a new copy goes, and the copies to evict there first."""

    instance_id: str
    victims: tuple[ResidentCopy, ...]
    ranking: tuple[str, ...] = ()
    """How the instances compared when it was chosen, best first (Verdict.summary), where the chooser kept it."""


EVICTION_POLICIES = ("lru", "gdsf", "cost")
CLOCKED_POLICIES = ("gdsf", "cost")
"""The policies that count uses and keep a clock (Greedy-Dual's)."""


def gdsf_priority(copy: ResidentCopy, eviction: str = "gdsf") -> float:
    """GDSF's H: the clock when the copy was last used plus its uses per byte, times the cost of loading it
    again: 1 per load for "gdsf", its measured load time in ms for "cost"."""
    cost = max(copy.load_ms, 1) if eviction == "cost" else 1
    return copy.clock + copy.uses * cost / max(copy.size_bytes, 1)


def gdsf_clock(clock: float, victims: Iterable[ResidentCopy], eviction: str = "gdsf") -> float:
    """The GDSF clock after evicting victims: it rises to the highest priority evicted, never falls."""
    return max([clock, *(gdsf_priority(v, eviction) for v in victims)])


def _worth(eviction: str) -> Callable[[ResidentCopy], tuple]:
    """Sort key for copies, least worth keeping first."""
    if eviction == "lru":
        return lambda c: (c.last_used_ms, c.model_id)
    if eviction in CLOCKED_POLICIES:
        return lambda c: (gdsf_priority(c, eviction), c.last_used_ms, c.model_id)
    raise ValueError(f"unknown eviction policy {eviction!r}; expected one of {', '.join(EVICTION_POLICIES)}")


def victims_for(
    instance: InstanceView, size_bytes: int, eviction: str = "lru", device_bytes: int = 0, protect_after_ms: int = 0
) -> tuple[ResidentCopy, ...] | None:
    """The evictable copies worth least under the eviction policy whose removal frees size_bytes of host memory
    and device_bytes of device memory; only copies that free a dimension still short are taken, and none used
    after protect_after_ms (the thrash guard's; 0: any). None if impossible."""
    needed, needed_device = size_bytes - instance.free_bytes, device_bytes - instance.free_device_bytes
    if needed <= 0 and needed_device <= 0:
        return ()
    chosen: list[ResidentCopy] = []
    candidates = (
        c for c in instance.copies if c.evictable and not (protect_after_ms and c.last_used_ms > protect_after_ms)
    )
    for copy in sorted(candidates, key=_worth(eviction)):
        if not (needed > 0 and copy.size_bytes > 0 or needed_device > 0 and copy.device_bytes > 0):
            continue  # frees nothing that is short
        chosen.append(copy)
        needed -= copy.size_bytes
        needed_device -= copy.device_bytes
        if needed <= 0 and needed_device <= 0:
            return tuple(chosen)
    return None


def choose_instance(
    model_type: str,
    size_bytes: int,
    instances: Iterable[InstanceView],
    excluded: frozenset[str] = frozenset(),
    eviction: str = "lru",
    labels: tuple[str, ...] = (),
    device_bytes: int = 0,
    preferred: tuple[str, ...] = (),
    protect_after_ms: int = 0,
) -> LoadPlan | None:
    """The best instance for a new copy of size_bytes (and device_bytes of device memory), with the copies to evict
    first; None when nothing can hold it.

    `excluded` holds instances that already have a copy or recently failed to load this model; `labels`, those an
    instance must carry (ModelRecord.labels); `preferred`, those it should (among the instances that fit without
    evicting, and among those that must evict, the ones carrying more of them come first). Among instances
    that must evict, the one whose most valuable victim is worth least (under `eviction`) wins. Copies used after
    `protect_after_ms` are no victims (the thrash guard's; 0: none protected).
    """
    demand = Demand(model_type, size_bytes, labels, device_bytes, preferred, protect_after_ms)
    ranked = [
        (verdict.rank, verdict.plan)
        for inst in instances
        if inst.record.instance_id not in excluded and (verdict := assess(inst, demand, eviction)).plan is not None
    ]
    return min(ranked, key=lambda r: r[0])[1] if ranked else None


@dataclass(frozen=True)
class Demand:
    """What a new copy needs of an instance (choose_instance's arguments, as one value)."""

    model_type: str
    size_bytes: int
    labels: tuple[str, ...] = ()
    device_bytes: int = 0
    preferred: tuple[str, ...] = ()
    protect_after_ms: int = 0


@dataclass(frozen=True)
class Verdict:
    """One instance's answer to a new copy: its plan and rank (lower is better), or no plan and why not."""

    instance_id: str
    plan: LoadPlan | None
    rank: tuple = ()
    why_not: str = ""

    @property
    def order(self) -> tuple:
        """Sort key: instances that can take the copy first, best rank first."""
        return (self.plan is None, self.rank, self.instance_id)

    @property
    def summary(self) -> str:
        if self.plan is None:
            return f"{self.instance_id}: {self.why_not}"
        if not self.plan.victims:
            return f"{self.instance_id}: fits in free memory"
        return f"{self.instance_id}: would evict {', '.join(v.model_id for v in self.plan.victims)}"


def assess(inst: InstanceView, demand: Demand, eviction: str) -> Verdict:
    """Whether and how the instance could take the copy: choose_instance's test for one instance, with its reason."""
    rec = inst.record
    if not rec.supports(demand.model_type):
        return Verdict(rec.instance_id, None, why_not=f"does not serve model type '{demand.model_type}'")
    if not rec.supports(demand.model_type, demand.labels):
        return Verdict(rec.instance_id, None, why_not=f"lacks a required label ({', '.join(demand.labels)})")
    if not _fits(rec, demand.size_bytes, demand.device_bytes):
        return Verdict(rec.instance_id, None, why_not=f"too small: holds {rec.capacity_bytes} bytes in all")
    victims = victims_for(inst, demand.size_bytes, eviction, demand.device_bytes, demand.protect_after_ms)
    if victims is None:
        return Verdict(
            rec.instance_id,
            None,
            why_not="no room: the copies it would evict are loading, serving, pinned or held by the thrash guard",
        )
    unpreferred = -len(set(demand.preferred) & set(rec.labels))
    if victims:
        # For lru, the newest use among the victims: the LRU is cluster-wide, not per instance.
        dearest_victim = max(_worth(eviction)(v)[0] for v in victims)
        rank: tuple = (1, unpreferred, dearest_victim, len(victims), inst.loads_in_flight, rec.instance_id)
    else:
        # A model on an accelerator goes where most device memory is free: that is the scarce dimension.
        device_free = -inst.free_device_bytes if demand.device_bytes else 0
        rank = (0, unpreferred, inst.loads_in_flight, device_free, -inst.free_bytes, len(inst.copies), rec.instance_id)
    return Verdict(rec.instance_id, LoadPlan(rec.instance_id, victims), rank)


def _fits(record: InstanceRecord, size_bytes: int, device_bytes: int) -> bool:
    """Whether the instance could hold the copy at all, empty."""
    return size_bytes <= record.capacity_bytes and device_bytes <= record.device_capacity_bytes


def over_capacity(instance: InstanceView, eviction: str = "lru") -> tuple[ResidentCopy, ...]:
    """Copies to evict when a measured size turned out larger than predicted and the instance overflows."""
    if instance.free_bytes >= 0 and instance.free_device_bytes >= 0:
        return ()
    return victims_for(instance, 0, eviction) or ()


def why_unplaceable(
    model_type: str,
    size_bytes: int,
    instances: Sequence[InstanceRecord],
    labels: tuple[str, ...] = (),
    device_bytes: int = 0,
) -> tuple[str, bool]:
    """Why choose_instance found nowhere to load, and whether trying again later can help."""
    if not instances:
        return "no runtime instances are registered", True
    if not any(i.supports(model_type) for i in instances):
        return f"no runtime instance supports model type '{model_type}'", False
    typed = [i for i in instances if i.supports(model_type, labels)]
    if not typed:
        wanted = ", ".join(labels)
        return f"no runtime instance of model type '{model_type}' carries the labels it requires: {wanted}", False
    largest = max(i.capacity_bytes for i in typed)
    if size_bytes > largest:
        return f"it needs {size_bytes} bytes but the largest instance for '{model_type}' holds {largest}", False
    largest_device = max(i.device_capacity_bytes for i in typed)
    if device_bytes > largest_device:
        return (
            f"it needs {device_bytes} bytes of accelerator memory but the most any instance for '{model_type}' "
            f"offers is {largest_device}",
            False,
        )
    return (
        "every instance that could hold it is busy loading or serving the models it would evict (or they are pinned)",
        True,
    )
