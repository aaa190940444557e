"""`mesh simulate TRACE`: replay a trace through the placement policy (mesh/simulate.py) at a capacity, and sweep
capacities for a target miss ratio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mesh import simulate
from mesh.cli.common import UsageError
from mesh.errors import InvalidArgument
from mesh.placement.policy import EVICTION_POLICIES

MIB = 2**20


def _simulate(args: argparse.Namespace) -> int:
    capacity = round(args.capacity_mb * MIB)
    try:
        requests = simulate.read_trace(args.trace, round(args.default_size_mb * MIB))
        at = simulate.replay(requests, args.instances, capacity, args.policy)
        outcomes, needed = simulate.sweep(requests, args.instances, capacity, args.policy, args.target_miss_ratio)
        if args.plot:
            simulate.plot(outcomes, args.target_miss_ratio, args.plot)
    except (InvalidArgument, OSError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        doc = {
            "trace": str(args.trace),
            "instances": args.instances,
            "policy": args.policy,
            "result": at.as_dict(),
            "target_miss_ratio": args.target_miss_ratio,
            "capacity_needed_bytes": needed,
            "compulsory_miss_ratio": simulate.compulsory_miss_ratio(requests),
            "sweep": [o.as_dict() for o in outcomes],
        }
        print(json.dumps(doc, indent=2))
        return 0
    models = len({r.model for r in requests})
    setup = f"{args.instances} instances of {args.capacity_mb:g} MiB, {args.policy}"
    print(f"{at.requests} requests for {models} models, {setup}")
    print(
        f"hit ratio {at.hit_ratio:.4f} ({at.hits} hits, {at.misses} misses), {at.bytes_loaded / MIB:.1f} MiB and"
        f" {at.load_ms / 1000:.1f} s loaded, {at.evictions} evictions"
    )
    print(f"{'MiB per instance':>17} {'hit ratio':>10} {'MiB loaded':>11} {'s loading':>10}")
    for o in outcomes:
        loaded_mib, loading_s = o.bytes_loaded / MIB, o.load_ms / 1000
        print(f"{o.capacity_bytes / MIB:17.1f} {o.hit_ratio:10.4f} {loaded_mib:11.1f} {loading_s:10.1f}")
    floor = simulate.compulsory_miss_ratio(requests)
    if needed is None and floor > args.target_miss_ratio:
        print(f"no capacity reaches a miss ratio of {args.target_miss_ratio:g}: each model's first request is a miss,")
        print(f"a miss ratio of {floor:.4f} in this trace")
    elif needed is None:
        print(f"no capacity in the sweep reaches a miss ratio of {args.target_miss_ratio:g}")
    else:
        print(f"capacity per instance for a miss ratio of at most {args.target_miss_ratio:g}: {needed / MIB:.1f} MiB")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    simulate_cmd = sub.add_parser(
        "simulate", help="replay a request trace through the placement policy: hit ratio, bytes and seconds loaded"
    )
    simulate_cmd.add_argument("trace", type=Path, help="CSV (header: time,model[,size_bytes,load_ms]) or JSON lines")
    simulate_cmd.add_argument("--instances", type=int, default=2, help="runtime instances")
    simulate_cmd.add_argument("--capacity-mb", type=float, required=True, help="model memory of each instance")
    simulate_cmd.add_argument("--policy", choices=EVICTION_POLICIES, default="lru", help="the eviction policy")
    simulate_cmd.add_argument("--default-size-mb", type=float, default=0, help="size of models the trace gives none")
    simulate_cmd.add_argument("--target-miss-ratio", type=float, default=0.05, help="for the capacity sweep")
    simulate_cmd.add_argument("--plot", type=Path, help="write miss ratio and seconds loaded per capacity (PNG)")
    simulate_cmd.add_argument("--json", action="store_true", help="the result and the sweep as JSON")
    simulate_cmd.set_defaults(func=_simulate)
