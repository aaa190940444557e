"""Scenario 2, REST: the echo model over the router's `/v2/models/{m}/infer` (JSON FP32, JSON BYTES, and the
binary-data extension; a small and a medium tensor) against the same router's gRPC front door, in the same run.

The runtime and the router run as in scenario 1 (bench.hop.servers); the load generator is bench.rest_loadgen,
its own process. Requests through both front doors reach the same runtime over the same gRPC hop, so the
difference is the REST front door: HTTP parsing and the JSON/binary codec on the way in and out.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from bench._serving import serve_loop
from bench.common import PY, REPO, pyplot, ratio, target
from bench.hop import servers

CASES = (
    "grpc-small",
    "rest-json-small",
    "rest-binary-small",
    "grpc-medium",
    "rest-json-medium",
    "rest-binary-medium",
    "grpc-bytes",
    "rest-json-bytes",
)
# The medium tensor (1x3x224x224 FP32: 150,528 numbers, ~3 MB as JSON) at fewer workers and for longer: a JSON
# request takes ~0.3 s alone, so at 32 workers, or in a one-second window, few answers would land in the window.
FULL = {
    "seconds": 1.0,
    "warmup": 0.3,
    "rounds": 2,
    "concurrency": [1, 8, 32],
    "medium_concurrency": [1, 8],
    "medium_seconds": 3.0,
}
QUICK = {
    "seconds": 0.4,
    "warmup": 0.15,
    "rounds": 1,
    "concurrency": [8],
    "medium_concurrency": [1],
    "medium_seconds": 1.0,
}
MIN_JSON_RATIO = 0.5  # REST JSON small-tensor throughput against gRPC (issue 8)


def markdown(cells: list[dict]) -> str:
    by = {(c["case"], c["concurrency"]): c for c in cells}
    out = [
        "| case | conc | req/s | p50 ms | p99 ms | errors | req/s / gRPC (same tensor) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        base = by.get((f"grpc-{c['case'].rsplit('-', 1)[1]}", c["concurrency"]))
        rel = ratio(c["rps"], base["rps"]) if base else float("nan")
        out.append(
            f"| {c['case']} | {c['concurrency']} | {c['rps']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f}"
            f" | {c['errors']} | {rel:.2f} |"
        )
    return "\n".join(out)


def plot(cells: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for case in CASES:
        points = sorted((c["concurrency"], c["rps"]) for c in cells if c["case"] == case)
        if points:
            style = "-" if case.startswith("grpc") else "--"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=case)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("req/s through mesh")
    ax.set_ylim(bottom=0)
    ax.set_title("REST vs gRPC front door (echo)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    loop = serve_loop()
    with tempfile.TemporaryDirectory(prefix="mesh-rest-") as tmp, servers(Path(tmp), loops=[loop]) as addresses:
        plan = {
            "grpc": addresses["router"],
            "rest": addresses["rest"],
            "cases": list(CASES),
            "concurrency": params["concurrency"],
            "medium_concurrency": params["medium_concurrency"],
            "seconds": params["seconds"],
            "medium_seconds": params["medium_seconds"],
            "warmup_s": params["warmup"],
            "rounds": params["rounds"],
        }
        plan_path, results_path = Path(tmp) / "plan.json", Path(tmp) / "results.json"
        plan_path.write_text(json.dumps(plan))
        seconds_per_round = sum(
            len(params["medium_concurrency"]) * (params["medium_seconds"] + 4)
            if case.endswith("medium")
            else len(params["concurrency"]) * (params["seconds"] + 4)
            for case in CASES
        )
        budget_s = seconds_per_round * params["rounds"] + 120
        subprocess.run(
            [PY, "-m", "bench.rest_loadgen", str(plan_path), str(results_path)], cwd=REPO, timeout=budget_s, check=True
        )
        cells = json.loads(results_path.read_text())["cells"]
    plot(cells, out_dir / "rest.png")
    by = {(c["case"], c["concurrency"]): c for c in cells}
    targets = []
    for concurrency in params["concurrency"]:
        rel = ratio(by[("rest-json-small", concurrency)]["rps"], by[("grpc-small", concurrency)]["rps"])
        targets.append(
            target(
                f"rest c={concurrency}: JSON small-tensor req/s >= {MIN_JSON_RATIO}x gRPC",
                rel >= MIN_JSON_RATIO,
                f"{rel:.2f}x",
            )
        )
    return {
        "parameters": {**params, "cases": list(CASES), "model": "echo", "router_loop": loop},
        "cells": cells,
        "markdown": markdown(cells),
        "plots": ["rest.png"],
        "targets": targets,
    }
