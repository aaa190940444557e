"""Scenario 1, the gRPC hop: the same runtime called directly, through a bare byte pass-through proxy (the floor
for any Python proxy), and through the mesh router, over TCP and over the runtime's unix-domain socket, with the
proxies on asyncio's event loop and on uvloop's.

Every party is its own process on 127.0.0.1 (ports picked by the OS): one built-in runtime (also serving on a
unix socket); per event loop a pass-through and a router (mesh.router.Router with that runtime as its only
instance), both on that loop (`passthrough`, `mesh` on asyncio; `passthrough-uvloop`, `mesh-uvloop` on uvloop,
where it is installed); a third router on asyncio reaching the runtime over its unix socket (`mesh-uds`, the way
`mesh serve` reaches its runtimes); and the load generator. Each cell runs a fixed number of concurrent workers
for a fixed time after a short warm-up; the whole grid is run R times over (rounds), and each cell reports its
pooled latencies and its per-round throughput range.

    python -m bench --only hop                  (the grid of docs/benchmarks.md, JSON and plot)
    python -m bench.hop [--seconds S] [--rounds R] [--concurrency 1,8,64] [--payloads small,medium,bytes]
                        [--loops asyncio,uvloop] [--targets direct,passthrough,mesh,mesh-uds] [--json out.json]

Every target is started whatever --targets says: the first request through mesh is what loads the model into
the runtime.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._serving import LOOPS, uvloop_installed
from bench.common import PY, REPO, Server, loadavg, machine, pyplot, ratio, runtime_argv, target

TARGETS = ("direct", "passthrough", "mesh", "mesh-uds")
PAYLOADS = ("small", "medium", "bytes")
FULL = {"seconds": 1.0, "warmup": 0.3, "rounds": 3, "concurrency": [1, 8, 64], "payloads": list(PAYLOADS)}
QUICK = {"seconds": 0.4, "warmup": 0.15, "rounds": 1, "concurrency": [1, 8], "payloads": ["small", "bytes"]}
# Targets: mesh against the pass-through floor, at every concurrency (issue 8).
MIN_THROUGHPUT_RATIO = 0.9
MAX_ADDED_P50_RATIO = 1.1


def default_loops() -> list[str]:
    """Both event loops where uvloop is installed, else the standard one."""
    return list(LOOPS) if uvloop_installed() else ["asyncio"]


def suffix(loop: str) -> str:
    """How a target's name says its proxy's event loop: nothing for asyncio, `-uvloop` for uvloop."""
    return "" if loop == "asyncio" else f"-{loop}"


def target_names(loops: list[str]) -> list[str]:
    """direct, then a pass-through and a mesh router per event loop; mesh-uds (unix socket) on asyncio only."""
    names = ["direct"]
    for loop in loops:
        names += [f"passthrough{suffix(loop)}", f"mesh{suffix(loop)}"]
    if "asyncio" in loops:
        names.append("mesh-uds")
    return names


@contextmanager
def servers(
    workdir: Path, router_prefix: list[str] | None = None, loops: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Runtime, pass-through and router processes; yields their addresses and pids, stops them all by pid.

    Per event loop in `loops` (default asyncio only) one pass-through and one router, both on that loop, so each
    router is compared with a floor that runs on the same loop. `router_prefix` wraps the asyncio router (a
    profiler); the runtime always runs on asyncio, being the same process behind every target.
    """
    loops = loops or ["asyncio"]
    started: list[Server] = []
    try:
        runtime = Server("runtime", [*runtime_argv(), "--uds", str(workdir.resolve() / "runtime.sock")], workdir)
        started.append(runtime)
        runtime_ports = runtime.wait_ports()
        runtime_addr = f"127.0.0.1:{runtime_ports['port']}"
        for loop in loops:
            loop_args = ["--loop", loop]
            started.append(
                Server(
                    f"passthrough{suffix(loop)}",
                    [PY, "-m", "bench.passthrough", "--upstream", runtime_addr, *loop_args],
                    workdir,
                )
            )
            prefix = (router_prefix or []) if loop == loops[0] else []
            started.append(
                Server(
                    f"mesh{suffix(loop)}",
                    [PY, *prefix, "-m", "bench.mesh_router", "--runtime", runtime_addr, *loop_args],
                    workdir,
                )
            )
        if "asyncio" in loops:
            uds_args = ["--runtime", runtime_ports["uds"]]
            started.append(Server("mesh-uds", [PY, "-m", "bench.mesh_router", *uds_args], workdir))
        proxies = {s.name: s.wait_ports() for s in started[1:]}
        first_router = proxies[f"mesh{suffix(loops[0])}"]
        yield {
            "targets": {
                "direct": runtime_addr,
                **{name: f"127.0.0.1:{ports['port']}" for name, ports in proxies.items()},
            },
            "router_name": f"mesh{suffix(loops[0])}",
            "router": f"127.0.0.1:{first_router['port']}",
            "rest": f"127.0.0.1:{first_router['rest']}",
            "pids": {s.name: s.process.pid for s in started},
        }
    finally:
        for server in reversed(started):  # the router first: under a profiler it writes its profile as it stops
            server.stop()


def measure(workdir: Path, addresses: dict[str, Any], params: dict[str, Any], measure: list[str]) -> dict:
    """Runs the load generator process over the grid; returns its results (first requests and cells)."""
    plan = {
        "targets": addresses["targets"],
        "measure": measure,
        "payloads": params["payloads"],
        "concurrency": params["concurrency"],
        "seconds": params["seconds"],
        "rounds": params["rounds"],
        "warmup_s": params["warmup"],
        "pids": addresses["pids"],
        "model": "echo",
        "loads_model": addresses["router_name"],
    }
    plan_path, results_path = workdir / "plan.json", workdir / "results.json"
    plan_path.write_text(json.dumps(plan))
    cells = len(params["payloads"]) * len(params["concurrency"]) * len(measure) * params["rounds"]
    # Bounded twice: the load generator stops by itself; this is for a hang nobody foresaw.
    budget_s = cells * (params["warmup"] + params["seconds"] + 1) + 120
    subprocess.run(
        [PY, "-m", "bench.loadgen", str(plan_path), str(results_path)], cwd=REPO, timeout=budget_s, check=True
    )
    return json.loads(results_path.read_text())


def summarize(cells: list[dict]) -> list[dict]:
    """Per (payload, concurrency, event loop): mesh against the pass-through floor on the same loop, both measured
    against the direct call; mesh against the asyncio pass-through (can a faster loop beat the floor?); and, on
    asyncio, mesh over the unix socket against the same floor (NaN where something was not measured)."""
    by_key = {(c["payload"], c["concurrency"], c["target"]): c for c in cells}
    nan = float("nan")
    rows = []
    for payload, concurrency in dict.fromkeys((c["payload"], c["concurrency"]) for c in cells):
        direct = by_key.get((payload, concurrency, "direct"))
        asyncio_floor = by_key.get((payload, concurrency, "passthrough"))
        uds = by_key.get((payload, concurrency, "mesh-uds"))
        for loop in LOOPS:
            floor = by_key.get((payload, concurrency, f"passthrough{suffix(loop)}"))
            mesh = by_key.get((payload, concurrency, f"mesh{suffix(loop)}"))
            if not (direct and floor and mesh):
                continue
            added_floor = floor["p50_ms"] - direct["p50_ms"]
            added_mesh = mesh["p50_ms"] - direct["p50_ms"]
            on_asyncio = loop == "asyncio" and uds
            rows.append(
                {
                    "payload": payload,
                    "concurrency": concurrency,
                    "loop": loop,
                    "mesh_over_passthrough_rps": ratio(mesh["rps"], floor["rps"]),
                    "mesh_over_direct_rps": ratio(mesh["rps"], direct["rps"]),
                    "mesh_over_asyncio_passthrough_rps": (
                        ratio(mesh["rps"], asyncio_floor["rps"]) if asyncio_floor else nan
                    ),
                    "passthrough_added_p50_ms": added_floor,
                    "mesh_added_p50_ms": added_mesh,
                    "mesh_over_passthrough_added_p50": ratio(added_mesh, added_floor),
                    "passthrough_cpu_us": floor["proxy_cpu_us"],
                    "mesh_cpu_us": mesh["proxy_cpu_us"],
                    "mesh_over_passthrough_cpu": ratio(mesh["proxy_cpu_us"], floor["proxy_cpu_us"]),
                    "mesh_uds_over_passthrough_rps": ratio(uds["rps"], floor["rps"]) if on_asyncio else nan,
                    "mesh_uds_added_p50_ms": uds["p50_ms"] - direct["p50_ms"] if on_asyncio else nan,
                    "mesh_uds_cpu_us": uds["proxy_cpu_us"] if on_asyncio else nan,
                }
            )
    return rows


def markdown(cells: list[dict], rows: list[dict]) -> str:
    out = [
        "| payload | conc | target | req/s | req/s per round (min–max) | p50 ms | p99 ms | errors"
        " | CPU µs/req: client | proxy | runtime | others' CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        out.append(
            f"| {c['payload']} | {c['concurrency']} | {c['target']} | {c['rps']:.0f}"
            f" | {c['rps_min']:.0f}–{c['rps_max']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['errors']}"
            f" | {c['client_cpu_us']:.0f} | {c['proxy_cpu_us']:.0f} | {c['runtime_cpu_us']:.0f}"
            f" | {c['others_cpu_share']:.0%} |"
        )
    out += [
        "",
        "| payload | conc | loop | mesh / pass-through req/s | mesh / direct req/s | mesh / asyncio pass-through req/s"
        " | added p50, pass-through ms | added p50, mesh ms | mesh added / pass-through added"
        " | proxy CPU µs/req, pass-through | mesh | mesh / pass-through CPU"
        " | mesh-uds / pass-through req/s | added p50, mesh-uds ms | mesh-uds CPU µs/req |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['payload']} | {r['concurrency']} | {r['loop']} | {r['mesh_over_passthrough_rps']:.2f}"
            f" | {r['mesh_over_direct_rps']:.2f} | {r['mesh_over_asyncio_passthrough_rps']:.2f}"
            f" | {r['passthrough_added_p50_ms']:.2f}"
            f" | {r['mesh_added_p50_ms']:.2f} | {r['mesh_over_passthrough_added_p50']:.2f}"
            f" | {r['passthrough_cpu_us']:.0f} | {r['mesh_cpu_us']:.0f} | {r['mesh_over_passthrough_cpu']:.2f}"
            f" | {r['mesh_uds_over_passthrough_rps']:.2f} | {r['mesh_uds_added_p50_ms']:.2f}"
            f" | {r['mesh_uds_cpu_us']:.0f} |"
        )
    return "\n".join(out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give positive integers separated by commas")
    return values


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [v for v in text.split(",") if v]
        unknown = set(names) - set(allowed)
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return names

    return parse


def targets_met(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        where = f"{r['payload']} c={r['concurrency']} {r['loop']}"
        rps = r["mesh_over_passthrough_rps"]
        added = r["mesh_over_passthrough_added_p50"]
        out.append(
            target(
                f"hop {where}: mesh >= {MIN_THROUGHPUT_RATIO}x pass-through req/s",
                rps >= MIN_THROUGHPUT_RATIO,
                f"{rps:.2f}x",
            )
        )
        out.append(
            target(
                f"hop {where}: mesh added p50 <= {MAX_ADDED_P50_RATIO}x pass-through's",
                added <= MAX_ADDED_P50_RATIO,
                f"{r['mesh_added_p50_ms']:.2f} ms vs {r['passthrough_added_p50_ms']:.2f} ms ({added:.2f}x)",
            )
        )
    return out


def plot(cells: list[dict], path: Path) -> None:
    """Throughput by concurrency, one line per target (dashed on uvloop), one panel per payload."""
    plt = pyplot()
    payloads = list(dict.fromkeys(c["payload"] for c in cells))
    names = list(dict.fromkeys(c["target"] for c in cells))
    fig, axes = plt.subplots(1, len(payloads), figsize=(4.5 * len(payloads), 3.6), squeeze=False)
    for ax, payload in zip(axes[0], payloads, strict=True):
        for name in names:
            points = sorted(
                (c["concurrency"], c["rps"]) for c in cells if c["payload"] == payload and c["target"] == name
            )
            if points:
                style = "--" if name.endswith("-uvloop") else "-"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"gRPC hop, {payload}")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("req/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(quick: bool, out_dir: Path, loops: list[str] | None = None) -> dict:
    """The grid of docs/benchmarks.md (a smaller one when quick), on every installed event loop unless `loops`
    says which: results, ratios, targets; writes hop.png."""
    params = QUICK if quick else FULL
    loops = loops or default_loops()
    names = target_names(loops)
    with tempfile.TemporaryDirectory(prefix="mesh-hop-") as tmp, servers(Path(tmp), loops=loops) as addresses:
        results = measure(Path(tmp), addresses, params, names)
    cells = results["cells"]
    rows = summarize(cells)
    plot(cells, out_dir / "hop.png")
    return {
        "parameters": {**params, "targets": names, "loops": loops, "model": "echo"},
        "first_request_ms": results["first_request_ms"],
        "cells": cells,
        "ratios": rows,
        "markdown": markdown(cells, rows),
        "plots": ["hop.png"],
        "targets": targets_met(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured time per cell and round (default 1)")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured time before each (default 0.3)")
    parser.add_argument("--rounds", type=_positive, default=3, help="passes over all cells, interleaved (default 3)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 64], help="workers per cell (1,8,64)")
    parser.add_argument("--payloads", type=_names(PAYLOADS), default=list(PAYLOADS), help="small,medium,bytes")
    parser.add_argument(
        "--loops", type=_names(LOOPS), default=default_loops(), help="proxies' event loops (both if uvloop is there)"
    )
    parser.add_argument("--targets", type=_names(TARGETS), default=list(TARGETS), help=",".join(TARGETS))
    parser.add_argument("--json", type=Path, help="also write the machine, the cells and the ratios here")
    args = parser.parse_args()
    params = {k: getattr(args, k) for k in ("seconds", "warmup", "rounds", "concurrency", "payloads")}
    # --targets names the kinds; each proxy kind runs once per loop.
    names = [n for n in target_names(args.loops) if n.removesuffix("-uvloop") in args.targets]
    info = machine()
    with tempfile.TemporaryDirectory(prefix="mesh-hop-") as tmp, servers(Path(tmp), loops=args.loops) as addresses:
        results = measure(Path(tmp), addresses, params, names)
    info["loadavg_after"] = loadavg()
    cells = results["cells"]
    rows = summarize(cells)
    print(markdown(cells, rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "argv": sys.argv[1:], "cells": cells, "ratios": rows}))


if __name__ == "__main__":
    main()
