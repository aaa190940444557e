"""Measuring python-backend models by their stub processes, over a /proc laid out as Linux lays it out."""

from __future__ import annotations

import os
from pathlib import Path

from adapters.triton.memory import python_stub_bytes

REPO = Path("/srv/triton")


def _process(proc: Path, pid: int, argv: list[str], pss_kb: int | None, resident_pages: int = 0) -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    if pss_kb is not None:
        (folder / "smaps_rollup").write_text(f"Rss:  99999 kB\nPss:  {pss_kb} kB\nShared_Clean: 1 kB\n")
    (folder / "statm").write_text(f"1000 {resident_pages} 10 1 0 50 0\n")


def _stub(model_path: str) -> list[str]:
    return ["/x/backends/python/triton_python_backend_stub", model_path, "shm_region", "1048576"]


def test_the_stubs_of_a_model_are_summed_and_others_ignored(tmp_path: Path) -> None:
    _process(tmp_path, 10, _stub(f"{REPO}/m/1/model.py"), pss_kb=20_000)
    _process(tmp_path, 11, _stub(f"{REPO}/m/1/model.py"), pss_kb=1_000)  # a second instance of the model
    _process(tmp_path, 12, _stub(f"{REPO}/m2/1/model.py"), pss_kb=7_000)  # a model whose id extends "m"
    _process(tmp_path, 13, ["/usr/bin/python3", f"{REPO}/m/1/model.py"], pss_kb=5_000)
    (tmp_path / "self").mkdir()
    assert python_stub_bytes(REPO, "m", tmp_path) == 21_000 * 1024


def test_rss_is_used_where_pss_cannot_be_read(tmp_path: Path) -> None:
    _process(tmp_path, 10, _stub(f"{REPO}/m/3/model.py"), pss_kb=None, resident_pages=100)
    assert python_stub_bytes(REPO, "m", tmp_path) == 100 * os.sysconf("SC_PAGE_SIZE")


def test_a_model_without_stubs_is_not_measured(tmp_path: Path) -> None:
    _process(tmp_path, 10, _stub(f"{REPO}/other/1/model.py"), pss_kb=1)
    assert python_stub_bytes(REPO, "m", tmp_path) is None
    assert python_stub_bytes(REPO, "m", tmp_path / "no-proc") is None
