"""h2load (Debian's nghttp2-client), the native gRPC load generator the benchmarks share: one connection, N
concurrent streams of unary ModelInfer, so the client takes little of the machine's CPU.

h2load counts HTTP statuses only; the Python load generator beside it checks every answer's gRPC status.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import PAYLOADS, cpu_ns

TIMEOUT_S = 120
_UNITS_US = {"us": 1, "ms": 1000, "s": 1_000_000}


def find() -> str | None:
    """h2load's path; None, said on stderr, when it is not installed."""
    found = shutil.which("h2load")
    if found is None:
        print("h2load not found (apt-get install nghttp2-client): native client rows skipped", file=sys.stderr)
    return found


def grpc_body(model: str) -> bytes:
    """A gRPC message frame (uncompressed) carrying the small ModelInfer request."""
    message = PAYLOADS["small"](model)
    return b"\0" + struct.pack(">I", len(message)) + message


@dataclass(frozen=True)
class Cell:
    rps: float
    mean_us: float
    cpu_us: float
    """CPU per request of the processes measured (the target's), in µs."""


def run(
    h2load: str,
    address: str,
    body_file: Path,
    streams: int,
    seconds: int,
    pids: Sequence[int],
    headers: Sequence[str] = (),
) -> Cell:
    """One run of `seconds` (after a warm-up second) against address; pids: whose CPU counts for the target."""
    url = f"http://{address}/inference.GRPCInferenceService/ModelInfer"
    argv = [
        h2load, url, "-c", "1", "-m", str(streams), "-D", str(seconds), "--warm-up-time", "1", "-d", str(body_file),
        "-H", "content-type: application/grpc", "-H", "te: trailers", *(a for h in headers for a in ("-H", h)),
    ]  # fmt: skip
    before = sum(cpu_ns(p) for p in pids)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    spent = sum(cpu_ns(p) for p in pids) - before
    succeeded = int(re.search(r"(\d+) succeeded", done.stdout).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", done.stdout).group(1))  # type: ignore[union-attr]
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", done.stdout)
    assert mean is not None, done.stdout
    # The CPU window includes the warm-up second: count the requests of that second too, at the measured rate.
    return Cell(rps, float(mean.group(1)) * _UNITS_US[mean.group(2)], spent / 1000 / max(succeeded + rps, 1))
