"""The benchmark command runs end to end in quick mode and writes its results (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Scenarios owned by this suite's bench runner; others (scale, cache_sim) are checked when their module exists.
ALWAYS = {"hop": ["hop.png"], "rest": ["rest.png"], "coldstart": ["coldstart.png"], "profile": []}


@pytest.mark.slow
def test_quick_bench_writes_json_and_plots_for_every_scenario(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("pyinstrument")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    expected = dict(ALWAYS)
    for optional in ("scale", "cache_sim"):
        if (REPO / "bench" / f"{optional}.py").exists():
            expected[optional] = []
    for scenario, plots in expected.items():
        record = json.loads((tmp_path / f"{scenario}.json").read_text())
        assert record["machine"]["nproc"] >= 1
        assert isinstance(record["targets"], list)
        for plot in plots:
            assert (tmp_path / plot).stat().st_size > 0
