"""Prints docs/benchmarks.md's tables and target lists from one run's result files, so the page quotes the run.

    python -m bench.report [bench/results]

Scenarios that wrote their own table (hop, rest, coldstart, profile) are printed as written; scale and cache_sim
get one here. Each section ends with the scenario's targets, met or not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.__main__ import SCENARIOS
from bench.common import REPO


def scale_table(record: dict[str, Any]) -> str:
    points = record["checkpoints"]
    head = (
        " | ".join(f"lookup µs at {n:,} (best)" for n in points)
        + " | "
        + " | ".join(f"RSS MB at {n:,}" for n in points)
    )
    out = [
        f"| store | in flight | registered | registrations/s | {head} |",
        "|---|---:|---:|---:|" + "---:|" * (2 * len(points)),
    ]
    for name, store in record["stores"].items():
        by_models = {p["models"]: p for p in store.get("points", [])}
        lookups = [f"{by_models[n]['lookup']['min_us']:.2f}" if n in by_models else "–" for n in points]
        rss = [f"{by_models[n]['rss_mb']:.0f}" if n in by_models else "–" for n in points]
        out.append(
            f"| {name} | {store['concurrency']} | {store['registered']:,} | {store['registrations_per_s']:,.0f}"
            f" | {' | '.join(lookups)} | {' | '.join(rss)} |"
        )
    return "\n".join(out)


def cache_table(record: dict[str, Any]) -> str:
    out = [
        "| α | policy | hit ratio | / LRU | / Belady | bytes loaded TiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for alpha, by_policy in record["results"].items():
        lru, belady = by_policy["lru"]["hit_ratio"], by_policy["belady"]["hit_ratio"]
        for policy, result in by_policy.items():
            hit = result["hit_ratio"]
            out.append(
                f"| {alpha} | {policy} | {hit:.4f} | {hit / lru:.3f} | {hit / belady:.3f}"
                f" | {result['bytes_loaded'] / 2**40:.2f} |"
            )
    return "\n".join(out)


def targets(record: dict[str, Any]) -> str:
    return "\n".join(
        f"- {'met' if t['met'] else '**not met**'}: {t['name']} — {t['detail']}" for t in record.get("targets", [])
    )


def section(name: str, record: dict[str, Any]) -> str:
    m = record["machine"]
    head = (
        f"### {name}: {record['elapsed_s']} s, started {m['date']}, load {m['loadavg']} → {m.get('loadavg_after', '?')}"
    )
    table = {"scale": scale_table, "cache_sim": cache_table}.get(name)
    body = table(record) if table else record.get("markdown", "")
    return "\n\n".join(part for part in (head, body, targets(record)) if part)


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results"
    for name in SCENARIOS:
        path = results / f"{name}.json"
        if path.exists():
            print(section(name, json.loads(path.read_text())) + "\n")


if __name__ == "__main__":
    main()
