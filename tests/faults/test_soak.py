"""Soak: mixed traffic over 1,000 registered models on 3 runtimes, with a random process killed every 20 s.

`pytest tests/faults/test_soak.py --soak-seconds 600 -s` is the full 10-minute run (docs/reliability.md shows
one); CI runs the 60 s default. Reported (printed, and written as JSON with --soak-report PATH): requests served
and failed by status, p99 latency, loads, evictions, kills; asserted: every request answered (served or
retryable), no registration lost, no process left behind, and the surviving router's file descriptors and
memory within a stated bound of where they were after warm-up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path

import pytest
from harness.cluster import Cluster, ClusterFactory
from workload import Workload, consistent

pytestmark = pytest.mark.slow

MODELS = 1000
MB = 1024 * 1024
BALLAST = 64 * 1024  # ~60 copies fit per runtime: ~180 of the 1,000 are resident at once
KILL_EVERY_S = 20.0
WARM_UP_S = 5.0
FD_GROWTH_BOUND = 64
RSS_GROWTH_BOUND_MB = 64.0
ZIPF_ALPHA = 1.0


def _zipf_chooser(model_ids: list[str], seed: int) -> object:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** ZIPF_ALPHA for rank in range(len(model_ids))]
    return lambda _turn: rng.choices(model_ids, weights)[0]


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _processes_of(directory: Path) -> list[str]:
    """Live processes whose command line names this cluster's folder (every runtime and router does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(directory) in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


async def _register_all(cluster: Cluster, model_ids: list[str]) -> None:
    gate = asyncio.Semaphore(32)

    async def one(model_id: str) -> None:
        async with gate:
            await cluster.register_echo(model_id, ballast_bytes=BALLAST, router=len(model_id) % 2)

    await asyncio.gather(*(one(m) for m in model_ids))


async def _kill_one(cluster: Cluster, rng: random.Random, kills: list[str]) -> None:
    """A runtime most times, router-0 every third time (router-1 is never killed: it is the one measured)."""
    if len(kills) % 3 == 2:
        cluster.routers[0].kill()
        kills.append("router-0")
        await asyncio.sleep(0.5)
        await cluster.restart_router(0)
        return
    index = rng.randrange(len(cluster.runtimes))
    cluster.runtimes[index].kill()
    kills.append(cluster.runtimes[index].name)
    await asyncio.sleep(0.5)
    await cluster.restart_runtime(index)


def _error_lines(cluster: Cluster, limit: int = 80) -> list[str]:
    """Every process's tracebacks (those of cancelled tasks left out) and error lines, for a broken answer's cause."""
    lines: list[str] = []
    for node in cluster.nodes:
        block: list[str] = []
        for line in node.log().splitlines():
            if block and (line.startswith((" ", "\t")) or line.startswith("Traceback")):
                block.append(line)
                continue
            if block:  # the exception's own line ends a traceback
                if "CancelledError" not in line:
                    lines += [f"{node.name}: {text}" for text in [*block, line]]
                block = []
            elif line.startswith("Traceback"):
                block = [line]
            elif " ERROR " in line:
                lines.append(f"{node.name}: {line}")
    return lines[:limit]


async def test_soak(make_cluster: ClusterFactory, request: pytest.FixtureRequest) -> None:
    seconds: float = request.config.getoption("--soak-seconds")
    cluster = await make_cluster(runtimes=3, routers=2, capacity_bytes=4 * MB)
    model_ids = [f"soak-{i:04d}" for i in range(MODELS)]
    await _register_all(cluster, model_ids)
    await cluster.wait_registered(model_ids)

    workload = Workload(
        cluster, model_ids, clients=8, choose=_zipf_chooser(model_ids, seed=7), max_seconds=WARM_UP_S + seconds + 60
    ).start()
    served_at: list[tuple[float, int]] = []  # (seconds into the run, served so far): traffic must go on throughout
    await asyncio.sleep(WARM_UP_S)
    measured = cluster.routers[1]
    fds_before, rss_before = _fds(measured.pid), _rss_mb(measured.pid)

    rng = random.Random(11)
    kills: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(min(KILL_EVERY_S, max(0.0, seconds - (time.monotonic() - started))))
        served_at.append((round(time.monotonic() - started, 1), workload.outcomes.served))
        if time.monotonic() - started < seconds:
            await _kill_one(cluster, rng, kills)
    outcomes = await workload.stop()
    fds_after, rss_after = _fds(measured.pid), _rss_mb(measured.pid)

    lost = {router.name: MODELS - len(await router.models()) for router in cluster.routers}
    logs = [runtime.log() for runtime in cluster.runtimes]
    report = {
        "seconds": seconds,
        "models": MODELS,
        "kills": kills,
        "served": outcomes.served,
        "failed": dict(outcomes.retryable),
        "broken": outcomes.broken[:20],
        "p99_ms": round(outcomes.p99_s() * 1000, 1),
        "loads": sum(log.count("loadModel ") for log in logs),
        "evictions": sum(log.count("unloaded model ") for log in logs),
        "lost_registrations": lost,
        "router_fds": [fds_before, fds_after],
        "router_rss_mb": [round(rss_before, 1), round(rss_after, 1)],
        "served_at": served_at,
    }
    if outcomes.broken:  # where the broken answers came from: the processes' errors
        report["error_lines"] = _error_lines(cluster)
    print(json.dumps(report, indent=2))
    if request.config.getoption("--soak-report"):
        await asyncio.to_thread(Path(request.config.getoption("--soak-report")).write_text, json.dumps(report))

    assert outcomes.broken == [], outcomes.broken
    assert outcomes.served > 10 * seconds, report
    stalls = [(a, b) for a, b in itertools.pairwise(served_at) if b[1] - a[1] < KILL_EVERY_S]
    assert stalls == [], f"traffic (nearly) stopped between these points: {stalls}"
    assert all(n == 0 for n in lost.values()), lost
    assert fds_after - fds_before <= FD_GROWTH_BOUND, report
    assert rss_after - rss_before <= RSS_GROWTH_BOUND_MB, report
    assert report["evictions"] > 0 and len(kills) >= 2, report
    await consistent(cluster, model_ids[:50])  # the hottest: every router agrees with the runtimes
    await cluster.stop()
    assert _processes_of(cluster.directory) == []
