"""What a python-backend model costs in memory, measured: each of its instances is a stub process of its own
(`triton_python_backend_stub <repository>/<model>/<version>/model.py ...`), about 37 MB with numpy imported, where
its files on disk weigh a few kB. Triton reports no per-model memory on CPU, so the stubs are found in /proc.

Only where the adapter sees Triton's processes (--launch, or a pod sharing its process namespace); elsewhere
nothing is found and the size falls back to the disk estimate.
"""

from __future__ import annotations

import os
from pathlib import Path

STUB = "triton_python_backend_stub"
PROC = Path("/proc")


def python_stub_bytes(repository: Path, model_id: str, proc: Path = PROC) -> int | None:
    """The proportional set size (PSS; RSS where PSS can't be read) of the model's python stubs, or None when
    none is found."""
    prefix = f"{repository}/{model_id}/"
    total, found = 0, False
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if len(argv) < 2 or not argv[0].endswith(STUB.encode()) or not argv[1].decode().startswith(prefix):
                continue
            total += _pss_bytes(entry)
            found = True
        except (OSError, UnicodeDecodeError):
            continue  # gone meanwhile, or not ours to read
    return total if found else None


def _pss_bytes(process: Path) -> int:
    try:
        for line in (process / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    resident_pages = int((process / "statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
