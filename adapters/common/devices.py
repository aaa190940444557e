"""The accelerators (GPUs) beside an adapter's model server, and their memory: NVML, through `nvidia-smi` (which
the NVIDIA driver installs wherever a GPU is usable), so that no Python binding is needed. No GPU, no driver:
none. An adapter reports what it finds in runtimeStatus (meshDevices) unless told the capacities
(--device-capacity-bytes, which the Kubernetes controller sets from `nvidia.com/gpu` and its per-GPU setting)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 5.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Device:
    capacity_bytes: int
    used_bytes: int


def parse_nvidia_smi(output: str) -> list[Device]:
    """`nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits` (MiB per line)."""
    devices = []
    for line in output.splitlines():
        if not line.strip():
            continue
        total, used = (int(part.strip()) for part in line.split(","))
        devices.append(Device(total * MIB, used * MIB))
    return devices


def detect() -> list[Device]:
    """Each GPU's memory and use now; [] without a GPU, a driver, or an answer."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = [smi, "--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=True)
        return parse_nvidia_smi(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi did not say what GPUs there are (%s): reporting none", exc)
        return []
