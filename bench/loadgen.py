"""The load generator, in its own process so it never shares a GIL with a proxy it measures.

Reads a plan (JSON: targets, payloads, concurrency levels, rounds, durations) and writes one result per cell. Each cell
runs N workers on one grpc.aio channel, each sending pre-serialized ModelInfer bytes through a raw
`unary_unary` callable with identity serializers, so client-side protobuf work is not part of the measurement.
A request counts when it completes inside the measured window (after the warm-up, before the stop time). The CPU
time each process (this one, the runtime, the proxies) spends in that window is read from /proc: on a small
shared machine, CPU per request is the steadier measure of what a hop costs than throughput.

    python -m bench.loadgen PLAN.json RESULTS.json
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from mesh.gen import grpc_predict_v2_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CALL_TIMEOUT_S = 30.0
# The first request through mesh loads the model; loads are much slower than requests.
PRIME_TIMEOUT_S = 60.0


def _tensor_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


def _fp32(model: str, shape: list[int]) -> bytes:
    values = np.random.default_rng(0).random(shape, dtype=np.float32)
    return _tensor_request(model, "x", "FP32", shape, values.tobytes())


def _strings(model: str) -> bytes:
    # 64 strings of 32 bytes, in the v2 raw BYTES layout: a 4-byte little-endian length before each.
    items = [f"string {i:03d} of the bytes payload".encode().ljust(32, b".") for i in range(64)]
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    return _tensor_request(model, "s", "BYTES", [64], raw)


PAYLOADS: dict[str, Callable[[str], bytes]] = {
    "small": lambda model: _fp32(model, [1, 16]),
    "medium": lambda model: _fp32(model, [1, 3, 224, 224]),
    "bytes": _strings,
}


def cpu_ns(pid: int) -> int:
    """CPU time a process has used so far, all threads, in ns (/proc/PID/task/*/schedstat, first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read
    return total


def machine_busy_ns() -> int:
    """CPU time all processes on the machine have used (every CPU, idle and iowait excluded), in ns."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is already counted in user time: only the first 8 fields add up.
    return (sum(fields[:8]) - idle) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One run of one cell: what completed in the measured window, and the CPU each process spent in it."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    cpu_ns: dict[str, int] = field(default_factory=dict)
    # CPU the rest of the machine (not the benchmark's processes) used in the window, as a share of all CPUs.
    others_share: float = 0.0


@dataclass(frozen=True)
class CellResult:
    payload: str
    concurrency: int
    target: str
    rounds: int
    seconds: float
    requests: int
    errors: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    # CPU time per completed request (µs): the load generator, the proxy of this target (0 for direct), the runtime.
    client_cpu_us: float
    proxy_cpu_us: float
    runtime_cpu_us: float
    # Mean share of the machine's CPUs used by other processes while this cell was measured.
    others_cpu_share: float
    first_error: str = ""


async def _run_cell(
    call: grpc.aio.UnaryUnaryMultiCallable,
    body: bytes,
    concurrency: int,
    warmup_s: float,
    seconds: float,
    pids: dict[str, int],
) -> Sample:
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds
    sample = Sample()

    async def worker() -> None:
        while (started := time.perf_counter()) < stop_at:
            try:
                await call(body, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                sample.errors += 1
                sample.first_error = sample.first_error or f"{exc.code().name}: {exc.details()}"
                continue
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                sample.latencies.append(done - started)

    async def meter() -> None:
        await asyncio.sleep(measure_from - time.perf_counter())
        before = {name: cpu_ns(pid) for name, pid in pids.items()}
        busy_before = machine_busy_ns()
        await asyncio.sleep(stop_at - time.perf_counter())
        busy = machine_busy_ns() - busy_before
        sample.cpu_ns = {name: cpu_ns(pid) - before[name] for name, pid in pids.items()}
        others = max(0, busy - sum(sample.cpu_ns.values()))
        sample.others_share = others / (seconds * 1e9 * (os.cpu_count() or 1))

    await asyncio.gather(meter(), *(worker() for _ in range(concurrency)))
    return sample


def _summarize(key: tuple[str, int, str], runs: list[Sample], seconds: float) -> CellResult:
    """One cell over all its rounds: latencies pooled, throughput over the total measured time, and its spread."""
    payload, concurrency, target = key
    pooled = [latency for run in runs for latency in run.latencies]
    ms = np.asarray(pooled) * 1000 if pooled else np.asarray([float("nan")])
    per_round = [len(run.latencies) / seconds for run in runs]

    def cpu_us(process: str) -> float:
        spent = sum(run.cpu_ns.get(process, 0) for run in runs)
        return spent / len(pooled) / 1000 if pooled else float("nan")

    return CellResult(
        payload=payload,
        concurrency=concurrency,
        target=target,
        rounds=len(runs),
        seconds=seconds * len(runs),
        requests=len(pooled),
        errors=sum(run.errors for run in runs),
        rps=len(pooled) / (seconds * len(runs)),
        rps_min=min(per_round),
        rps_max=max(per_round),
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        client_cpu_us=cpu_us("client"),
        proxy_cpu_us=cpu_us(target) if target in runs[0].cpu_ns else 0.0,
        runtime_cpu_us=cpu_us("runtime"),
        others_cpu_share=sum(run.others_share for run in runs) / len(runs),
        first_error=next((run.first_error for run in runs if run.first_error), ""),
    )


def _check_echo(request: bytes, response: bytes, where: str) -> None:
    """The answer must carry the request's tensor back unchanged, or the benchmark measures a failure path."""
    sent = pb.ModelInferRequest.FromString(request)
    got = pb.ModelInferResponse.FromString(response)
    if list(got.raw_output_contents) != list(sent.raw_input_contents):
        raise SystemExit(f"{where}: the echo answer does not carry the request's tensor back")
    if [(o.datatype, list(o.shape)) for o in got.outputs] != [(i.datatype, list(i.shape)) for i in sent.inputs]:
        raise SystemExit(f"{where}: the echo answer has other datatypes or shapes than the request")


async def run(plan: dict) -> dict:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    channels = {name: grpc.aio.insecure_channel(addr, options=options) for name, addr in plan["targets"].items()}
    calls = {
        name: ch.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for name, ch in channels.items()
    }
    bodies = {name: PAYLOADS[name](plan["model"]) for name in plan["payloads"]}
    try:
        # The loading target goes first: the runtime knows the model only once mesh has loaded it.
        order = sorted(calls, key=lambda name: name != plan["loads_model"])
        first_request_ms: dict[str, float] = {}
        for target in order:
            for payload, body in bodies.items():
                started = time.perf_counter()
                response = await calls[target](body, timeout=PRIME_TIMEOUT_S, wait_for_ready=True)
                first_request_ms.setdefault(target, (time.perf_counter() - started) * 1000)
                _check_echo(body, response, f"{target}/{payload}")
        # Rounds outermost: each cell is sampled at R moments spread over the run, so a slow spell on the
        # machine lands on every target alike instead of on whichever cell happened to run then.
        pids = {"client": os.getpid(), **plan["pids"]}
        samples: dict[tuple[str, int, str], list[Sample]] = {}
        for round_no in range(1, plan["rounds"] + 1):
            for payload, body in bodies.items():
                for concurrency in plan["concurrency"]:
                    for target in plan["measure"]:
                        sample = await _run_cell(
                            calls[target], body, concurrency, plan["warmup_s"], plan["seconds"], pids
                        )
                        samples.setdefault((payload, concurrency, target), []).append(sample)
                        print(
                            f"  round {round_no} {payload:>6} c={concurrency:<3} {target:<11}"
                            f" {len(sample.latencies) / plan['seconds']:8.0f} req/s"
                            + (f"  errors {sample.errors} ({sample.first_error})" if sample.errors else ""),
                            file=sys.stderr,
                            flush=True,
                        )
        results = [_summarize(key, runs, plan["seconds"]) for key, runs in samples.items()]
        return {"first_request_ms": first_request_ms, "cells": [asdict(r) for r in results]}
    finally:
        for channel in channels.values():
            await channel.close()


def main() -> None:
    plan_path, results_path = Path(sys.argv[1]), Path(sys.argv[2])
    results = asyncio.run(run(json.loads(plan_path.read_text())))
    results_path.write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
