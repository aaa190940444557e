"""A runtime process that joined a mesh on its own leaves it in order on SIGTERM: its record marked draining,
then withdrawn, then the marker a model server beside it waits for (--left-marker) is written, then it exits."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from harness.serve import REPO

from mesh.processes import python_module_command

TIMEOUT_S = 30.0


def test_a_stopped_runtime_writes_its_left_marker_only_once_out_of_routing(tmp_path: Path) -> None:
    marker, port_file = tmp_path / "left", tmp_path / "rt.port"
    marker.write_text("from a former run")  # removed at start: this run has not left
    command = [
        *python_module_command("adapters.builtin"),
        *("--port", "0", "--port-file", str(port_file), "--instance-id", "rt-leaving"),
        *("--kv", f"file://{tmp_path / 'kv.log'}", "--handoff-grace-s", "5", "--left-marker", str(marker)),
    ]
    with (tmp_path / "rt.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not port_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "rt.log").read_text()
            time.sleep(0.05)
        assert json.loads(port_file.read_text())["instance_id"] == "rt-leaving"
        assert not marker.exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert marker.exists()
    output = (tmp_path / "rt.log").read_text()
    # Alone in its store: nothing to hand off, so it leaves at once, and says so in order.
    steps = ["process: stopping", "draining: every recently used model is served elsewhere", "process: stopped"]
    positions = [output.index(step) for step in steps]
    assert positions == sorted(positions), output
