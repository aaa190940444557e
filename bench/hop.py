"""What one gRPC hop through mesh costs: the same runtime called directly, through a bare byte pass-through
proxy (the floor for any Python proxy), and through the mesh router.

Every party is its own process on 127.0.0.1 (ports picked by the OS): one built-in runtime, the pass-through,
the router (mesh.router.Router with that runtime as its only instance), and the load generator. Each cell runs a
fixed number of concurrent workers for a fixed time after a short warm-up; the whole grid is run R times over
(rounds), and each cell reports its pooled latencies and its per-round throughput range.

    .venv/bin/python bench/hop.py [--seconds S] [--rounds R] [--concurrency 1,8,64]
                                  [--payloads small,medium,bytes] [--targets direct,passthrough,mesh]
                                  [--json out.json] [--profile router.prof]

Every target is started whatever --targets says: the first request through mesh is what loads the model into
the runtime. --profile runs the router under cProfile and prints the mesh functions with the most cumulative
time, then the router's functions by own time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from io import StringIO
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("direct", "passthrough", "mesh")
PAYLOADS = ("small", "medium", "bytes")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # generous: a router under cProfile writes its profile while it stops
PROFILE_LINES = 12


class Server:
    """A child process that announces its port in a JSON port file; stopped by pid, killed if it lingers."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.port_file = workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*argv, "--port-file", str(self.port_file)], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        return int(json.loads(self.port_file.read_text())["port"])

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def machine() -> dict[str, str | int]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": _loadavg(),
    }


def _loadavg() -> str:
    """1/5/15-minute load: anything else running on a 2-core machine shows up in every number."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarize(cells: list[dict]) -> list[dict]:
    """Per (payload, concurrency): mesh against the pass-through floor, both measured against the direct call."""
    by_key = {(c["payload"], c["concurrency"], c["target"]): c for c in cells}
    rows = []
    for payload, concurrency in dict.fromkeys((c["payload"], c["concurrency"]) for c in cells):
        direct, floor, mesh = (by_key.get((payload, concurrency, t)) for t in TARGETS)
        if not (direct and floor and mesh):
            continue
        added_floor = floor["p50_ms"] - direct["p50_ms"]
        added_mesh = mesh["p50_ms"] - direct["p50_ms"]
        rows.append(
            {
                "payload": payload,
                "concurrency": concurrency,
                "mesh_over_passthrough_rps": _ratio(mesh["rps"], floor["rps"]),
                "mesh_over_direct_rps": _ratio(mesh["rps"], direct["rps"]),
                "passthrough_added_p50_ms": added_floor,
                "mesh_added_p50_ms": added_mesh,
                "mesh_over_passthrough_added_p50": _ratio(added_mesh, added_floor),
                "passthrough_cpu_us": floor["proxy_cpu_us"],
                "mesh_cpu_us": mesh["proxy_cpu_us"],
                "mesh_over_passthrough_cpu": _ratio(mesh["proxy_cpu_us"], floor["proxy_cpu_us"]),
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
        "| payload | conc | mesh / pass-through req/s | mesh / direct req/s | added p50, pass-through ms"
        " | added p50, mesh ms | mesh added / pass-through added | proxy CPU µs/req, pass-through | mesh"
        " | mesh / pass-through CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['payload']} | {r['concurrency']} | {r['mesh_over_passthrough_rps']:.2f}"
            f" | {r['mesh_over_direct_rps']:.2f} | {r['passthrough_added_p50_ms']:.2f}"
            f" | {r['mesh_added_p50_ms']:.2f} | {r['mesh_over_passthrough_added_p50']:.2f}"
            f" | {r['passthrough_cpu_us']:.0f} | {r['mesh_cpu_us']:.0f} | {r['mesh_over_passthrough_cpu']:.2f} |"
        )
    return "\n".join(out)


def _short_paths(line: str) -> str:
    """Paths relative to the repository, site-packages or the standard library, so a listing fits a page."""
    line = re.sub(r"\S*/site-packages/", "", line)
    line = re.sub(r"\S*/lib/python3\.\d+/", "", line)
    return line.replace(f"{REPO}/", "")


def profile_report(path: Path) -> str:
    """The router's mesh functions by cumulative time (imports left out), then all its functions by own time."""

    def listing(title: str, sort: str, *restrictions: str | int) -> str:
        text = StringIO()
        pstats.Stats(str(path), stream=text).sort_stats(sort).print_stats(*restrictions)
        lines = text.getvalue().splitlines()
        table = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")) :]
        total = next(line.strip() for line in lines if "function calls" in line)
        return f"{title} ({total}):\n" + "\n".join(_short_paths(line) for line in table if line.strip())

    mesh_code = rf"^{REPO / 'mesh'}/.*\((?!<module>)"
    return "\n\n".join(
        [
            listing("mesh code, by cumulative time", "cumulative", mesh_code, PROFILE_LINES),
            listing("the whole router process, by own time", "tottime", PROFILE_LINES),
        ]
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured time per cell and round (default 1)")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured time before each (default 0.3)")
    parser.add_argument("--rounds", type=_positive, default=3, help="passes over all cells, interleaved (default 3)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 64], help="workers per cell (1,8,64)")
    parser.add_argument("--payloads", type=_names(PAYLOADS), default=list(PAYLOADS), help="small,medium,bytes")
    parser.add_argument("--targets", type=_names(TARGETS), default=list(TARGETS), help="direct,passthrough,mesh")
    parser.add_argument("--json", type=Path, help="also write the machine, the cells and the ratios here")
    parser.add_argument("--profile", type=Path, help="run the router under cProfile and write its profile here")
    args = parser.parse_args()

    info = machine()
    cells_total = len(args.payloads) * len(args.concurrency) * len(args.targets)
    print(
        f"{info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, grpcio {info['grpcio']}; {cells_total} cells"
        f" x {args.rounds} rounds of {args.warmup:g}+{args.seconds:g} s",
        file=sys.stderr,
    )
    py = sys.executable
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="mesh-hop-") as tmp:
        workdir = Path(tmp)
        try:
            runtime = Server(
                "runtime",
                [py, "-m", "adapters.builtin", "--host", "127.0.0.1", "--port", "0", "--capacity-bytes", "100000000",
                 "--instance-id", "bench-rt", "--parent-pid", str(os.getpid()), "--log-level", "WARNING"],
                workdir,
            )  # fmt: skip
            servers.append(runtime)
            runtime_addr = f"127.0.0.1:{runtime.wait_port()}"
            passthrough = Server("passthrough", [py, "-m", "bench.passthrough", "--upstream", runtime_addr], workdir)
            servers.append(passthrough)
            profiler = ["-m", "cProfile", "-o", str(args.profile.resolve())] if args.profile else []
            router = Server("mesh", [py, *profiler, "-m", "bench.mesh_router", "--runtime", runtime_addr], workdir)
            servers.append(router)
            addrs = {
                "direct": runtime_addr,
                "passthrough": f"127.0.0.1:{passthrough.wait_port()}",
                "mesh": f"127.0.0.1:{router.wait_port()}",
            }
            plan = {
                "targets": addrs,
                "measure": [t for t in TARGETS if t in args.targets],
                "payloads": args.payloads,
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "warmup_s": args.warmup,
                "pids": {s.name: s.process.pid for s in servers},
                "model": "echo",
                "loads_model": "mesh",
            }
            plan_path, results_path = workdir / "plan.json", workdir / "results.json"
            plan_path.write_text(json.dumps(plan))
            # Bounded twice: the load generator stops by itself; this is for a hang nobody foresaw.
            budget_s = cells_total * args.rounds * (args.warmup + args.seconds + 1) + 180
            loadgen = subprocess.run(
                [py, "-m", "bench.loadgen", str(plan_path), str(results_path)], cwd=REPO, timeout=budget_s
            )
            if loadgen.returncode != 0:
                raise SystemExit(f"the load generator failed ({loadgen.returncode})")
            results = json.loads(results_path.read_text())
        finally:
            for server in reversed(servers):  # the router first: under cProfile it writes its profile as it stops
                server.stop()
                code = server.process.returncode
                if code not in (0, -signal.SIGTERM):
                    print(f"{server.name} exited with {code}:\n{server.log_tail()}", file=sys.stderr)

    info["loadavg_after"] = _loadavg()
    cells = results["cells"]
    rows = summarize(cells)
    first = ", ".join(f"{t} {ms:.0f} ms" for t, ms in results["first_request_ms"].items())
    print(f"\nfirst request (mesh loads the model): {first}")
    print(f"load average before: {info['loadavg_before']}, after: {info['loadavg_after']}\n")
    print(markdown(cells, rows))
    if args.profile:
        print(f"\nrouter profile ({args.profile}):\n{profile_report(args.profile)}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "argv": sys.argv[1:], "first_request_ms": results["first_request_ms"],
                        "cells": cells, "ratios": rows}, indent=2)
        )  # fmt: skip


if __name__ == "__main__":
    main()
