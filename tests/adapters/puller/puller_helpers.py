"""Helpers for the puller tests: the test bucket's contents, storage-config files, and folder listings."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "mesh-test-key"
SECRET_KEY = "mesh-test-secret"
MODEL_FILES = {
    "model.joblib": b"weights " * 100,
    "config.json": b'{"name": "mnist"}',
    "nested/deeper/vocab.txt": b"a\nb\nc\n",
}
SINGLE_FILE = b"single file model"


@dataclass
class S3Store:
    """The session's bucket, holding sklearn/mnist/ (MODEL_FILES) and sklearn/mnist-svm.joblib; tests that add
    objects put them under a prefix of their own (unique_prefix)."""

    endpoint: str
    bucket: str
    client: Any

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)


def write_storage_key(config_dir: Path, key: str, endpoint: str, bucket: str | None = None, **extra: str) -> None:
    """Writes one storage key in KServe's storage-config shape."""
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "type": "s3",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "endpoint_url": endpoint,
        "region": "us-east-1",
        **({"bucket": bucket} if bucket else {}),
        **extra,
    }
    (config_dir / key).write_text(json.dumps(config))


def files_under(folder: Path) -> dict[str, bytes]:
    """Every regular file below `folder`, by '/'-separated relative name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def everything_under(folder: Path) -> set[str]:
    """Every entry below `folder` (empty when it does not exist); entries vanishing meanwhile are skipped."""
    found = set()
    for directory, folders, files in os.walk(folder):
        base = Path(directory).relative_to(folder)
        found.update((base / name).as_posix() for name in folders + files)
    return found


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
