"""Scenario 4: the cache-policy trace simulator (no servers).

Seeded Zipf(α) request traces over models of log-normal sizes (popularity independent of size) are replayed
through:

- mesh-lru / mesh-gdsf / mesh-cost: the placement code's own functions through mesh.simulate.replay (what `mesh
  simulate` runs): mesh.placement.policy.choose_instance (and through it victims_for) over the simulated state of
  a few instances, with the given eviction policy; the request index is the clock for last use, a miss loads the
  model where choose_instance says after evicting its victims, and every request served counts a use (and for
  the clocked policies records the Greedy-Dual clock then, which rises as the evictor raises it);
- lru: one cache of the same total capacity, evicting by recency (an OrderedDict);
- belady: one cache of the same total capacity, evicting the resident model whose next request is farthest in
  the future until the missing model fits ("farthest next use", the usual size-oblivious approximation; the
  size-aware optimum is NP-hard). A model must be loaded to serve its request, so there is no bypass.

Each model also has a load time, drawn log-normal (median LOAD_MEDIAN_S, σ LOAD_SIGMA, so from tens of
milliseconds to minutes) and loosely tied to its size (× (size / median size)^0.5): every policy is also scored in
seconds spent loading, and mesh-cost (the "cost" policy: GDSF with the measured load time as each model's cost)
is set against LRU, GDSF and Belady in them. Belady here is the size- and cost-oblivious farthest-next-use: the
optimum in hits, a reference (not a bound) in seconds.

Every request is counted, cold start included. The mesh policies are held to the same total capacity split over
INSTANCES instances, so a victim set must fit on one instance: fragmentation that the single caches do not pay.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mesh.simulate import Request, replay

ALPHAS = (0.8, 1.0, 1.2)
MODELS = 2_000
REQUESTS = 200_000
QUICK_REQUESTS = 20_000
INSTANCES = 4
CACHE_FRACTION = 0.15
MEDIAN_SIZE_BYTES = 200 * 2**20
SIZE_SIGMA = 1.0
MIN_SIZE_BYTES = 10 * 2**20
SEED = 20240
LOAD_MEDIAN_S = 3.0
LOAD_SIGMA = 1.5
POLICIES = ("lru", "mesh-lru", "mesh-gdsf", "mesh-cost", "belady")
WITHIN_BELADY = 0.9


@dataclass(frozen=True)
class Workload:
    alpha: float
    sizes: list[int]
    trace: list[int]
    instance_capacity: int
    load_ms: list[int]

    @property
    def total_capacity(self) -> int:
        return self.instance_capacity * INSTANCES


@dataclass
class Outcome:
    hits: int = 0
    misses: int = 0
    bytes_loaded: int = 0
    load_ms: int = 0

    def missed(self, workload: Workload, model: int) -> None:
        self.misses += 1
        self.bytes_loaded += workload.sizes[model]
        self.load_ms += workload.load_ms[model]

    def as_dict(self) -> dict[str, Any]:
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hits / total,
            "bytes_loaded": self.bytes_loaded,
            "load_seconds": self.load_ms / 1000,
        }


def make_workload(alpha: float, requests: int, seed: int = SEED) -> Workload:
    """MODELS models of log-normal sizes and a Zipf(alpha) trace over them; the same seed, the same workload."""
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.normal(np.log(MEDIAN_SIZE_BYTES), SIZE_SIGMA, MODELS)).astype(np.int64)
    instance_capacity = int(sizes.sum() * CACHE_FRACTION / INSTANCES)
    sizes = np.clip(sizes, MIN_SIZE_BYTES, instance_capacity)
    weights = 1.0 / np.arange(1, MODELS + 1) ** alpha
    # Popularity rank is a random permutation of the models, independent of their sizes.
    by_rank = rng.permutation(MODELS)
    trace = by_rank[rng.choice(MODELS, size=requests, p=weights / weights.sum())]
    noise = np.exp(rng.normal(np.log(LOAD_MEDIAN_S), LOAD_SIGMA, MODELS))
    load_ms = np.maximum(noise * np.sqrt(sizes / MEDIAN_SIZE_BYTES) * 1000, 1).astype(np.int64)
    return Workload(alpha, sizes.tolist(), trace.tolist(), instance_capacity, load_ms.tolist())


def simulate_mesh(workload: Workload, eviction: str) -> Outcome:
    """Replay through the placement code (mesh.simulate.replay: choose_instance with the given eviction policy)."""
    requests = [
        Request(t, str(model), workload.sizes[model], workload.load_ms[model]) for t, model in enumerate(workload.trace)
    ]
    replayed = replay(requests, INSTANCES, workload.instance_capacity, eviction)
    return Outcome(replayed.hits, replayed.misses, replayed.bytes_loaded, replayed.load_ms)


def simulate_lru(workload: Workload) -> Outcome:
    """One cache of the total capacity, least recently used out first."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = 0
    outcome = Outcome()
    for model in workload.trace:
        if model in cache:
            outcome.hits += 1
            cache.move_to_end(model)
            continue
        size = workload.sizes[model]
        outcome.missed(workload, model)
        while used + size > workload.total_capacity:
            used -= cache.popitem(last=False)[1]
        cache[model] = size
        used += size
    return outcome


def simulate_belady(workload: Workload) -> Outcome:
    """One cache of the total capacity, evicting the model requested farthest in the future until the miss fits."""
    import heapq

    trace = workload.trace
    never = len(trace)
    next_use = [never] * len(trace)
    seen: dict[int, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        next_use[t] = seen.get(trace[t], never)
        seen[trace[t]] = t
    resident: dict[int, int] = {}  # model → its next use
    heap: list[tuple[int, int]] = []  # (-next use, model), stale entries skipped
    used = 0
    outcome = Outcome()
    for t, model in enumerate(trace):
        size = workload.sizes[model]
        if model in resident:
            outcome.hits += 1
        else:
            outcome.missed(workload, model)
            while used + size > workload.total_capacity:
                negative_next, victim = heapq.heappop(heap)
                if resident.get(victim) == -negative_next:
                    del resident[victim]
                    used -= workload.sizes[victim]
            used += size
        resident[model] = next_use[t]
        heapq.heappush(heap, (-next_use[t], model))
    return outcome


def simulate(workload: Workload, policy: str) -> Outcome:
    if policy == "lru":
        return simulate_lru(workload)
    if policy == "belady":
        return simulate_belady(workload)
    return simulate_mesh(workload, policy.removeprefix("mesh-"))


def _targets(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """mesh >= plain LRU, and mesh >= 0.9 × Belady, both in hit ratio, for each eviction policy and α."""
    targets = []
    for alpha, by_policy in results.items():
        lru, belady = by_policy["lru"], by_policy["belady"]
        for eviction in ("lru", "gdsf"):
            mesh = by_policy[f"mesh-{eviction}"]
            targets.append(
                {
                    "name": f"α={alpha}: mesh ({eviction}) hit ratio >= plain LRU",
                    "met": mesh["hit_ratio"] >= lru["hit_ratio"],
                    "detail": f"{mesh['hit_ratio']:.4f} vs {lru['hit_ratio']:.4f}",
                }
            )
            targets.append(
                {
                    "name": f"α={alpha}: mesh ({eviction}) hit ratio >= {WITHIN_BELADY} × Belady's",
                    "met": mesh["hit_ratio"] >= WITHIN_BELADY * belady["hit_ratio"],
                    "detail": f"{mesh['hit_ratio']:.4f} vs {belady['hit_ratio']:.4f}"
                    f" ({mesh['hit_ratio'] / belady['hit_ratio']:.3f}×)",
                }
            )
        cost = by_policy["mesh-cost"]["load_seconds"]
        for other in ("lru", "mesh-lru", "mesh-gdsf"):
            theirs = by_policy[other]["load_seconds"]
            targets.append(
                {
                    "name": f"α={alpha}: mesh (cost) loads for fewer seconds than {other}",
                    "met": cost < theirs,
                    "detail": f"{cost:,.0f} s vs {theirs:,.0f} s ({100 * (1 - cost / theirs):.1f} % fewer)",
                }
            )
    return targets


def _plots(results: dict[str, dict[str, dict[str, Any]]], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(results)
    width = 0.8 / len(POLICIES)
    names = []
    for key, ylabel, title, filename, scale in (
        ("hit_ratio", "hit ratio", "Hit ratio by Zipf α", "cache_hit_ratio.png", 1),
        ("bytes_loaded", "bytes loaded (TiB)", "Bytes loaded by Zipf α", "cache_bytes_loaded.png", 2**40),
        ("load_seconds", "hours spent loading", "Load time by Zipf α", "cache_load_seconds.png", 3600),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, policy in enumerate(POLICIES):
            xs = [a + (i - (len(POLICIES) - 1) / 2) * width for a in range(len(alphas))]
            ax.bar(xs, [results[a][policy][key] / scale for a in alphas], width, label=policy)
        ax.set_xticks(range(len(alphas)), [f"α = {a}" for a in alphas])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=100)
        plt.close(fig)
        names.append(filename)
    return names


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    """Scenario 4 for the bench runner: JSON-able results, with targets and the plots written into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    requests = QUICK_REQUESTS if quick else REQUESTS
    results: dict[str, dict[str, dict[str, Any]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for alpha in ALPHAS:
        workload = make_workload(alpha, requests)
        results[str(alpha)], seconds[str(alpha)] = {}, {}
        for policy in POLICIES:
            t0 = time.perf_counter()
            results[str(alpha)][policy] = simulate(workload, policy).as_dict()
            seconds[str(alpha)][policy] = time.perf_counter() - t0
    gdsf_gain = {
        alpha: {
            "hit_ratio_points": by["mesh-gdsf"]["hit_ratio"] - by["mesh-lru"]["hit_ratio"],
            "misses_fewer_pct": 100 * (1 - by["mesh-gdsf"]["misses"] / by["mesh-lru"]["misses"]),
            "bytes_loaded_change_pct": 100 * (by["mesh-gdsf"]["bytes_loaded"] / by["mesh-lru"]["bytes_loaded"] - 1),
        }
        for alpha, by in results.items()
    }
    cost_gain = {
        alpha: {
            f"load_seconds_fewer_than_{other}_pct": 100
            * (1 - by["mesh-cost"]["load_seconds"] / by[other]["load_seconds"])
            for other in ("lru", "mesh-lru", "mesh-gdsf")
        }
        | {"load_seconds_vs_belady": by["mesh-cost"]["load_seconds"] / by["belady"]["load_seconds"]}
        for alpha, by in results.items()
    }
    return {
        "scenario": "cache_sim",
        "quick": quick,
        "setup": {
            "models": MODELS,
            "requests": requests,
            "instances": INSTANCES,
            "cache_fraction_of_total_bytes": CACHE_FRACTION,
            "size_distribution": f"log-normal, median {MEDIAN_SIZE_BYTES >> 20} MiB, σ {SIZE_SIGMA}, clipped to "
            f"[{MIN_SIZE_BYTES >> 20} MiB, one instance]",
            "seed": SEED,
            "load_time_distribution": f"log-normal, median {LOAD_MEDIAN_S} s, σ {LOAD_SIGMA}, × (size / median)^0.5",
            "belady_variant": "farthest next use, evicted until the miss fits (no bypass)",
        },
        "results": results,
        "gdsf_vs_mesh_lru": gdsf_gain,
        "cost_vs_others": cost_gain,
        "seconds": seconds,
        "targets": _targets(results),
        "plots": _plots(results, out_dir),
        "duration_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS:,} requests instead of {REQUESTS:,}")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON and plots go")
    args = parser.parse_args()
    result = run(args.quick, args.out)
    (args.out / "cache_sim.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    for alpha, by_policy in result["results"].items():
        row = "  ".join(f"{p} {r['hit_ratio']:.4f} / {r['bytes_loaded'] / 2**40:.2f} TiB" for p, r in by_policy.items())
        print(f"α={alpha}: {row}")
    for target in result["targets"]:
        print(f"{'MET    ' if target['met'] else 'NOT MET'} {target['name']}: {target['detail']}")
    print(f"cache_sim: {result['duration_s']:.1f} s, results in {args.out}")


if __name__ == "__main__":
    main()
