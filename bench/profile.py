"""The router's hot path under load, sampled by pyinstrument: where a forwarded request's time goes.

The router of scenario 1, on the event loop `mesh serve` picks by default, runs under `python -m pyinstrument`
while the load generator sends small ModelInfer requests at concurrency 8 to it alone; on SIGTERM the router
stops cleanly and pyinstrument writes its session, which is rendered here twice: the functions with the most own
time (whole process), and mesh's own functions by time including callees (start-up imports left out).
pyinstrument samples wall-clock stacks (1 ms interval), and grpc's Cython core is opaque to it, so grpc time is
booked on the Python frame that called into it. Read the numbers as shares.
"""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from pathlib import Path

from bench._serving import serve_loop
from bench.common import REPO
from bench.hop import measure, servers

FULL = {"seconds": 10.0, "warmup": 1.0, "rounds": 1, "concurrency": [8], "payloads": ["small"]}
QUICK = {"seconds": 2.0, "warmup": 0.5, "rounds": 1, "concurrency": [8], "payloads": ["small"]}
TOP = 15


def _short(path: str) -> str:
    path = re.sub(r".*/site-packages/", "", path)
    path = re.sub(r".*/lib/python3\.\d+/", "", path)
    return path.replace(f"{REPO}/", "")


def _tables(session_path: Path) -> dict:
    """Own time per function (whole process) and total time per mesh function, from the sampled frame tree."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    own: dict[str, float] = defaultdict(float)
    total: dict[str, float] = defaultdict(float)

    def walk(frame, active: frozenset[str]) -> None:
        if frame.function == "_find_and_load" or frame.function.startswith("["):
            return  # imports at start-up (not the hot path); pyinstrument's synthetic frames ([self], [await])
        key = f"{frame.function} ({_short(frame.file_path or '?')}:{frame.line_no})"
        if frame is not root:
            own[key] += frame.total_self_time
        if key not in active:  # recursion counts once
            total[key] += frame.time
        for child in frame.children:
            walk(child, active | {key})

    if root is not None:
        walk(root, frozenset())
    duration = session.duration or 1.0

    def rows(items: list[tuple[str, float]]) -> list[dict]:
        return [{"function": k, "seconds": round(t, 4), "share": round(t / duration, 4)} for k, t in items]

    mesh_total = sorted(((k, t) for k, t in total.items() if "(mesh/" in k), key=lambda kv: -kv[1])
    mesh_own = sum(t for k, t in own.items() if "(mesh/" in k)
    return {
        "duration_s": round(duration, 3),
        "samples": session.sample_count,
        "mesh_own_s": round(mesh_own, 3),
        "top_own": rows(sorted(own.items(), key=lambda kv: -kv[1])[:TOP]),
        "mesh_total": rows(mesh_total[:TOP]),
    }


def markdown(tables: dict) -> str:
    def block(title: str, rows: list[dict]) -> list[str]:
        out = [title, "", "| s | share | function |", "|---:|---:|---|"]
        out += [f"| {r['seconds']:.3f} | {r['share']:.1%} | `{r['function']}` |" for r in rows]
        return out + [""]

    head = (
        f"{tables['samples']} samples over {tables['duration_s']:.1f} s of the router's wall time; mesh's own"
        f" functions (own time) {tables['mesh_own_s']:.2f} s."
    )
    return "\n".join(
        [head, ""]
        + block("Whole router process, by own time:", tables["top_own"])
        + block("mesh functions, by time including callees:", tables["mesh_total"])
    )


def run(quick: bool, out_dir: Path) -> dict:
    params = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="mesh-profile-") as tmp:
        workdir = Path(tmp)
        session_path = workdir / "router.pyisession"
        prefix = ["-m", "pyinstrument", "-i", "0.001", "-r", "pyisession", "-o", str(session_path)]
        loop = serve_loop()
        with servers(workdir, router_prefix=prefix, loops=[loop]) as addresses:
            results = measure(workdir, addresses, params, [addresses["router_name"]])
        tables = _tables(session_path)
    (out_dir / "profile.md").write_text(markdown(tables) + "\n", encoding="utf-8")
    return {
        "parameters": {**params, "target": "mesh", "router_loop": loop, "profiler": "pyinstrument, 1 ms interval"},
        "cells": results["cells"],
        "profile": tables,
        "markdown": markdown(tables),
        "plots": [],
        "targets": [],
    }
