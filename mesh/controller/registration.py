"""What the controller registers with mesh for a predictor: ids, the model type, path, key and required labels.

The vmodel is the InferenceService's name, so clients call the name they know. The concrete model behind it is
`<namespace>.<name>__isvc-<hash>`, the hash taken over the type, path and key: a storage change is a new concrete
model, and setVModel moves the vmodel to it once it has loaded (the old one serves until then and is then
removed, `autoDeleteTargetModel`). The owner, `isvc/<namespace>`, tells the controller's vmodels from others and
keeps two namespaces from taking over each other's name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.controller.resources import Predictor, SpecError

OWNER_PREFIX = "isvc/"
HASH_CHARS = 10
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class ModelSpec:
    """One predictor's registration: setVModel(vmodel_id → model_id, with this ModelInfo, owner)."""

    vmodel_id: str
    owner: str
    model_id: str
    model_type: str
    path: str
    key: str
    labels: tuple[str, ...] = ()
    """Required labels: the instances of the runtime the controller assigned (Runtime.instance_labels)."""
    pinned: bool = False
    """Never evicted to make room (the InferenceService's mesh.io/pinned annotation)."""
    min_copies: int = 0
    """Copies kept loaded at all times (its mesh.io/min-copies annotation)."""


def owner_of(namespace: str) -> str:
    return f"{OWNER_PREFIX}{namespace}"


def owner_namespace(owner: str) -> str | None:
    """The namespace an owner string names, or None when the vmodel is not an InferenceService's."""
    return owner[len(OWNER_PREFIX) :] if owner.startswith(OWNER_PREFIX) else None


def model_spec(
    predictor: Predictor, labels: tuple[str, ...] = (), vmodel_of: Callable[[str, str], str] = lambda _, name: name
) -> ModelSpec:
    """The registration of a predictor, loading only on instances carrying `labels` (its runtime's), as the vmodel
    `vmodel_of(namespace, name)` names (default: the InferenceService's name); SpecError for storage mesh's puller
    cannot read. A transformer's key names its predictor's vmodel the same way: it calls it through the router by
    that name, so it follows the predictor's new versions."""
    path, params = _storage(predictor)
    key: dict[str, Any] = {"model_type": {"name": predictor.model_format}}
    if predictor.format_version is not None:
        key["model_type"]["version"] = predictor.format_version
    if predictor.storage_key:
        key["storage_key"] = predictor.storage_key
    if params:
        key["storage_params"] = params
    if predictor.schema_path:
        key["schema_path"] = predictor.schema_path
    if predictor.transformer_of:
        key["predictor"] = vmodel_of(predictor.namespace, predictor.transformer_of)
    key_text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    # The labels are part of the spec: a predictor moved to another runtime is a new concrete model.
    spec = json.dumps([predictor.model_format, path, key_text, *labels], separators=(",", ":"))
    digest = hashlib.sha256(spec.encode()).hexdigest()[:HASH_CHARS]
    return ModelSpec(
        vmodel_id=vmodel_of(predictor.namespace, predictor.name),
        owner=owner_of(predictor.namespace),
        model_id=f"{predictor.namespace}.{predictor.name}__isvc-{digest}",
        model_type=predictor.model_format,
        path=path,
        key=key_text,
        labels=labels,
        pinned=predictor.pinned,
        min_copies=predictor.min_copies,
    )


PVC_ROOT = "/mnt/pvc"
"""Where runtime pods mount the persistent volume claims their models are on, each at PVC_ROOT/<claim>."""
_CLAIM = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def pvc_claim(uri: str) -> tuple[str, str]:
    """(claim, path inside it) of a pvc://<claim>/<path> storageUri; SpecError when it is not one."""
    claim, _, path = uri[len("pvc://") :].partition("/")
    if not _CLAIM.fullmatch(claim):
        raise SpecError(f"storageUri {uri!r} names no valid persistent volume claim")
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
        raise SpecError(f"storageUri {uri!r} needs a path inside the claim, without '..' or empty parts")
    return claim, "/".join(parts)


def claim_of(path: str) -> str | None:
    """The claim a registered model path is on, when it is one a pvc:// storageUri gave."""
    if not path.startswith(PVC_ROOT + "/"):
        return None
    return path[len(PVC_ROOT) + 1 :].split("/", 1)[0] or None


def _storage(predictor: Predictor) -> tuple[str, dict[str, str]]:
    """The model path the adapters' puller reads, and the storage parameters for its model key."""
    params = dict(predictor.storage_params)
    if predictor.storage_path is not None:
        return predictor.storage_path, params
    uri = predictor.storage_uri or ""
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        bucket = uri[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise SpecError(f"storageUri {uri!r} names no bucket")
        return uri, {**params, "type": "s3", "bucket": bucket}
    if scheme == "gs":
        bucket = uri[len("gs://") :].split("/", 1)[0]
        if not bucket:
            raise SpecError(f"storageUri {uri!r} names no bucket")
        return uri, {**params, "type": "gcs", "bucket": bucket}
    if scheme == "file":
        # Not KServe's, but the puller's: a path every runtime pod sees (a volume mounted at the same place).
        return uri[len("file://") :], params
    if scheme in ("http", "https"):
        # An Azure blob URL (<account>.blob.core.windows.net) is pulled from Azure, with the secret's azure key;
        # any other, a file or an archive the puller unpacks.
        return uri, params
    if scheme == "pvc":
        claim, path = pvc_claim(uri)
        return f"{PVC_ROOT}/{claim}/{path}", params  # the runtime pods mount the claim there (workloads.py)
    if not scheme:
        raise SpecError(f"storageUri {uri!r} has no scheme: use s3://bucket/path, or storage.key and storage.path")
    raise SpecError(
        f"storageUri scheme '{scheme}' is not one mesh's puller reads: use s3:// (any S3-compatible store), gs://, "
        "https://<account>.blob.core.windows.net/..., http(s)://, pvc://, or storage.key and storage.path"
    )
