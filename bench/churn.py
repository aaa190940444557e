"""Scenario 6, churn: many models on few runtimes under Zipf traffic, at rising concurrency (issue 19).

`mesh serve` with two built-in runtimes, each holding 8 of 40 echo models (1 MiB each, every load taking 50 ms);
a closed-loop client process sends ModelInfer requests whose models follow Zipf(1.0), with 1, 8, 32 and 64
workers. What each request was is read from the router's own JSON log, not guessed: a request is a miss when a
load of its model finished while it was in flight (it waited for that load), else a hit. Reported per
concurrency: throughput, hit and miss latency apart, loads per request, evictions of models that had a request
in flight at that moment; and two baselines measured in the same run: the loads per request a single LRU cache
of the same total capacity has on the same request sequence (simulated from the recorded trace), and the
latency of one hot, loaded model at the same concurrency.

    python -m bench --only churn            (the scenario, JSON and markdown)
    python -m bench.churn [--concurrency 1,8,32,64] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PY, REPO, client_mode, loadavg, machine, print_targets

MODELS = 40
PER_RUNTIME = 8
RUNTIMES = 2
BALLAST_BYTES = 1024 * 1024
LOAD_SECONDS = 0.05
ZIPF_S = 1.0
HOT_MODEL = "hot"
FULL = {"concurrency": [1, 8, 32, 64], "seconds": 10.0, "warmup": 3.0, "hot_seconds": 4.0, "rounds": 2}
QUICK = {"concurrency": [1, 8], "seconds": 2.0, "warmup": 1.0, "hot_seconds": 1.0, "rounds": 1}
START_TIMEOUT_S = 60.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Targets (issue 19).
LOADS_RATIO_MAX = 1.10  # loads per request at every concurrency, against concurrency 1's and the LRU simulation's
HIT_P50_RATIO_MAX = 2.0  # hit p50 against the hot model's p50 at the same concurrency
P50_AT_32_MAX_MS = 30.0


def model_id(rank: int) -> str:
    return f"m{rank:02d}"


def zipf_sequence(length: int, seed: int) -> list[int]:
    """Model ranks (0 = most popular) drawn from Zipf(ZIPF_S) over MODELS models."""
    weights = 1.0 / np.arange(1, MODELS + 1) ** ZIPF_S
    return list(np.random.default_rng(seed).choice(MODELS, size=length, p=weights / weights.sum()))


# ---- the client process ------------------------------------------------------------------------------------


def infer_request(model: str) -> bytes:
    from mesh.gen import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(bytes(64))
    return request.SerializeToString()


async def _cell(call: Any, models: list[str], workers: int, warmup: float, seconds: float) -> list[list]:
    """Closed loop: each worker sends the next request of `models` as soon as its last one is answered. Returns
    [model, start, end, ok] (wall-clock seconds) for the requests started in the measured window."""
    bodies = {m: infer_request(m) for m in set(models)}
    position = 0
    measure_from = time.time() + warmup
    stop_at = measure_from + seconds
    records: list[list] = []

    async def worker() -> None:
        nonlocal position
        while (started := time.time()) < stop_at:
            model = models[position % len(models)]
            position += 1
            try:
                await call(bodies[model], timeout=60)
                ok = True
            except Exception:  # noqa: BLE001 - counted, not raised: the run goes on
                ok = False
            if started >= measure_from:
                records.append([model, started, time.time(), ok])

    await asyncio.gather(*(worker() for _ in range(workers)))
    return records


async def _client(plan: dict) -> dict:
    import grpc

    channel = grpc.aio.insecure_channel(plan["address"])
    call = channel.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    cells: list[dict] = []
    try:
        await call(infer_request(HOT_MODEL), timeout=60, wait_for_ready=True)
        for round_no in range(plan["rounds"]):
            for workers in plan["concurrency"]:
                sequence = [model_id(r) for r in zipf_sequence(200_000, seed=round_no * 1000 + workers)]
                churn = await _cell(call, sequence, workers, plan["warmup"], plan["seconds"])
                hot = await _cell(call, [HOT_MODEL], workers, 0.5, plan["hot_seconds"])
                cells.append({"round": round_no, "concurrency": workers, "churn": churn, "hot": hot})
                print(
                    f"  round {round_no + 1} c={workers:<3} {len(churn) / plan['seconds']:7.0f} req/s", file=sys.stderr
                )
    finally:
        await channel.close()
    return {"cells": cells}


# ---- the router and its log --------------------------------------------------------------------------------


def start_mesh(
    workdir: Path, runtimes: int, per_runtime: int, ballast_bytes: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`mesh serve` with built-in runtimes that each hold per_runtime models of ballast_bytes, logging JSON (env:
    more MESH_* settings); the process, its gRPC address and its log."""
    port_file, log_path = workdir / "ports.json", workdir / "mesh.log"
    capacity_mb = (per_runtime + 0.5) * ballast_bytes / 1024 / 1024
    argv = [
        PY, "-m", "mesh", "--log-format", "json", "serve", "--runtimes", str(runtimes),
        "--capacity-mb", str(capacity_mb), "--kv", "memory://", "--grpc-port", "0", "--rest-port", "-1",
        "--no-examples", "--port-file", str(port_file), "--data-dir", str(workdir / "data"),
    ]  # fmt: skip
    env = {**os.environ, "MESH_METRICS_PORT": "-1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"mesh serve did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}", log_path


def register_echo_models(
    address: str, workdir: Path, model_ids: list[str], ballast_bytes: int, load_seconds: float, light: list[str] = ()
) -> None:
    """Echo models of ballast_bytes whose loads take load_seconds (and `light` ones of nothing), through the
    management API (`mesh models register -f`)."""
    config = workdir / "model.json"
    config.write_text(json.dumps({"ballast_bytes": ballast_bytes, "load_seconds": load_seconds}))
    empty = workdir / "light.json"
    empty.write_text("{}")
    models = [{"id": m, "type": "echo", "path": str(config)} for m in model_ids]
    models += [{"id": m, "type": "echo", "path": str(empty)} for m in light]
    spec = workdir / "models.json"
    spec.write_text(json.dumps({"models": models}))
    subprocess.run(
        [PY, "-m", "mesh", "models", "register", "-f", str(spec), "--address", address],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )


def _events(log_path: Path) -> dict[str, list[tuple[float, str]]]:
    """The router's load and eviction events: (time in seconds, model), in time order."""
    from datetime import datetime

    events: dict[str, list[tuple[float, str]]] = {"loaded": [], "evicting": []}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event") in events and record.get("logger", "").startswith("mesh.placement"):
            ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            events[record["event"]].append((ts, record["model"]))
    return {kind: sorted(found) for kind, found in events.items()}


# ---- analysis ----------------------------------------------------------------------------------------------


def lru_loads(sequence: list[str], capacity: int) -> int:
    """Loads a single LRU cache of `capacity` models makes on the sequence (every miss is one load)."""
    cache: OrderedDict[str, None] = OrderedDict()
    loads = 0
    for model in sequence:
        if model in cache:
            cache.move_to_end(model)
            continue
        loads += 1
        cache[model] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return loads


def analyse(records: list[list], events: dict[str, list[tuple[float, str]]], seconds: float) -> dict[str, float]:
    """One churn cell: throughput, hit and miss latency, loads per request, evictions of wanted models."""
    slack = 0.002  # the log's timestamps are milliseconds
    by_model: dict[str, list[float]] = {}
    for ts, model in events["loaded"]:
        by_model.setdefault(model, []).append(ts)
    hits, misses = [], []
    for model, start, end, _ok in records:
        times = by_model.get(model, [])
        i = bisect.bisect_left(times, start - slack)
        waited = i < len(times) and times[i] <= end + slack
        (misses if waited else hits).append((end - start) * 1000)
    window = (min(r[1] for r in records), max(r[2] for r in records)) if records else (0.0, 0.0)
    loads = sum(1 for ts, _ in events["loaded"] if window[0] <= ts <= window[1])
    in_flight: dict[str, list[tuple[float, float]]] = {}
    for model, start, end, _ok in records:
        in_flight.setdefault(model, []).append((start, end))
    evictions = [(ts, m) for ts, m in events["evicting"] if window[0] <= ts <= window[1]]
    wanted = sum(1 for ts, m in evictions if any(s <= ts <= e for s, e in in_flight.get(m, [])))
    ordered = [r[0] for r in sorted(records, key=lambda r: r[1])]
    everything = [*hits, *misses]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {
        "requests": len(records),
        "errors": sum(1 for r in records if not r[3]),
        "rps": len(records) / seconds,
        "p50_ms": pct(everything, 50),
        "p99_ms": pct(everything, 99),
        "hit_share": len(hits) / max(len(records), 1),
        "hit_p50_ms": pct(hits, 50),
        "hit_p99_ms": pct(hits, 99),
        "miss_p50_ms": pct(misses, 50),
        "miss_p99_ms": pct(misses, 99),
        "loads_per_request": loads / max(len(records), 1),
        "lru_loads_per_request": lru_loads(ordered, PER_RUNTIME * RUNTIMES) / max(len(ordered), 1),
        "evictions": len(evictions),
        "evictions_of_wanted": wanted,
    }


def summarize(cells: list[dict], events: dict, params: dict) -> list[dict]:
    """Per concurrency: the median over rounds of each churn figure, and the hot model's p50."""
    rows = []
    for workers in params["concurrency"]:
        runs = [c for c in cells if c["concurrency"] == workers]
        figures = [analyse(c["churn"], events, params["seconds"]) for c in runs]
        hot = [analyse(c["hot"], {"loaded": [], "evicting": []}, params["hot_seconds"]) for c in runs]
        row: dict[str, float] = {"concurrency": workers}
        for key in figures[0]:
            row[key] = float(np.median([f[key] for f in figures]))
        row["hot_p50_ms"] = float(np.median([h["p50_ms"] for h in hot]))
        row["hot_rps"] = float(np.median([h["rps"] for h in hot]))
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    by_c = {int(r["concurrency"]): r for r in rows}
    base = by_c[min(by_c)]
    found = []
    for c, row in sorted(by_c.items()):
        vs_c1 = row["loads_per_request"] / base["loads_per_request"]
        vs_lru = row["loads_per_request"] / row["lru_loads_per_request"]
        found.append(
            {
                "name": f"loads per request at c={c} within {LOADS_RATIO_MAX:.2f}× c=1's and the LRU simulation's",
                "met": vs_c1 <= LOADS_RATIO_MAX and vs_lru <= LOADS_RATIO_MAX,
                "detail": f"{vs_c1:.2f}× c=1, {vs_lru:.2f}× LRU",
            }
        )
        hit_ratio = row["hit_p50_ms"] / row["hot_p50_ms"]
        found.append(
            {
                "name": f"hit p50 at c={c} ≤ {HIT_P50_RATIO_MAX:.0f}× the hot model's",
                "met": hit_ratio <= HIT_P50_RATIO_MAX,
                "detail": f"{row['hit_p50_ms']:.1f} ms vs {row['hot_p50_ms']:.1f} ms ({hit_ratio:.1f}×)",
            }
        )
    if 32 in by_c:
        found.append(
            {
                "name": f"overall p50 at c=32 ≤ {P50_AT_32_MAX_MS:.0f} ms",
                "met": by_c[32]["p50_ms"] <= P50_AT_32_MAX_MS,
                "detail": f"{by_c[32]['p50_ms']:.1f} ms",
            }
        )
    if 32 in by_c and 8 in by_c:
        found.append(
            {
                "name": "throughput at c=32 ≥ at c=8",
                "met": by_c[32]["rps"] >= by_c[8]["rps"],
                "detail": f"{by_c[32]['rps']:.0f} vs {by_c[8]['rps']:.0f} req/s",
            }
        )
    return found


def markdown(rows: list[dict]) -> str:
    lines = [
        "| c | req/s | p50 / p99 ms | hits | hit p50 / p99 ms | hot p50 ms | miss p50 / p99 ms"
        " | loads/req (LRU sim) | evictions (of wanted) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']:.0f} | {r['rps']:.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.0f} | {r['hit_share']:.0%}"
            f" | {r['hit_p50_ms']:.1f} / {r['hit_p99_ms']:.0f} | {r['hot_p50_ms']:.1f}"
            f" | {r['miss_p50_ms']:.0f} / {r['miss_p99_ms']:.0f}"
            f" | {r['loads_per_request']:.3f} ({r['lru_loads_per_request']:.3f})"
            f" | {r['evictions']:.0f} ({r['evictions_of_wanted']:.0f}) |"
        )
    return "\n".join(lines)


def measure(params: dict) -> tuple[list[dict], dict]:
    """Start mesh, register the models, run the client process; the cells and the router's events."""
    with tempfile.TemporaryDirectory(prefix="mesh-churn-") as tmp:
        workdir = Path(tmp)
        process, address, log_path = start_mesh(workdir, RUNTIMES, PER_RUNTIME, BALLAST_BYTES)
        try:
            models = [model_id(r) for r in range(MODELS)]
            register_echo_models(address, workdir, models, BALLAST_BYTES, LOAD_SECONDS, light=[HOT_MODEL])
            plan_path, results_path = workdir / "plan.json", workdir / "results.json"
            plan_path.write_text(json.dumps({**params, "address": address}))
            cells_s = len(params["concurrency"]) * params["rounds"]
            budget = cells_s * (params["seconds"] + params["warmup"] + params["hot_seconds"] + 3) + 120
            subprocess.run(
                [PY, "-m", "bench.churn", "--client", str(plan_path), str(results_path)],
                cwd=REPO,
                check=True,
                timeout=budget,
            )
            cells = json.loads(results_path.read_text())["cells"]
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        return cells, _events(log_path)


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    cells, events = measure(params)
    rows = summarize(cells, events, params)
    return {
        "parameters": params,
        "rows": rows,
        "markdown": markdown(rows),
        "targets": targets(rows),
        "loadavg_after": loadavg(),
    }


def main() -> None:
    if client_mode(_client):
        return
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=FULL["concurrency"])
    parser.add_argument("--seconds", type=float, default=FULL["seconds"])
    parser.add_argument("--rounds", type=int, default=FULL["rounds"])
    parser.add_argument("--json", type=Path, help="also write the machine, the rows and the targets here")
    args = parser.parse_args()
    params = {**FULL, "concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds}
    cells, events = measure(params)
    rows = summarize(cells, events, params)
    print(markdown(rows))
    print_targets(targets(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "params": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
