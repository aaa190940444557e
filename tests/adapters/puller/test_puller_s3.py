"""Pulling from a real S3-compatible server (moto on 127.0.0.1): folders, single objects, and which storage key,
bucket and overrides apply."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from puller_helpers import (
    MODEL_FILES,
    SINGLE_FILE,
    S3Store,
    everything_under,
    files_under,
    unique_prefix,
    write_storage_key,
)

from adapters.puller import Puller
from mesh.errors import InvalidArgument, ModelLoadFailed, Unavailable

MINIO_KEY = json.dumps({"storage_key": "localMinIO", "model_type": {"name": "sklearn"}})


async def test_a_prefix_downloads_as_a_folder_with_nested_files(s3_puller: Puller, root: Path) -> None:
    pulled = await s3_puller.pull("mnist", "sklearn/mnist", MINIO_KEY)

    assert pulled.directory.parent == root
    assert pulled.path == pulled.directory / "mnist"
    # Exactly the folder's objects: not sklearn/mnist-svm.joblib, which shares the key prefix 'sklearn/mnist'.
    assert files_under(pulled.path) == MODEL_FILES
    assert pulled.disk_size_bytes == sum(len(body) for body in MODEL_FILES.values())
    assert pulled.model_type == "sklearn"


async def test_a_single_object_downloads_as_a_file(s3_puller: Puller) -> None:
    pulled = await s3_puller.pull("svm", "sklearn/mnist-svm.joblib", MINIO_KEY)

    assert pulled.path == pulled.directory / "mnist-svm.joblib"
    assert pulled.path.read_bytes() == SINGLE_FILE
    assert pulled.disk_size_bytes == len(SINGLE_FILE)


async def test_a_trailing_slash_pulls_the_folder(s3_puller: Puller) -> None:
    pulled = await s3_puller.pull("mnist", "sklearn/mnist/", MINIO_KEY)

    assert pulled.path.name == "mnist"
    assert files_under(pulled.path) == MODEL_FILES


async def test_the_s3_uri_bucket_wins_over_the_storage_config(root: Path, tmp_path: Path, s3_store: S3Store) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "localMinIO", s3_store.endpoint, bucket="some-other-bucket")
    puller = Puller(root, config_dir)

    pulled = await puller.pull("mnist", f"s3://{s3_store.bucket}/sklearn/mnist", MINIO_KEY)

    assert files_under(pulled.path) == MODEL_FILES


async def test_storage_params_override_the_storage_config(root: Path, tmp_path: Path, s3_store: S3Store) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "localMinIO", s3_store.endpoint, bucket="some-other-bucket")
    puller = Puller(root, config_dir)
    key = json.dumps({"storage_key": "localMinIO", "storage_params": {"bucket": s3_store.bucket}})

    pulled = await puller.pull("svm", "sklearn/mnist-svm.joblib", key)

    assert pulled.path.read_bytes() == SINGLE_FILE


async def test_the_deprecated_top_level_bucket_is_honoured(root: Path, tmp_path: Path, s3_store: S3Store) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "localMinIO", s3_store.endpoint, bucket="some-other-bucket")
    key = json.dumps({"storage_key": "localMinIO", "bucket": s3_store.bucket})

    pulled = await Puller(root, config_dir).pull("svm", "sklearn/mnist-svm.joblib", key)

    assert pulled.path.read_bytes() == SINGLE_FILE


@pytest.mark.parametrize("default_key", ["default", "default_s3"])
async def test_without_a_storage_key_a_default_key_is_used(
    root: Path, tmp_path: Path, s3_store: S3Store, default_key: str
) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, default_key, s3_store.endpoint, s3_store.bucket)

    pulled = await Puller(root, config_dir).pull("svm", "sklearn/mnist-svm.joblib")

    assert pulled.path.read_bytes() == SINGLE_FILE
    assert pulled.model_type is None


async def test_a_storage_type_in_the_params_picks_default_of_that_type(
    root: Path, tmp_path: Path, s3_store: S3Store
) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "default", "http://127.0.0.1:9", "wrong-bucket")  # would fail if used
    write_storage_key(config_dir, "default_s3", s3_store.endpoint, s3_store.bucket)
    key = json.dumps({"storage_params": {"type": "s3"}})

    pulled = await Puller(root, config_dir).pull("svm", "sklearn/mnist-svm.joblib", key)

    assert pulled.path.read_bytes() == SINGLE_FILE


async def test_an_unknown_storage_key_is_invalid_and_named(s3_puller: Puller, root: Path) -> None:
    with pytest.raises(InvalidArgument, match="storage key 'nope' is not in the storage config"):
        await s3_puller.pull("mnist", "sklearn/mnist", json.dumps({"storage_key": "nope"}))
    assert not (root / "mnist").exists()


async def test_an_unsupported_storage_type_is_invalid(root: Path, tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "ftp").write_text(json.dumps({"type": "ftp", "bucket": "b"}))
    (config_dir / "gcs").write_text(json.dumps({"type": "gcs", "bucket": "b"}))

    with pytest.raises(InvalidArgument, match="storage type 'ftp' \\(storage key 'ftp'\\) does not pull 'models/m'"):
        await Puller(root, config_dir).pull("m", "models/m", json.dumps({"storage_key": "ftp"}))
    # a gcs key does not pull an s3:// path (nor the other way round)
    with pytest.raises(InvalidArgument, match="storage type 'gcs' \\(storage key 'gcs'\\) does not pull 's3://b/m'"):
        await Puller(root, config_dir).pull("m", "s3://b/m", json.dumps({"storage_key": "gcs"}))


async def test_a_missing_object_is_a_load_failure_naming_it(s3_puller: Puller, s3_store: S3Store, root: Path) -> None:
    with pytest.raises(ModelLoadFailed) as raised:
        await s3_puller.pull("gone", "sklearn/not-there", MINIO_KEY)

    assert f"no object or folder at s3://{s3_store.bucket}/sklearn/not-there" in raised.value.message
    assert "localMinIO" in raised.value.message
    assert everything_under(root) == set()  # the staging folder is gone too


async def test_a_missing_bucket_is_a_load_failure_naming_it(s3_puller: Puller) -> None:
    with pytest.raises(ModelLoadFailed, match="bucket 'no-such-bucket' does not exist"):
        await s3_puller.pull("m", "s3://no-such-bucket/sklearn/mnist", MINIO_KEY)


async def test_an_unreachable_endpoint_is_retryable(root: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "dead", f"http://127.0.0.1:{port}", "bucket")

    with pytest.raises(Unavailable, match=f"S3 endpoint http://127.0.0.1:{port} did not answer"):
        await Puller(root, config_dir).pull("m", "models/m", json.dumps({"storage_key": "dead"}))


async def test_no_bucket_anywhere_is_invalid(root: Path, tmp_path: Path, s3_store: S3Store) -> None:
    config_dir = tmp_path / "config"
    write_storage_key(config_dir, "nobucket", s3_store.endpoint)

    with pytest.raises(InvalidArgument, match="no bucket for model path 'sklearn/mnist'"):
        await Puller(root, config_dir).pull("m", "sklearn/mnist", json.dumps({"storage_key": "nobucket"}))


async def test_the_pull_runs_off_the_event_loop(s3_puller: Puller, s3_store: S3Store) -> None:
    import asyncio

    prefix = unique_prefix()
    for index in range(10):
        s3_store.put(f"{prefix}/many/file-{index:03}", b"x" * 1000)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        pulled = await s3_puller.pull("many", f"{prefix}/many", MINIO_KEY)
    finally:
        ticker.cancel()

    assert len(files_under(pulled.path)) == 10
    assert ticks >= 5  # a pull on the loop would have starved the ticker
