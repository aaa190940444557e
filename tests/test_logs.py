"""`--log-format json`: every stderr line of the router and of its runtimes is one JSON object."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness.serve import REPO, serving

from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.logs import JsonFormatter
from mesh.processes import python_module_command


def _parse_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"stderr line {number} is not JSON: {line!r}\n--- stderr ---\n{text}")
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= set(record), line
        ts = datetime.fromisoformat(record["ts"])
        assert record["ts"].endswith("Z") and ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
        records.append(record)
    return records


def test_a_record_becomes_one_json_line_with_its_extra_fields() -> None:
    record = logging.LogRecord("mesh.placement.manager", logging.INFO, __file__, 1, "loaded %s", ("m",), None)
    record.__dict__.update({"model": "m", "instance": "rt-a", "ms": 12, "bytes": 753, "path": Path("/x")})
    line = JsonFormatter({"runtime": "rt-a"}).format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed.pop("ts").endswith("Z")
    assert parsed == {
        "level": "INFO",
        "logger": "mesh.placement.manager",
        "message": "loaded m",
        "runtime": "rt-a",
        "model": "m",
        "instance": "rt-a",
        "ms": 12,
        "bytes": 753,
        "path": "/x",
    }


def test_an_exception_stays_on_its_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: bad\nthing" in json.loads(line)["exception"]


@pytest.mark.slow
def test_mesh_serve_and_its_runtimes_log_json_lines(tmp_path: Path) -> None:
    model = tmp_path / "echo.json"
    model.write_text(json.dumps({"ballast_bytes": 5000}))
    args = ("--runtimes", "1", "--no-examples", "--kv", "memory://", "--rest-port", "-1")
    with serving(tmp_path, *args, global_args=("--log-format", "json")) as serve:
        with grpc.insecure_channel(serve.grpc_address) as channel:
            management = mm_grpc.ModelMeshStub(channel)
            info = mm.ModelInfo(type="echo", path=str(model))
            request = mm.RegisterModelRequest(modelId="echo-j", modelInfo=info, loadNow=True, sync=True)
            assert management.registerModel(request, timeout=30).status == mm.ModelStatusInfo.LOADED
            management.unregisterModel(mm.UnregisterModelRequest(modelId="echo-j"), timeout=30)
    records = _parse_lines(serve.output())

    [loaded] = [r for r in records if r["message"].startswith("loaded model echo-j on runtime-0 in ")]  # the router's
    assert loaded["logger"] == "mesh.placement.loader" and loaded["level"] == "INFO"
    assert (loaded["model"], loaded["instance"]) == ("echo-j", "runtime-0")
    assert loaded["bytes"] >= 5000  # the ballast and the model's own few bytes, as measured by the runtime
    assert isinstance(loaded["ms"], int) and f"in {loaded['ms']} ms ({loaded['bytes']} bytes)" in loaded["message"]
    [unloaded] = [r for r in records if r["message"].startswith("unloaded model echo-j") and "runtime" not in r]
    assert (unloaded["model"], unloaded["instance"]) == ("echo-j", "runtime-0")
    # The runtime process logs in the same format, naming itself.
    assert any(r.get("runtime") == "runtime-0" and r["logger"].startswith("adapters.builtin") for r in records)


def test_cli_errors_are_json_lines_too() -> None:
    result = subprocess.run(
        [*python_module_command("mesh"), "--log-format", "json", "models", "status", "m"]
        + ["--address", "127.0.0.1:1", "--timeout", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [error] = _parse_lines(result.stderr)
    assert (error["level"], error["logger"]) == ("ERROR", "mesh.cli")
    assert error["message"].startswith("UNAVAILABLE: ")
