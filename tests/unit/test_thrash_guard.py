"""The thrash guard (placement/thrash.py): when it turns on and off, what it protects, and what a held-back load
gets: a refusal with a retry-after hint, or a bounded wait until a copy may go."""

from __future__ import annotations

import asyncio
import time

import pytest
from harness.fakes import MB, FakeRuntime
from test_eviction import use_in_turn

from mesh.errors import Overloaded
from mesh.placement import policy
from mesh.placement.records import InstanceRecord
from mesh.placement.thrash import HeldBack, ThrashGuard, ThrashSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **settings: object) -> tuple[ThrashGuard, list[bool]]:
    changes: list[bool] = []
    values = {"mode": "refuse", "young_s": 10.0, "trigger": 3, "window_s": 30.0, **settings}
    return ThrashGuard(ThrashSettings(**values), on_change=changes.append, clock=clock), changes  # type: ignore[arg-type]


def test_models_loaded_again_soon_after_their_eviction_turn_it_on_and_quiet_turns_it_off() -> None:
    clock = Clock()
    thrash, changes = guard(clock)
    thrash.evicted("one-shot")  # never asked for again: the cache working, not churn
    thrash.loading("new")  # never evicted
    thrash.evicted("late")
    clock.now += 11
    thrash.loading("late")  # loaded again, but 11 s after its eviction (young_s is 10)
    for model in ("a", "b"):
        thrash.evicted(model)
        clock.now += 1
        thrash.loading(model)
    assert not thrash.on and thrash.protect_after_ms() == 0
    thrash.evicted("c")
    thrash.loading("c")
    assert thrash.on and changes == [True]
    assert thrash.protect_after_ms() == int((clock.now - 10.0) * 1000)

    clock.now += 20
    thrash.held_back()  # a load it held back: the pressure goes on
    clock.now += 20
    assert thrash.on  # 40 s since the last reload of an evicted model, 20 since the last held-back load
    clock.now += 11
    assert not thrash.on and changes == [True, False]
    assert thrash.protect_after_ms() == 0


def test_reloads_spread_wider_than_the_window_do_not_turn_it_on() -> None:
    clock = Clock()
    thrash, changes = guard(clock)
    for i in range(5):
        thrash.evicted(f"m{i}")
        thrash.loading(f"m{i}")
        clock.now += 16  # at most two within any 30 s
    assert not thrash.on and changes == []


def test_off_mode_never_turns_on() -> None:
    clock = Clock()
    thrash, changes = guard(clock, mode="off")
    for i in range(10):
        thrash.evicted(f"m{i}")
        thrash.loading(f"m{i}")
    assert not thrash.on and changes == []


def test_a_protected_copy_is_no_victim_even_when_least_recently_used() -> None:
    record = InstanceRecord("rt", "127.0.0.1:1", capacity_bytes=2 * MB)
    copies = (
        policy.ResidentCopy("old", MB, last_used_ms=1_000, evictable=True),
        policy.ResidentCopy("recent", MB, last_used_ms=9_000, evictable=True),
    )
    view = policy.InstanceView(record, copies)
    assert policy.victims_for(view, MB) == (copies[0],)
    assert policy.victims_for(view, MB, protect_after_ms=500) is None
    assert policy.victims_for(view, MB, protect_after_ms=5_000) == (copies[0],)


async def test_refuse_mode_refuses_at_once_and_counts_it() -> None:
    outcomes: list[str] = []
    thrash = ThrashGuard(ThrashSettings(mode="refuse"), count_held_back=outcomes.append)
    with pytest.raises(Overloaded):
        await HeldBack(thrash).wait(Overloaded("busy", retry_after_s=30.0))
    assert outcomes == ["refused"]


async def test_queue_mode_waits_for_the_hint_then_gives_up_at_its_bound() -> None:
    outcomes: list[str] = []
    thrash = ThrashGuard(ThrashSettings(mode="queue", queue_s=0.3), count_held_back=outcomes.append)
    held_back = HeldBack(thrash)
    started = time.monotonic()
    await held_back.wait(Overloaded("busy", retry_after_s=0.1))  # waits the hint, then decides again
    assert 0.09 <= time.monotonic() - started < 0.3 and thrash.queued == 0
    with pytest.raises(Overloaded):
        for _ in range(10):  # each wait takes the hint or what is left of the bound, whichever is shorter
            await held_back.wait(Overloaded("busy", retry_after_s=0.1))
    assert time.monotonic() - started >= 0.3
    assert outcomes == ["queued", "timed_out"]


async def test_a_full_queue_refuses_at_once() -> None:
    outcomes: list[str] = []
    thrash = ThrashGuard(ThrashSettings(mode="queue", queue_limit=1), count_held_back=outcomes.append)
    waiting = asyncio.create_task(HeldBack(thrash).wait(Overloaded("busy", retry_after_s=5.0)))
    await asyncio.sleep(0)  # the task runs until its wait
    assert thrash.queued == 1
    with pytest.raises(Overloaded):
        await HeldBack(thrash).wait(Overloaded("busy", retry_after_s=5.0))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert outcomes == ["queued", "refused"] and thrash.queued == 0


THRASHING = {"thrash_guard": "refuse", "thrash_trigger": 1, "thrash_young_seconds": 60.0, "thrash_window_seconds": 60.0}


async def test_once_on_a_cold_miss_that_would_evict_a_model_in_use_is_refused_and_hot_ones_still_load(
    make_cluster,
):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    router = await make_cluster(runtime, **THRASHING).router()
    await router.register("a", "b", "c", "cold")
    await use_in_turn(router, "a", "b", "c")  # c evicts a
    await router.use("a")  # a is loaded again moments after its eviction (evicting b): churn, the guard turns on
    assert runtime.unloads == ["a", "b"] and router.manager.thrash_guard.on

    with pytest.raises(Overloaded, match="thrash guard") as refused:
        await router.use("cold")
    assert 59.0 < refused.value.retry_after_s <= 60.0  # when c, the older copy in use, may go
    assert runtime.unloads == ["a", "b"] and set(runtime.loaded) == {"a", "c"}
    await router.use("a")  # hits keep flowing
    await router.use("c")
    await router.use("b")  # b is in use itself (used within the last minute): it takes its place back
    assert runtime.unloads == ["a", "b", "a"]


async def test_in_queue_mode_a_held_back_miss_loads_once_a_copy_has_been_idle_long_enough(make_cluster):
    runtime = FakeRuntime("rt-a", capacity_bytes=2 * MB)
    settings = {**THRASHING, "thrash_guard": "queue", "thrash_young_seconds": 0.5, "thrash_queue_seconds": 5.0}
    router = await make_cluster(runtime, **settings).router()
    await router.register("a", "b", "c", "cold")
    await use_in_turn(router, "a", "b", "c", "a")  # a evicted by c, then loaded again: the guard turns on
    assert router.manager.thrash_guard.on
    started = time.monotonic()
    await router.use("cold")  # waits until c has gone unused for 0.5 s, then evicts it
    assert time.monotonic() - started >= 0.3
    assert runtime.unloads == ["a", "b", "c"] and set(runtime.loaded) == {"a", "cold"}
