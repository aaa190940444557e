"""`mesh simulate TRACE`: capacity planning from real traffic, through the placement code the router runs.

A trace is a CSV (with a header) or JSON lines, one request each: `time` (seconds; any origin), `model`, and
optionally `size_bytes` (the model's size: the copy's measured size in `mesh explain` / `mesh status`) and
`load_ms` (how long its load takes). A router's JSON log with the access log on (`MESH_ACCESS_LOG=1 mesh
--log-format json serve`) is such a trace as it is: its `access` lines that were served are the requests (`ts`,
`model`, `model_bytes`), every other line is skipped.

It is replayed over `instances` runtime instances of `capacity_bytes` each: a request for a model with a copy is a
hit (its copy becomes the most recently used); any other is a miss, placed by
mesh.placement.policy.choose_instance (the function the router's loader calls, with the eviction policy given)
after evicting the victims it names, and counted with the model's bytes and load time. The simulator plays the
router's part around it as PlacementManager does: last use in request order, the uses and the Greedy-Dual clock
for the clocked policies (gdsf, cost). It does not model concurrency (requests waiting for a load are one miss each),
load slots, extra copies or several routers.

`sweep` replays the trace at several capacities per instance and reports the smallest that meets a target miss
ratio: what to give each runtime for the traffic in the trace.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgument
from mesh.placement.policy import CLOCKED_POLICIES, InstanceView, ResidentCopy, choose_instance, gdsf_clock
from mesh.placement.records import InstanceRecord

MODEL_TYPE = "simulated"
SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Capacities a sweep tries, as multiples of the one given."""


@dataclass(frozen=True)
class Request:
    time_ms: int
    model: str
    size_bytes: int
    load_ms: int = 0


@dataclass
class Outcome:
    capacity_bytes: int
    requests: int = 0
    hits: int = 0
    bytes_loaded: int = 0
    load_ms: int = 0
    evictions: int = 0

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "capacity_bytes": self.capacity_bytes,
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hit_ratio, 6),
            "bytes_loaded": self.bytes_loaded,
            "load_seconds": self.load_ms / 1000,
            "evictions": self.evictions,
        }


def read_trace(path: Path, default_size_bytes: int = 0) -> list[Request]:
    """The requests of a CSV or JSON-lines trace, in time order; InvalidArgument names the line that is wrong."""
    text = path.read_text(encoding="utf-8")
    first = text.lstrip()[:1]
    rows: Iterable[tuple[int, dict[str, Any]]]
    if first == "{":
        rows = ((n, _json_row(n, line)) for n, line in enumerate(text.splitlines(), 1) if line.strip())
        rows = ((n, _from_access_log(row)) for n, row in rows if "event" not in row or _served(row))
    else:
        rows = enumerate(csv.DictReader(text.splitlines()), 2)
    requests = [_request(n, row, default_size_bytes) for n, row in rows]
    if not requests:
        raise InvalidArgument(f"{path} holds no requests")
    return sorted(requests, key=lambda r: r.time_ms)


def _json_row(line_no: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InvalidArgument(f"line {line_no}: not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise InvalidArgument(f"line {line_no}: not a JSON object")
    return row


def _served(row: dict[str, Any]) -> bool:
    """A log line that is a request served (an access line with status OK)."""
    return row.get("event") == "access" and row.get("code") == "OK"


def _from_access_log(row: dict[str, Any]) -> dict[str, Any]:
    """An access-log line as a trace row (time from its `ts`, size from `model_bytes`); other rows as they are."""
    if row.get("event") != "access":
        return row
    return {
        "time": datetime.fromisoformat(str(row["ts"]).replace("Z", "+00:00")).timestamp(),
        "model": row.get("model"),
        "size_bytes": row.get("model_bytes"),
    }


def _request(line_no: int, row: dict[str, Any], default_size_bytes: int) -> Request:
    try:
        model = str(row["model"])
        time_s = float(row["time"])
        size = int(float(row.get("size_bytes") or default_size_bytes))
        load_ms = int(float(row.get("load_ms") or 0))
    except KeyError as exc:
        raise InvalidArgument(f"line {line_no}: no {exc.args[0]!r} (each request needs time and model)") from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"line {line_no}: {exc}") from None
    if size <= 0:
        raise InvalidArgument(f"line {line_no}: model {model!r} has no size: give size_bytes, or --default-size")
    return Request(round(time_s * 1000), model, size, load_ms)


def replay(requests: Sequence[Request], instances: int, capacity_bytes: int, eviction: str = "lru") -> Outcome:
    """The trace through choose_instance, over `instances` instances of capacity_bytes each."""
    records = [InstanceRecord(f"sim-{k}", f"sim:{k}", capacity_bytes) for k in range(instances)]
    resident: dict[str, dict[str, ResidentCopy]] = {r.instance_id: {} for r in records}
    where: dict[str, str] = {}
    uses: dict[str, int] = {}
    clock = 0.0
    outcome = Outcome(capacity_bytes)
    # The clock for last use is the request's place in the trace: only the order matters to the policy, and two
    # requests in one millisecond keep theirs.
    for tick, request in enumerate(requests, 1):
        outcome.requests += 1
        instance_id = where.get(request.model)
        if instance_id is not None:
            outcome.hits += 1
        else:
            views = [InstanceView(r, list(resident[r.instance_id].values())) for r in records]
            choice = choose_instance(MODEL_TYPE, request.size_bytes, views, eviction=eviction)
            if choice is None:
                raise InvalidArgument(
                    f"model {request.model!r} ({request.size_bytes} bytes) fits on no instance of {capacity_bytes}"
                )
            instance_id = choice.instance_id
            for victim in choice.victims:
                del resident[instance_id][victim.model_id]
                del where[victim.model_id]
            outcome.evictions += len(choice.victims)
            if eviction in CLOCKED_POLICIES:
                clock = gdsf_clock(clock, choice.victims, eviction)
            where[request.model] = instance_id
            outcome.bytes_loaded += request.size_bytes
            outcome.load_ms += request.load_ms
        uses[request.model] = uses.get(request.model, 0) + 1
        resident[instance_id][request.model] = ResidentCopy(
            request.model, request.size_bytes, tick, True, uses[request.model], clock, load_ms=request.load_ms
        )
    return outcome


def sweep(
    requests: Sequence[Request], instances: int, capacity_bytes: int, eviction: str, target_miss_ratio: float
) -> tuple[list[Outcome], int | None]:
    """Replays at SWEEP_FACTORS × capacity_bytes (those that hold the largest model) and at a capacity that holds
    every model of the trace at once, and the smallest capacity whose miss ratio is at most the target (None: none
    of them; below compulsory_miss_ratio none can be)."""
    sizes = {r.model: r.size_bytes for r in requests}
    largest = max(sizes.values())
    everything = -(-sum(sizes.values()) // instances) + largest  # a model's worth more, for what splits leave
    capacities = sorted({max(int(capacity_bytes * f), largest) for f in SWEEP_FACTORS} | {everything})
    outcomes = [replay(requests, instances, c, eviction) for c in capacities]
    meeting = [o.capacity_bytes for o in outcomes if 1 - o.hit_ratio <= target_miss_ratio]
    return outcomes, min(meeting, default=None)


def compulsory_miss_ratio(requests: Sequence[Request]) -> float:
    """The misses no capacity avoids (each model's first request), as a share of the requests."""
    return len({r.model for r in requests}) / len(requests)


def plot(outcomes: Sequence[Outcome], target_miss_ratio: float, path: Path) -> None:
    """Miss ratio and seconds loaded against capacity per instance (matplotlib, a dev dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InvalidArgument(f"--plot needs matplotlib ({exc}): pip install matplotlib") from None
    mib = [o.capacity_bytes / 2**20 for o in outcomes]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(mib, [1 - o.hit_ratio for o in outcomes], marker="o", label="miss ratio")
    left.axhline(target_miss_ratio, linestyle="--", color="grey", label=f"target {target_miss_ratio:g}")
    left.set_xlabel("capacity per instance (MiB)")
    left.set_ylabel("miss ratio")
    right = left.twinx()
    right.plot(mib, [o.load_ms / 1000 for o in outcomes], marker="s", color="tab:red", label="seconds loading")
    right.set_ylabel("seconds spent loading")
    left.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
