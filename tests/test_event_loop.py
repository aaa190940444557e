"""`mesh serve`'s event loop setting (MESH_EVENT_LOOP): what each value runs on, and a clear error for others."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from mesh.processes import python_module_command
from mesh.serve import event_loop_factory


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert event_loop_factory("asyncio") is None


def test_uvloop_and_auto_run_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")  # installed with mesh (pyproject), except on Windows
    for name in ("uvloop", "auto"):
        factory = event_loop_factory(name)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
            assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
        finally:
            loop.close()


def test_an_unknown_loop_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="is not one of auto, uvloop, asyncio"):
        event_loop_factory("trio")
    result = subprocess.run(
        [*python_module_command("mesh"), "serve", "--no-examples"],
        env={"MESH_EVENT_LOOP": "trio", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "trio" in result.stderr, result.stderr
