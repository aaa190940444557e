"""Fixtures for the puller tests: a real S3-compatible server (moto, in its own process on 127.0.0.1), a fresh
bucket per test, and a storage-config folder pointing at it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest
from puller_helpers import ACCESS_KEY, MODEL_FILES, SECRET_KEY, SINGLE_FILE, S3Store, write_storage_key

from adapters.puller import Puller


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's AWS setup may reach a test, and nothing may ask instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture(scope="session")
def s3_store(s3_endpoint: str) -> S3Store:
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    store = S3Store(s3_endpoint, f"models-{uuid.uuid4().hex[:12]}", client)
    client.create_bucket(Bucket=store.bucket)
    for name, body in MODEL_FILES.items():
        store.put(f"sklearn/mnist/{name}", body)
    store.put("sklearn/mnist-svm.joblib", SINGLE_FILE)
    return store


@pytest.fixture
def storage_config(tmp_path: Path, s3_store: S3Store) -> Path:
    """A storage-config folder with a 'localMinIO' key pointing at the test bucket."""
    config_dir = tmp_path / "storage-config"
    write_storage_key(config_dir, "localMinIO", s3_store.endpoint, s3_store.bucket)
    return config_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The puller's root folder, resolved as the puller reports it (not created: the puller creates it)."""
    return (tmp_path / "models").resolve()


@pytest.fixture
def s3_puller(root: Path, storage_config: Path) -> Puller:
    return Puller(root, storage_config)
