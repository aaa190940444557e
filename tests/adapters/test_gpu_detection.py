"""What GPUs an adapter reports (adapters/common/devices.py): nvidia-smi's answer, read by running it. This machine
has no GPU, so an `nvidia-smi` script on PATH plays the driver's: the real process is run and its output parsed;
without one (or with one that fails) no device is reported."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adapters.common import devices

MIB = 1024 * 1024


def fake_smi(directory: Path, script: str) -> None:
    path = directory / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_each_gpu_nvidia_smi_lists_is_a_device_with_its_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The query an adapter makes must be the one the script answers: it checks its arguments.
    fake_smi(
        tmp_path,
        '[ "$1" = "--query-gpu=memory.total,memory.used" ] && [ "$2" = "--format=csv,noheader,nounits" ] || exit 9\n'
        'echo "143771, 1024"\necho "143771, 0"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert devices.detect() == [devices.Device(143771 * MIB, 1024 * MIB), devices.Device(143771 * MIB, 0)]


def test_no_driver_or_a_failing_one_means_no_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert devices.detect() == []
    fake_smi(tmp_path, 'echo "NVIDIA-SMI has failed because it could not communicate with the driver" >&2\nexit 9\n')
    assert devices.detect() == []
