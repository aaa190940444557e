"""Scenario 9, thrash: a hot core that fills the cache, and a stream of cold models, with the thrash guard off,
refusing, and queueing.

`mesh serve` with two built-in runtimes, each holding 6 echo models (1 MiB each, every load taking 100 ms): the
12 hot models fill the cache exactly. A client process runs two groups of closed-loop workers at once: hot workers
cycling over the 12 hot models, and cold workers sending each of 400 cold models once, in turn (each one a miss).
A second case leaves room: 10 hot models, and one cold worker pausing 0.25 s between requests: cold models pass
through the two free places, nothing churns, and the guard must stay off there.
Without the guard every cold load evicts a hot model (the least recently used copy, used moments ago), whose next
request is a miss that evicts another: the cache thrashes. With it (`MESH_THRASH_GUARD=refuse|queue`), once young
evictions are seen, cold loads may evict only copies idle for `thrash_young_seconds` (2 s here), none of which
exist, so they are refused with a retry-after hint (the cold workers wait that long, up to 1 s, as a client that
honours it would) or wait for one (queue, up to 1 s), and the hot core stays loaded.

Reported per mode: hot requests' p50/p99 and rate, every request served per second, cold requests served and
refused, loads during the window. Targets: with the guard, hot p99 and the served rate beat the run without it
(measured in the same run). A Python client: the question is which requests a thrashing cache serves, not the
router's per-request cost (scenarios 1 and 7 measure that with h2load).

    python -m bench --only thrash
    python -m bench.thrash [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.churn import infer_request, register_echo_models, start_mesh
from bench.common import PY, REPO, client_mode, loadavg, machine, print_targets

RUNTIMES, PER_RUNTIME = 2, 6
HOT = [f"hot-{i:02d}" for i in range(RUNTIMES * PER_RUNTIME)]
SPARE, SPARE_COLD_PAUSE_S = 2, 0.25
"""The other case: a hot core of all but SPARE models, and cold requests paced (one cold worker pausing
SPARE_COLD_PAUSE_S after each), so that cold models pass through the room left: no churn, and the guard should
stay off."""
COLD = [f"cold-{i:03d}" for i in range(400)]
BALLAST_BYTES = 1024 * 1024
LOAD_SECONDS = 0.1
HOT_WORKERS, COLD_WORKERS = 8, 2
MAX_BACKOFF_S = 1.0
CASES = {
    "full": [("full", "off"), ("full", "refuse"), ("full", "queue"), ("spare", "off"), ("spare", "refuse")],
    "quick": [("full", "off"), ("full", "refuse")],
}
"""(case, guard mode) runs: "full" = the hot core fills the cache; "spare" = it leaves SPARE models' room."""
GUARD = {"MESH_THRASH_YOUNG_SECONDS": "2", "MESH_THRASH_TRIGGER": "3", "MESH_THRASH_WINDOW_SECONDS": "10",
         "MESH_THRASH_QUEUE_SECONDS": "1"}  # fmt: skip
FULL = {"seconds": 10.0, "warmup": 2.0}
QUICK = {"seconds": 2.0, "warmup": 1.0}
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# ---- the client process ------------------------------------------------------------------------------------


async def _client(plan: dict) -> dict:
    import grpc

    channel = grpc.aio.insecure_channel(plan["address"])
    call = channel.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    bodies = {m: infer_request(m) for m in HOT + COLD}
    hot_models = HOT[: len(HOT) - SPARE] if plan["case"] == "spare" else HOT
    records: list[list] = []
    try:
        for model in hot_models:  # the hot core loaded before the clock starts
            await call(bodies[model], timeout=60, wait_for_ready=True)
        measure_from = time.time() + plan["warmup"]
        stop_at = measure_from + plan["seconds"]
        cold_next = 0

        async def worker(group: str, offset: int) -> None:
            nonlocal cold_next
            position = offset
            while (started := time.time()) < stop_at:
                if group == "hot":
                    model, position = hot_models[position % len(hot_models)], position + 1
                else:
                    model, cold_next = COLD[cold_next % len(COLD)], cold_next + 1
                code, backoff = "OK", 0.0
                try:
                    await call(bodies[model], timeout=60)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    pushback = dict(exc.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                    backoff = min(int(pushback) / 1000, MAX_BACKOFF_S) if pushback else 0.0
                if started >= measure_from:
                    records.append([group, model, started, time.time(), code])
                if backoff:
                    await asyncio.sleep(backoff)  # a client honouring the retry hint
                elif group == "cold" and plan["case"] == "spare":
                    await asyncio.sleep(SPARE_COLD_PAUSE_S)

        await asyncio.gather(
            *(worker("hot", i * 3) for i in range(HOT_WORKERS)),
            *(worker("cold", 0) for _ in range(COLD_WORKERS if plan["case"] == "full" else 1)),
        )
    finally:
        await channel.close()
    return {"records": records, "window": [measure_from, stop_at]}


# ---- one mode ----------------------------------------------------------------------------------------------


def _placement_events(log_path: Path) -> list[tuple[float, str]]:
    """(time, event) of the router's placement log events (its JSON log)."""
    from datetime import datetime

    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") and record.get("logger", "").startswith("mesh.placement"):
            ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            found.append((ts, record["event"]))
    return found


def measure(case: str, mode: str, params: dict) -> dict:
    env = {"MESH_THRASH_GUARD": mode, **GUARD}
    with tempfile.TemporaryDirectory(prefix=f"mesh-thrash-{case}-{mode}-") as tmp:
        workdir = Path(tmp)
        process, address, log_path = start_mesh(workdir, RUNTIMES, PER_RUNTIME, BALLAST_BYTES, env)
        try:
            register_echo_models(address, workdir, HOT + COLD, BALLAST_BYTES, LOAD_SECONDS)
            plan_path, results_path = workdir / "plan.json", workdir / "results.json"
            plan_path.write_text(json.dumps({**params, "address": address, "case": case}))
            subprocess.run(
                [PY, "-m", "bench.thrash", "--client", str(plan_path), str(results_path)],
                cwd=REPO,
                check=True,
                timeout=params["seconds"] + params["warmup"] + 180,
            )
            results = json.loads(results_path.read_text())
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        events = _placement_events(log_path)
        start, end = results["window"]
        loads = sum(1 for ts, event in events if event == "loaded" and start <= ts <= end)
        row = analyse(results, params["seconds"], loads)
        return {"case": case, "mode": mode, **row, "guard_turned_on": sum(e == "thrash_guard_on" for _, e in events)}


def analyse(results: dict, seconds: float, loads: int) -> dict[str, Any]:
    records = results["records"]
    hot = [(end - start) * 1000 for group, _, start, end, code in records if group == "hot" and code == "OK"]
    cold = [code for group, _, _, _, code in records if group == "cold"]
    served = sum(1 for *_, code in records if code == "OK")
    return {
        "hot_p50_ms": float(np.percentile(hot, 50)) if hot else float("nan"),
        "hot_p99_ms": float(np.percentile(hot, 99)) if hot else float("nan"),
        "hot_rps": len(hot) / seconds,
        "hot_failed": sum(1 for group, *_, code in records if group == "hot" and code != "OK"),
        "served_rps": served / seconds,
        "cold_served": cold.count("OK"),
        "cold_refused": sum(1 for code in cold if code == "RESOURCE_EXHAUSTED"),
        "cold_other": sum(1 for code in cold if code not in ("OK", "RESOURCE_EXHAUSTED")),
        "loads": loads,
    }


def targets(rows: list[dict]) -> list[dict]:
    by_run = {(r["case"], r["mode"]): r for r in rows}
    off, found = by_run[("full", "off")], []
    for mode in ("refuse", "queue"):
        row = by_run.get(("full", mode))
        if row is None:
            continue
        found.append(
            {
                "name": f"hot p99 with the guard ({mode}) below the run without it",
                "met": row["hot_p99_ms"] < off["hot_p99_ms"],
                "detail": f"{row['hot_p99_ms']:.1f} vs {off['hot_p99_ms']:.1f} ms"
                f" ({row['hot_p99_ms'] / off['hot_p99_ms']:.2f}×)",
            }
        )
        found.append(
            {
                "name": f"requests served per second with the guard ({mode}) above the run without it",
                "met": row["served_rps"] > off["served_rps"],
                "detail": f"{row['served_rps']:.0f} vs {off['served_rps']:.0f} req/s"
                f" ({row['served_rps'] / off['served_rps']:.2f}×)",
            }
        )
    spare_off, spare_on = by_run.get(("spare", "off")), by_run.get(("spare", "refuse"))
    if spare_off and spare_on:
        found.append(
            {
                "name": "with room to spare the guard stays off and cold models are served as without it (≥ 0.9×)",
                "met": spare_on["guard_turned_on"] == 0 and spare_on["cold_served"] >= 0.9 * spare_off["cold_served"],
                "detail": f"turned on {spare_on['guard_turned_on']} times; cold served {spare_on['cold_served']}"
                f" vs {spare_off['cold_served']}",
            }
        )
    return found


def markdown(rows: list[dict]) -> str:
    lines = [
        "| hot core | guard | hot p50 / p99 ms | hot req/s | hot failed | served req/s"
        " | cold served / refused / other | loads |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        core = "fills the cache" if r["case"] == "full" else f"leaves {SPARE} models' room"
        lines.append(
            f"| {core} | {r['mode']} | {r['hot_p50_ms']:.1f} / {r['hot_p99_ms']:.1f} | {r['hot_rps']:.0f}"
            f" | {r['hot_failed']}"
            f" | {r['served_rps']:.0f} | {r['cold_served']} / {r['cold_refused']} / {r['cold_other']} | {r['loads']} |"
        )
    return "\n".join(lines)


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    rows = [measure(case, mode, params) for case, mode in CASES["quick" if quick else "full"]]
    return {
        "parameters": {**params, "guard": GUARD, "hot_workers": HOT_WORKERS, "cold_workers": COLD_WORKERS},
        "rows": rows,
        "markdown": markdown(rows),
        "targets": targets(rows),
        "loadavg_after": loadavg(),
    }


def main() -> None:
    if client_mode(_client):
        return
    parser = argparse.ArgumentParser(prog="python -m bench.thrash", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=FULL["seconds"])
    parser.add_argument("--json", type=Path, help="also write the machine and the rows here")
    args = parser.parse_args()
    params = {**FULL, "seconds": args.seconds}
    rows = [measure(case, mode, params) for case, mode in CASES["full"]]
    print(markdown(rows))
    print_targets(targets(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "params": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
