"""A model's folder over time: replaced whole by a second pull, kept by a failed one, deleted by remove() and
purge(), and never installed by a pull that was abandoned."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from puller_helpers import S3Store, everything_under, files_under, unique_prefix

from adapters.puller import Puller
from mesh.errors import ModelLoadFailed, Unavailable


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


async def test_a_second_pull_replaces_the_previous_files(root: Path, tmp_path: Path) -> None:
    v1 = write_files(tmp_path / "v1" / "model", {"weights": b"one", "only-in-v1": b"old"})
    v2 = write_files(tmp_path / "v2" / "model", {"weights": b"two", "only-in-v2": b"new"})
    puller = Puller(root)

    first = await puller.pull("m", str(v1))
    second = await puller.pull("m", str(v2))

    assert second.directory == first.directory
    assert files_under(second.path) == {"weights": b"two", "only-in-v2": b"new"}
    assert everything_under(root) == {"m", "m/model", "m/model/weights", "m/model/only-in-v2"}


async def test_a_failed_pull_keeps_the_previous_files(root: Path, tmp_path: Path) -> None:
    v1 = write_files(tmp_path / "v1" / "model", {"weights": b"one"})
    puller = Puller(root)
    first = await puller.pull("m", str(v1))

    with pytest.raises(ModelLoadFailed):
        await puller.pull("m", str(tmp_path / "absent"))

    assert files_under(first.path) == {"weights": b"one"}
    assert everything_under(root) == {"m", "m/model", "m/model/weights"}


async def test_remove_deletes_only_that_models_files(root: Path, tmp_path: Path) -> None:
    source = write_files(tmp_path / "src" / "model", {"weights": b"w"})
    puller = Puller(root)
    kept = await puller.pull("kept", str(source))
    gone = await puller.pull("gone", str(source))

    puller.remove("gone")
    puller.remove("gone")  # absent now: not an error
    puller.remove("never-pulled")

    assert not gone.directory.exists()
    assert files_under(kept.path) == {"weights": b"w"}
    assert files_under(source) == {"weights": b"w"}


async def test_purge_empties_the_root(root: Path, tmp_path: Path) -> None:
    source = write_files(tmp_path / "src" / "model", {"weights": b"w"})
    puller = Puller(root)
    await puller.pull("a", str(source))
    await puller.pull("b/c", str(source))
    (root / "stray-file").write_bytes(b"left by a crash")

    puller.purge()

    assert await asyncio.to_thread(root.is_dir)
    assert everything_under(root) == set()
    assert files_under(source) == {"weights": b"w"}


def test_purge_of_a_root_not_yet_created_does_nothing(root: Path) -> None:
    Puller(root).purge()
    assert not root.exists()


@pytest.fixture
def big_s3_model(s3_store: S3Store) -> str:
    """An S3 folder with enough objects that a pull of it takes a noticeable while."""
    prefix = unique_prefix()
    for index in range(15):
        s3_store.put(f"{prefix}/big/part-{index:03}", b"x" * 100)
    return f"{prefix}/big"


async def poll_until(condition: Callable[[], bool]) -> None:
    """Polls the filesystem (there is no event to wait on) until `condition` holds, for at most 10s."""
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.002)


async def wait_until_staging_has_files(root: Path) -> None:
    """Waits until a pull has begun writing (a '.pull-*' folder with a file in it)."""
    await poll_until(lambda: any(name.startswith(".pull-") and "/" in name for name in everything_under(root)))


async def wait_until_no_staging(root: Path) -> None:
    await poll_until(lambda: not any(name.startswith(".pull-") for name in everything_under(root)))


async def test_remove_during_a_pull_stops_it_and_nothing_is_installed(
    s3_puller: Puller, root: Path, big_s3_model: str
) -> None:
    pull = asyncio.create_task(s3_puller.pull("big", big_s3_model, json.dumps({"storage_key": "localMinIO"})))
    await wait_until_staging_has_files(root)

    s3_puller.remove("big")

    with pytest.raises(Unavailable, match="the pull was cancelled"):
        await pull
    assert everything_under(root) == set()


async def test_a_cancelled_pull_installs_nothing(s3_puller: Puller, root: Path, big_s3_model: str) -> None:
    pull = asyncio.create_task(s3_puller.pull("big", big_s3_model, json.dumps({"storage_key": "localMinIO"})))
    await wait_until_staging_has_files(root)

    pull.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pull
    await wait_until_no_staging(root)  # the worker thread notices at its next file and cleans up

    assert everything_under(root) == set()
