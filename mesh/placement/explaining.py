"""`mesh explain MODEL`: where a model is and why there, what happened to it lately, and what its next load would
do now, as one JSON document (the admin API's ExplainModel; the CLI prints it as text or as it is).

- `copies`: where it is loaded (or loading), since when, and the decision that put each copy there (the newest
  `loaded` event of the decision log on that instance: what it evicted, or that it fit in free memory, and how
  the instances ranked then, best first);
- `history`: the decision log (placement/decisions.py): loads, evictions (what evicted it, how long it had been
  idle), load failures, unloads, lost copies, loads the thrash guard held back; newest first;
- `next_load`: a dry run of the placement policy with the cluster as it is now: every instance's verdict, best
  first (it would fit in free memory; it would evict these copies; or why not), the instances left out before
  ranking (they hold a copy, failed to load it lately, are draining), and the one a load would choose.
"""

from __future__ import annotations

from typing import Any

from mesh.placement import policy
from mesh.placement.records import Footprint, ModelRecord, PlacementRecord


def explanation(
    model: ModelRecord,
    placement: PlacementRecord,
    size: Footprint,
    last_used_ms: int,
    verdicts: list[policy.Verdict],
    left_out: dict[str, str],
    history: list[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    newest_first = list(reversed(history))
    return {
        "model": model.model_id,
        "type": model.model_type,
        "size_bytes": size.size_bytes,
        "device_bytes": size.device_bytes,
        "last_used_ms": last_used_ms,
        "keeping": {
            "pinned": model.pinned,
            "min_copies": model.min_copies,
            "required_labels": list(model.labels),
            "preferred_labels": list(model.preferred_labels),
        },
        "placement": settings,
        "copies": [_copy(instance_id, copy, newest_first) for instance_id, copy in sorted(placement.copies.items())],
        "failures": {i: {"ts_ms": f.time_ms, "error": f.message} for i, f in sorted(placement.failures.items())},
        "next_load": _next_load(verdicts, left_out),
        "history": newest_first,
    }


def _copy(instance_id: str, copy: Any, newest_first: list[dict[str, Any]]) -> dict[str, Any]:
    decision = next((e for e in newest_first if e["event"] == "loaded" and e.get("instance") == instance_id), None)
    return {
        "instance": instance_id,
        "state": copy.state.value,
        "since_ms": copy.since_ms,
        "bytes": copy.size_bytes,
        "why": decision.get("why", "") if decision else "no decision recorded (loaded before the log began)",
        "ranking": decision.get("ranking", []) if decision else [],
    }


def _next_load(verdicts: list[policy.Verdict], left_out: dict[str, str]) -> dict[str, Any]:
    rows = [_verdict(v) for v in verdicts]
    rows += [{"instance": i, "verdict": f"left out: {why}"} for i, why in sorted(left_out.items())]
    chosen = next((v for v in verdicts if v.plan is not None), None)
    if chosen is None:
        return {"instance": None, "evicts": [], "instances": rows}
    assert chosen.plan is not None
    return {"instance": chosen.instance_id, "evicts": [c.model_id for c in chosen.plan.victims], "instances": rows}


def _verdict(verdict: policy.Verdict) -> dict[str, Any]:
    row: dict[str, Any] = {"instance": verdict.instance_id, "verdict": verdict.summary.partition(": ")[2]}
    if verdict.plan is not None and verdict.plan.victims:
        victims = verdict.plan.victims
        row["evicts"] = [{"model": v.model_id, "last_used_ms": v.last_used_ms, "bytes": v.size_bytes} for v in victims]
    return row


def as_text(doc: dict[str, Any], now_ms: int) -> str:
    """The document for a terminal."""

    def ago(ts_ms: int) -> str:
        return f"{max(now_ms - ts_ms, 0) / 1000:.0f}s ago" if ts_ms else "never"

    keeping = doc["keeping"]
    kept = ["pinned"] if keeping["pinned"] else []
    kept += [f"{keeping['min_copies']} copies at least"] if keeping["min_copies"] else []
    labels = ", ".join(keeping["required_labels"])
    kept += [f"only on instances labelled {labels}"] if labels else []
    lines = [
        f"model {doc['model']} ({doc['type']}, {doc['size_bytes']} bytes), last used {ago(doc['last_used_ms'])}",
        f"placement: eviction {doc['placement']['eviction_policy']}, thrash guard {doc['placement']['thrash_guard']}",
        *([f"kept: {'; '.join(kept)}"] if kept else []),
        "copies:" if doc["copies"] else "copies: none",
    ]
    for c in doc["copies"]:
        lines.append(f"  {c['instance']}: {c['state']} since {ago(c['since_ms'])}, {c['bytes']} bytes; {c['why']}")
        if c["ranking"]:
            lines.append(f"    chosen over: {'; '.join(c['ranking'][1:]) or 'no other instance'}")
    nxt = doc["next_load"]
    if nxt["instance"]:
        evicting = f", evicting {', '.join(nxt['evicts'])}" if nxt["evicts"] else ""
        lines.append(f"a load now would go to {nxt['instance']}{evicting}:")
    else:
        lines.append("a load now would find no instance:")
    for row in nxt["instances"]:
        victims = "; ".join(f"{v['model']} last used {ago(v['last_used_ms'])}" for v in row.get("evicts", []))
        lines.append(f"  {row['instance']}: {row['verdict']}" + (f" ({victims})" if victims else ""))
    lines.append("history, newest first:" if doc["history"] else "history: none recorded")
    for event in doc["history"]:
        details = ", ".join(
            f"{k} {v}"
            for k, v in event.items()
            if k not in ("ts_ms", "event", "router", "ranking") and v not in ("", None, [])
        )
        lines.append(f"  {ago(event['ts_ms'])}: {event['event']}" + (f" ({details})" if details else ""))
    return "\n".join(lines)
