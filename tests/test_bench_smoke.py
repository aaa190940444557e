"""The benchmark command runs end to end in quick mode and writes its results (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as bench_main

REPO = Path(__file__).resolve().parent.parent
# Every scenario `python -m bench` runs, with the plots it must draw: a scenario that goes missing fails here.
SCENARIOS = {
    "hop": ["hop.png"],
    "rest": ["rest.png"],
    "coldstart": ["coldstart.png"],
    "profile": [],
    "scale": [],
    "cache_sim": [],
    "churn": [],
    "native": [],
    "rollout": [],
    "thrash": [],
    "routers": [],
}


@pytest.mark.slow
def test_quick_bench_writes_json_and_plots_for_every_scenario(tmp_path: Path, haproxy_binary: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert set(SCENARIOS) == set(bench_main.SCENARIOS), "a scenario the bench runs is not checked here"
    assert {p.stem for p in tmp_path.glob("*.json")} == set(SCENARIOS)
    for scenario, plots in SCENARIOS.items():
        record = json.loads((tmp_path / f"{scenario}.json").read_text())
        assert record["machine"]["nproc"] >= 1
        assert isinstance(record["targets"], list)
        for plot in plots:
            assert (tmp_path / plot).stat().st_size > 0


@pytest.mark.slow
def test_the_before_and_after_hop_comparison_runs_both_routers(tmp_path: Path) -> None:
    """bench.ab against this very commit: both sides must serve, and every row have both sides (no timing asserted)."""
    out = tmp_path / "ab.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--base", "HEAD", "--seconds", "1", "--rounds", "1", "--concurrency", "1"]
        + ["--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["client"], r["target"]) for r in rows} >= {("python", "base"), ("python", "head")}
    assert all(r["rps"] > 0 for r in rows)
