"""The router's hop, before and after a change, in one run: two routers (the code of a base commit and the code
of this checkout) in front of one built-in runtime, measured in interleaved rounds with both load generators.

A restructuring must not make the hot path slower; this is how that is checked. Both routers run the same
`bench.mesh_router` harness of their own tree on the same event loop and reach the same runtime; each load
generator runs its cells in rounds (base, head, base, head, ...), so a slow spell of the machine lands on both.

- h2load (Debian's nghttp2-client, a native client taking little CPU): one connection, N concurrent streams,
  gRPC unary ModelInfer (echo, 1x16 FP32); req/s, and the router's CPU per request read from /proc.
- the Python load generator (bench/loadgen.py): N workers on one grpc.aio channel; req/s, p50, CPU per request.

    python -m bench.ab --base REV [--seconds 3] [--rounds 3] [--concurrency 1,8,64] [--loop uvloop] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import h2load
from bench._serving import LOOPS
from bench.common import PY, REPO, Server, machine, runtime_argv

SIDES = ("base", "head")


def base_tree(rev: str, into: Path) -> Path:
    """The packages mesh, adapters and bench as they were at rev, unpacked into a folder."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "mesh", "adapters", "bench"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def router(side: str, tree: Path, runtime: str, loop: str, workdir: Path) -> Server:
    """bench.mesh_router from `tree` (its own mesh package first on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [PY, "-m", "bench.mesh_router", "--runtime", runtime, "--loop", loop]
    return Server(side, argv, workdir, cwd=tree, env=env)


def run_h2load(addresses: dict[str, str], pids: dict[str, int], args: argparse.Namespace, workdir: Path) -> list:
    binary = h2load.find()
    if binary is None:
        return []
    body = workdir / "body.bin"
    body.write_bytes(h2load.grpc_body("echo"))
    samples: dict[tuple[int, str], list[h2load.Cell]] = {}
    for round_no in range(1, args.rounds + 1):
        for streams in args.concurrency:
            for side in SIDES:
                cell = h2load.run(binary, addresses[side], body, streams, args.seconds, [pids[side]])
                samples.setdefault((streams, side), []).append(cell)
                print(f"  h2load round {round_no} c={streams:<3} {side}: {cell.rps:8.0f} req/s", file=sys.stderr)
    return [
        {
            "client": "h2load",
            "concurrency": streams,
            "target": side,
            "rps": sum(c.rps for c in cells) / len(cells),
            "router_cpu_us": sum(c.cpu_us for c in cells) / len(cells),
        }
        for (streams, side), cells in samples.items()
    ]


def run_loadgen(addresses: dict[str, str], pids: dict[str, int], args: argparse.Namespace, workdir: Path) -> list:
    plan = {
        "targets": addresses,
        "measure": list(SIDES),
        "payloads": ["small"],
        "concurrency": args.concurrency,
        "seconds": float(args.seconds),
        "rounds": args.rounds,
        "warmup_s": 0.5,
        "pids": pids,
        "model": "echo",
        "loads_model": "head",
    }
    plan_path, results_path = workdir / "plan.json", workdir / "results.json"
    plan_path.write_text(json.dumps(plan))
    budget = len(SIDES) * len(args.concurrency) * args.rounds * (args.seconds + 2) + 120
    subprocess.run([PY, "-m", "bench.loadgen", str(plan_path), str(results_path)], cwd=REPO, timeout=budget, check=True)
    return [
        {
            "client": "python",
            "concurrency": c["concurrency"],
            "target": c["target"],
            "rps": c["rps"],
            "p50_ms": c["p50_ms"],
            "router_cpu_us": c["proxy_cpu_us"],
        }
        for c in json.loads(results_path.read_text())["cells"]
    ]


def markdown(rows: list[dict[str, Any]], base: str) -> str:
    lines = [
        f"| client | concurrency | base ({base}) req/s | head req/s | head/base | router CPU µs/req base → head |",
        "|---|---:|---:|---:|---:|---|",
    ]
    by_key = {(r["client"], r["concurrency"], r["target"]): r for r in rows}
    for client, concurrency in sorted({(r["client"], r["concurrency"]) for r in rows}):
        b, h = by_key[(client, concurrency, "base")], by_key[(client, concurrency, "head")]
        lines.append(
            f"| {client} | {concurrency} | {b['rps']:,.0f} | {h['rps']:,.0f} | {h['rps'] / b['rps']:.2f}× |"
            f" {b['router_cpu_us']:.0f} → {h['router_cpu_us']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare this checkout with")
    parser.add_argument("--seconds", type=int, default=3, help="measured seconds per cell and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8, 64])
    parser.add_argument("--loop", choices=LOOPS, default="uvloop", help="the routers' event loop (default uvloop)")
    parser.add_argument("--json", type=Path, help="also write the machine and the rows here")
    args = parser.parse_args()
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="mesh-ab-") as tmp:
        workdir = Path(tmp)
        (workdir / "base").mkdir()
        trees = {"base": base_tree(args.base, (workdir / "base").resolve()), "head": REPO}
        try:
            runtime = Server("runtime", runtime_argv(), workdir)
            started.append(runtime)
            runtime_address = f"127.0.0.1:{runtime.wait_port()}"
            for side in SIDES:
                started.append(router(side, trees[side], runtime_address, args.loop, workdir))
            addresses = {s.name: f"127.0.0.1:{s.wait_port()}" for s in started[1:]}
            pids = {s.name: s.process.pid for s in started}
            rows = run_loadgen(addresses, pids, args, workdir) + run_h2load(addresses, pids, args, workdir)
        finally:
            for server in reversed(started):
                server.stop()
    print(markdown(rows, args.base))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
