"""Scenario 7, the native data plane: HAProxy as mesh's data plane against the engine alone, the Python doors, the
bare pass-through and the runtime called directly; misses through both; the engine's tables at fleet size.

Every party is its own process on 127.0.0.1, in front of one built-in runtime serving `echo` (1x16 FP32):

    direct        the runtime itself
    haproxy       the engine alone, one thread, routing on the mm-model-id header by a map (no mesh at all; the
                  Python load generator sends no header, and gets the default backend, the same runtime)
    passthrough   the floor of any Python proxy (bench/passthrough.py, uvloop)
    mesh          mesh's Python doors (bench/mesh_router.py, uvloop)
    mesh-native   mesh with --dataplane haproxy: the engine serves the loaded model, mesh is its control plane
    native-untimed  the same with the engine timing nothing (--untimed: no latency in mesh's request histogram)

Clients: h2load (Debian's nghttp2-client; one connection, N streams; req/s, mean latency, CPU per request of the
target's processes: for mesh-native the engine's and mesh's together) and the Python load generator (N workers).
Requests carry the mm-model-id header and name the model in the body, as ModelMesh clients send them.

Misses: the first request for each of K fresh models, through mesh and through mesh-native, one after another.
Tables: an engine alone given R routes at once, then single route changes timed; its RSS before and after.

    python -m bench --only native                    python -m bench.native [--seconds 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench import h2load
from bench.common import PY, REPO, Server, loadavg, machine, ratio, runtime_argv, target
from bench.loadgen import PAYLOADS
from bench.native_tables import measure_tables
from mesh.gen import grpc_predict_v2_pb2 as pb

UNTIMED = ("--untimed",)
TARGETS = ("direct", "haproxy", "passthrough", "mesh", "mesh-native", "native-untimed")
FULL = {"seconds": 3, "rounds": 2, "concurrency": [1, 8, 64], "misses": 20, "routes": 10_000, "updates": 200}
QUICK = {"seconds": 1, "rounds": 1, "concurrency": [8], "misses": 2, "routes": 200, "updates": 10}
HEADERS = ("mm-model-id: echo",)
"""What h2load sends besides the body, as ModelMesh clients do."""
# The targets (docs/benchmarks.md, scenario 7).
MIN_NATIVE_VS_ENGINE = 0.9
MAX_ADDED_LATENCY_VS_ENGINE = 1.2
MAX_CPU_US_PER_REQUEST = 150.0
MIN_PYTHON_VS_PASSTHROUGH = 0.9
MAX_MISS_EXTRA_MS = 5.0
MAX_ENGINE_RSS_MB = 200.0
MAX_ROUTE_UPDATE_MS = 1.0

ENGINE_ALONE = """\
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port} proto h2
  use_backend %[req.hdr(mm-model-id),map({map})]
  default_backend be_rt
backend be_rt
  server rt {runtime} proto h2
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the engine a mesh-native router started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@contextmanager
def engine_alone(workdir: Path, runtime: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """HAProxy routing by header to the runtime, no mesh: the engine's own cost."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy): the native scenario needs it")
    port = free_port()
    (workdir / "models.map").write_text("echo be_rt\n")
    config = workdir / "engine-alone.cfg"
    config.write_text(ENGINE_ALONE.format(port=port, map=workdir / "models.map", runtime=runtime))
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    try:
        _wait_listening(port, process)
        yield f"127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(10)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the engine alone did not listen on {port}")
        time.sleep(0.02)


@contextmanager
def servers(workdir: Path, misses: int) -> Iterator[tuple[dict[str, str], dict[str, list[int]]]]:
    """Every target's address and the pids whose CPU counts for it."""
    started: list[Server] = []
    try:
        runtime = Server("runtime", runtime_argv(), workdir)
        started.append(runtime)
        runtime_address = f"127.0.0.1:{runtime.wait_port()}"
        loop = ["--loop", "uvloop"]
        passthrough = [PY, "-m", "bench.passthrough", "--upstream", runtime_address, *loop]
        started.append(Server("passthrough", passthrough, workdir))
        routers = (("mesh", "python", ()), ("mesh-native", "haproxy", ()), ("native-untimed", "haproxy", UNTIMED))
        for name, dataplane, more in routers:
            argv = [PY, "-m", "bench.mesh_router", "--runtime", runtime_address, *loop, "--dataplane", dataplane, *more]
            started.append(Server(name, [*argv, "--models", str(misses), "--prefix", f"{name}-"], workdir))
        with engine_alone(workdir, runtime_address) as (engine_address, engine):
            addresses = {"direct": runtime_address, "haproxy": engine_address}
            addresses |= {s.name: f"127.0.0.1:{s.wait_port()}" for s in started[1:]}
            pids = {s.name: [s.process.pid] for s in started}
            pids["direct"] = pids.pop("runtime")
            pids["haproxy"] = [engine.pid]
            for native in ("mesh-native", "native-untimed"):
                pids[native] += child_pids(pids[native][0])
            yield addresses, pids
    finally:
        for server in reversed(started):
            server.stop()


def infer(address: str, model: str) -> float:
    """One ModelInfer with a fresh channel; its latency in ms."""
    request = pb.ModelInferRequest.FromString(PAYLOADS["small"](model))
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        grpc.channel_ready_future(channel).result(timeout=10)
        started = time.perf_counter()
        call(request.SerializeToString(), metadata=(("mm-model-id", model),), timeout=30)
        return (time.perf_counter() - started) * 1000


def run_h2load(addresses: dict[str, str], pids: dict[str, list[int]], params: dict, workdir: Path) -> list[dict]:
    binary = h2load.find()
    if binary is None:
        return []
    body = workdir / "body.bin"
    body.write_bytes(h2load.grpc_body("echo"))
    cells: dict[tuple[int, str], list[h2load.Cell]] = {}
    for _ in range(params["rounds"]):
        for streams in params["concurrency"]:
            for name in TARGETS:
                cell = h2load.run(binary, addresses[name], body, streams, params["seconds"], pids[name], HEADERS)
                cells.setdefault((streams, name), []).append(cell)
                print(f"  h2load c={streams:<3} {name:<12} {cell.rps:8.0f} req/s", file=sys.stderr)
    return [
        {
            "client": "h2load",
            "concurrency": c,
            "target": name,
            **{k: statistics.mean(getattr(x, k) for x in v) for k in ("rps", "mean_us", "cpu_us")},
        }
        for (c, name), v in cells.items()
    ]


def run_loadgen(addresses: dict[str, str], pids: dict[str, list[int]], params: dict, workdir: Path) -> list[dict]:
    plan = {
        "targets": addresses,
        "measure": list(TARGETS),
        "payloads": ["small"],
        "concurrency": params["concurrency"],
        "seconds": float(params["seconds"]),
        "rounds": params["rounds"],
        "warmup_s": 0.5,
        "pids": {name: p[0] for name, p in pids.items()},
        "model": "echo",
        "loads_model": "mesh",
    }
    plan_path, results_path = workdir / "plan.json", workdir / "results.json"
    plan_path.write_text(json.dumps(plan))
    budget = len(TARGETS) * len(params["concurrency"]) * params["rounds"] * (params["seconds"] + 2) + 120
    subprocess.run([PY, "-m", "bench.loadgen", str(plan_path), str(results_path)], cwd=REPO, timeout=budget, check=True)
    keys = ("concurrency", "target", "rps", "p50_ms")
    return [{"client": "python", **{k: c[k] for k in keys}} for c in json.loads(results_path.read_text())["cells"]]


def measure_misses(addresses: dict[str, str], count: int) -> dict[str, float]:
    """Median latency of the first request for each of `count` fresh models, per router."""
    return {
        name: statistics.median(infer(addresses[name], f"{name}-{n}") for n in range(count))
        for name in ("mesh", "mesh-native")
    }


def run(quick: bool, out_dir: Path) -> dict:
    return measure(QUICK if quick else FULL)


def measure(params: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="mesh-native-") as tmp:
        workdir = Path(tmp)
        with servers(workdir, params["misses"]) as (addresses, pids):
            for name in ("mesh", "mesh-native", "native-untimed"):
                infer(addresses[name], "echo")  # the first request loads the model; then the engine routes it
            _wait_native(addresses["mesh-native"])
            _wait_native(addresses["native-untimed"])
            rows = run_h2load(addresses, pids, params, workdir) + run_loadgen(addresses, pids, params, workdir)
            misses = measure_misses(addresses, params["misses"])
        tables = measure_tables(workdir / "tables", params["routes"], params["updates"])
    return {
        "parameters": params,
        "rows": rows,
        "misses_ms": misses,
        "tables": tables,
        "markdown": markdown(rows, misses, tables),
        "targets": targets(rows, misses, tables),
        "loadavg_after": loadavg(),
    }


def _wait_native(address: str) -> None:
    """Requests for one second: mesh-native's control loop publishes the loaded model's route as soon as placement
    records the copy (milliseconds), and the h2load warm-up second comes on top."""
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        infer(address, "echo")


def _row(rows: list[dict], client: str, c: int, name: str) -> dict | None:
    return next((r for r in rows if (r["client"], r["concurrency"], r["target"]) == (client, c, name)), None)


def targets(rows: list[dict], misses: dict[str, float], tables: dict[str, float]) -> list[dict]:
    found = []
    for c in sorted({r["concurrency"] for r in rows if r["client"] == "h2load"}):
        direct, engine, native = (_row(rows, "h2load", c, n) for n in ("direct", "haproxy", "mesh-native"))
        floor, python = _row(rows, "h2load", c, "passthrough"), _row(rows, "h2load", c, "mesh")
        assert direct and engine and native and floor and python
        r = ratio(native["rps"], engine["rps"])
        found.append(target(f"c={c} mesh-native/haproxy req/s", r >= MIN_NATIVE_VS_ENGINE, f"{r:.2f}× (≥ 0.9×)"))
        added_native, added_engine = native["mean_us"] - direct["mean_us"], engine["mean_us"] - direct["mean_us"]
        ok = added_native <= MAX_ADDED_LATENCY_VS_ENGINE * max(added_engine, 1.0)
        detail = f"{added_native:.0f} µs vs engine {added_engine:.0f} µs (≤ 1.2×)"
        found.append(target(f"c={c} mesh-native added mean latency", ok, detail))
        ok = native["cpu_us"] <= MAX_CPU_US_PER_REQUEST
        found.append(target(f"c={c} mesh-native CPU per request", ok, f"{native['cpu_us']:.0f} µs (≤ 150)"))
        r = ratio(python["rps"], floor["rps"])
        found.append(target(f"c={c} mesh/passthrough req/s", r >= MIN_PYTHON_VS_PASSTHROUGH, f"{r:.2f}× (≥ 0.9×)"))
    extra = misses["mesh-native"] - misses["mesh"]
    found.append(target("miss through the engine", extra <= MAX_MISS_EXTRA_MS, f"{extra:+.1f} ms vs Python (≤ +5)"))
    found.append(
        target("engine RSS with the routes", tables["rss_mb"] <= MAX_ENGINE_RSS_MB, f"{tables['rss_mb']:.0f} MB")
    )
    found.append(
        target("one route update", tables["update_ms"] <= MAX_ROUTE_UPDATE_MS, f"{tables['update_ms']:.2f} ms (≤ 1 ms)")
    )
    return found


def markdown(rows: list[dict], misses: dict[str, float], tables: dict[str, float]) -> str:
    lines = ["| client | c | " + " | ".join(TARGETS) + " |", "|---|---:|" + "---:|" * len(TARGETS)]
    for client in ("h2load", "python"):
        for c in sorted({r["concurrency"] for r in rows if r["client"] == client}):
            cells = []
            for name in TARGETS:
                row = _row(rows, client, c, name)
                if row is None:
                    cells.append("-")
                elif client == "h2load":
                    cells.append(f"{row['rps']:,.0f} req/s, {row['mean_us']:.0f} µs, {row['cpu_us']:.0f} µs CPU")
                else:
                    cells.append(f"{row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms")
            lines.append(f"| {client} | {c} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"misses (median first request): mesh {misses['mesh']:.1f} ms, mesh-native {misses['mesh-native']:.1f} ms"
    )
    lines.append(
        f"engine tables: {tables['routes']:,} routes published in {tables['publish_s']:.2f} s; RSS "
        f"{tables['rss_before_mb']:.0f} → {tables['rss_mb']:.0f} MB; one route update {tables['update_ms']:.2f} ms"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.native", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=FULL["seconds"])
    parser.add_argument("--rounds", type=int, default=FULL["rounds"])
    parser.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=FULL["concurrency"])
    parser.add_argument("--json", type=Path, help="also write the machine, the rows and the targets here")
    args = parser.parse_args()
    results = measure({**FULL, "seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency})
    print(results["markdown"])
    for t in results["targets"]:
        print(f"{'met' if t['met'] else 'NOT MET'}: {t['name']}: {t['detail']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], **results}, indent=1))


if __name__ == "__main__":
    main()
