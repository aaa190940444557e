"""Scenario 2's load generator, in its own process: the mesh router's REST front door against its gRPC one.

Reads a plan (JSON: gRPC and REST addresses, cases, concurrency levels — fewer for the medium tensor, whose JSON
requests take tens of ms each —, durations) and writes one result per cell. gRPC requests are pre-serialized
bytes through a raw callable; REST requests are pre-encoded bodies sent by one aiohttp session per cell with at
most N connections, so neither client converts tensors while measured.

    python -m bench.rest_loadgen PLAN.json RESULTS.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import numpy as np

from bench.loadgen import MAX_MESSAGE_BYTES, MODEL_INFER, PAYLOADS

CALL_TIMEOUT_S = 30.0
MODEL = "echo"
# The same tensors as bench.loadgen's gRPC payloads (same seed, same shapes).
TENSORS = {
    "small": np.random.default_rng(0).random([1, 16], dtype=np.float32),
    "medium": np.random.default_rng(0).random([1, 3, 224, 224], dtype=np.float32),
}
STRINGS = [f"string {i:03d} of the bytes payload".ljust(32, ".") for i in range(64)]


def _parts(case: str) -> tuple[str, str, str]:
    """`rest-json-small` -> ("rest", "json", "small"); `grpc-medium` -> ("grpc", "", "medium")."""
    door, *rest = case.split("-")
    return (door, rest[0], rest[1]) if door == "rest" else (door, "", rest[0])


def rest_body(case: str) -> tuple[bytes, dict[str, str]]:
    """The request body and headers of a REST case (the same tensors as the gRPC payloads)."""
    _, encoding, payload = _parts(case)
    if payload == "bytes":
        if encoding != "json":
            raise ValueError(case)
        doc = {"inputs": [{"name": "s", "shape": [64], "datatype": "BYTES", "data": STRINGS}]}
        return json.dumps(doc).encode(), {"Content-Type": "application/json"}
    tensor = TENSORS[payload]
    if encoding == "json":
        doc = {
            "inputs": [{"name": "x", "shape": list(tensor.shape), "datatype": "FP32", "data": tensor.ravel().tolist()}]
        }
        return json.dumps(doc).encode(), {"Content-Type": "application/json"}
    if encoding == "binary":
        raw = tensor.tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(tensor.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        return header + raw, headers
    raise ValueError(case)


def check_rest(case: str, status: int, body: bytes) -> None:
    if status != 200:
        raise SystemExit(f"{case}: HTTP {status}: {body[:300]!r}")
    _, encoding, payload = _parts(case)
    if encoding == "binary":
        if not body.endswith(TENSORS[payload].tobytes()):
            raise SystemExit(f"{case}: the answer does not end with the request's tensor")
        return
    output = json.loads(body)["outputs"][0]
    expected = STRINGS if payload == "bytes" else TENSORS[payload].ravel().tolist()
    if output["data"] != expected:
        raise SystemExit(f"{case}: the echo answer does not carry the request's tensor back")


async def run_cell(send: Callable[[], Awaitable[None]], concurrency: int, warmup_s: float, seconds: float) -> dict:
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        while (started := time.perf_counter()) < stop_at:
            try:
                await send()
            except Exception as exc:  # any failure counts as an error of the cell; the first is reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                latencies.append(done - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": len(errors), "first_error": errors[0] if errors else ""}


async def run(plan: dict) -> dict:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    channel = grpc.aio.insecure_channel(plan["grpc"], options=options)
    call = channel.unary_unary(MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    url = f"http://{plan['rest']}/v2/models/{MODEL}/infer"
    grpc_bodies = {f"grpc-{p}": PAYLOADS[p](MODEL) for p in ("small", "medium", "bytes")}
    # The first request loads the model; it is not measured.
    await call(grpc_bodies["grpc-small"], timeout=60, wait_for_ready=True)
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        for _ in range(plan["rounds"]):
            for case in plan["cases"]:
                large = _parts(case)[2] == "medium"
                seconds = plan["medium_seconds"] if large else plan["seconds"]
                for concurrency in plan["medium_concurrency"] if large else plan["concurrency"]:
                    connector = aiohttp.TCPConnector(limit=concurrency)
                    async with aiohttp.ClientSession(connector=connector) as session:
                        if case.startswith("grpc"):
                            body = grpc_bodies[case]

                            async def send(body: bytes = body) -> None:
                                await call(body, timeout=CALL_TIMEOUT_S)
                        else:
                            data, headers = rest_body(case)
                            async with session.post(url, data=data, headers=headers) as response:
                                check_rest(case, response.status, await response.read())

                            async def send(data: bytes = data, headers: dict = headers) -> None:
                                async with session.post(url, data=data, headers=headers) as response:
                                    await response.read()
                                    if response.status != 200:
                                        raise RuntimeError(f"HTTP {response.status}")

                        sample = await run_cell(send, concurrency, plan["warmup_s"], seconds)
                    sample["seconds"] = seconds
                    samples.setdefault((case, concurrency), []).append(sample)
                    print(
                        f"  {case:<18} c={concurrency:<3} {len(sample['latencies']) / seconds:8.0f} req/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        await channel.close()
    cells = []
    for (case, concurrency), runs in samples.items():
        pooled = np.asarray([x for r in runs for x in r["latencies"]] or [np.nan]) * 1000
        measured = sum(len(r["latencies"]) for r in runs)
        cells.append(
            {
                "case": case,
                "concurrency": concurrency,
                "requests": measured,
                "errors": sum(r["errors"] for r in runs),
                "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
                "seconds": sum(r["seconds"] for r in runs),
                "rps": measured / sum(r["seconds"] for r in runs),
                "p50_ms": float(np.percentile(pooled, 50)),
                "p99_ms": float(np.percentile(pooled, 99)),
            }
        )
    return {"cells": cells}


def main() -> None:
    plan_path, results_path = Path(sys.argv[1]), Path(sys.argv[2])
    results = asyncio.run(run(json.loads(plan_path.read_text())))
    results_path.write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main()
