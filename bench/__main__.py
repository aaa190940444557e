"""One command for every benchmark scenario, each against its baseline in the same run.

    python -m bench [--quick] [--only hop,rest,...] [--out bench/results]

Writes `<out>/<scenario>.json` (machine, parameters, results, targets met or not) and the scenario's PNG plots,
then prints a summary table. --quick runs smaller grids (CI's smoke test) and, unless --out is given, writes under
bench/results/quick/, which git ignores; bench/results/ itself holds the full run docs/benchmarks.md shows.
Scenarios whose module is not there (or fails to import) are reported as skipped; a scenario that fails is
reported and makes the exit status 1, after the others have run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from bench.common import REPO, loadavg, machine

# In the order they run; scale and cache_sim are scenarios 3 and 4, profile is the router's hot path under load,
# churn is scenario 6 (many models, few runtimes, rising concurrency), native scenario 7 (the HAProxy data plane),
# rollout scenario 8 (a rolling restart of the runtimes, with the hand-off and without), thrash scenario 9 (a hot
# core that fills the cache under a cold stream, with the thrash guard and without), routers scenario 10 (eviction
# by reload cost against LRU, with one router and with two).
SCENARIOS = (
    "hop", "rest", "scale", "cache_sim", "coldstart", "profile", "churn", "native", "rollout", "thrash", "routers",
)  # fmt: skip


def _names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SCENARIOS)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grids: the whole run in under 2 minutes")
    parser.add_argument("--only", type=_names, default=list(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, or bench/results/quick)")
    args = parser.parse_args()
    out_dir = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)

    summary: list[tuple[str, str, float, list[dict]]] = []
    failed = False
    run_started = time.monotonic()
    for name in [n for n in SCENARIOS if n in args.only]:
        try:
            module = importlib.import_module(f"bench.{name}")
            run = module.run
        except (ImportError, AttributeError) as exc:
            summary.append((name, f"skipped ({exc})", 0.0, []))
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        info = machine()
        started = time.monotonic()
        try:
            results = run(args.quick, out_dir)
        except Exception:
            failed = True
            traceback.print_exc()
            summary.append((name, "FAILED", time.monotonic() - started, []))
            continue
        elapsed = time.monotonic() - started
        info["loadavg_after"] = loadavg()
        record = {
            "scenario": name,
            "machine": info,
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "quick": args.quick,
            "elapsed_s": round(elapsed, 1),
            **results,
        }
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
        if results.get("markdown"):
            print(results["markdown"] + "\n", file=sys.stderr, flush=True)
        summary.append((name, "ok", elapsed, results.get("targets", [])))

    print(f"\nscenario    status    seconds  targets met   (results in {out_dir})")
    for name, status, elapsed, targets in summary:
        met = sum(t["met"] for t in targets)
        print(f"{name:<11} {status:<9} {elapsed:7.1f}  {f'{met}/{len(targets)}' if targets else '-':<11}")
        for t in targets:
            if not t["met"]:
                print(f"    not met: {t['name']}: {t['detail']}")
    print(f"total {time.monotonic() - run_started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
