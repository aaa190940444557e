"""SingleFlight (mesh/single_flight.py): one task per key for every caller, which no single caller can cancel."""

from __future__ import annotations

import asyncio

import pytest

from mesh.single_flight import SingleFlight


async def test_concurrent_callers_share_one_task_and_a_later_call_starts_afresh() -> None:
    flight: SingleFlight[str, int] = SingleFlight("load")
    started: list[int] = []
    gate = asyncio.Event()

    async def work() -> int:
        started.append(1)
        await gate.wait()
        return len(started)

    callers = [asyncio.create_task(flight.run("m", work)) for _ in range(10)]
    await asyncio.sleep(0)
    assert flight.running("m") is not None and flight.keys() == ["m"]
    gate.set()
    assert await asyncio.gather(*callers) == [1] * 10
    assert flight.running("m") is None
    assert await flight.run("m", work) == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_task_for_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight("load")
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "done"

    impatient = asyncio.create_task(flight.run("m", work))
    patient = asyncio.create_task(flight.run("m", work))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    gate.set()
    assert await patient == "done"


async def test_every_caller_gets_the_failure_and_cancel_forgets_the_key() -> None:
    flight: SingleFlight[str, None] = SingleFlight("load")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("broken")

    results = await asyncio.gather(flight.run("m", fail), flight.run("m", fail), return_exceptions=True)
    assert [str(r) for r in results] == ["broken", "broken"]

    forever = asyncio.create_task(flight.run("m", asyncio.Event().wait))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task = flight.cancel("m")
    assert task is not None and flight.running("m") is None
    with pytest.raises(asyncio.CancelledError):
        await forever
