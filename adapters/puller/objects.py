"""What pulling from an object store (GCS, Azure Blob) comes down to, once: a model path is a folder (every
object under `key/`) or, failing that, the single object `key`; each object lands at a checked path in the pull's
destination, its name made relative to the folder. The stores say how to list and fetch (gcs.py, azure_blob.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from adapters.puller.destination import Destination
from mesh.errors import ModelLoadFailed


class ObjectStore(Protocol):
    def names(self, prefix: str) -> Iterable[str]:
        """The names of the objects whose names start with prefix."""

    def exists(self, name: str) -> bool: ...

    def fetch(self, name: str, target: Path) -> None:
        """Write the object to target."""


def download_tree(store: ObjectStore, key: str, name: str, destination: Destination, where: str) -> None:
    """The folder `key/` (it wins over an object of the same name: a model is usually a folder) or the object
    `key`, written under `name`; `where` names the location in errors."""
    prefix = key.rstrip("/") + "/"
    found = False
    for object_name in store.names(prefix):
        found = True
        relative = object_name[len(prefix) :]
        what = f"object {object_name!r} of {where}"
        if relative == "":
            continue  # the folder's own marker
        if relative.endswith("/"):
            destination.folder(f"{name}/{relative[:-1]}", what)
            continue
        target = destination.path_for(f"{name}/{relative}", what)
        store.fetch(object_name, target)
        destination.record(target)
    if found:
        return
    if key.endswith("/") or not store.exists(key):
        raise ModelLoadFailed(f"no object or folder at {where}")
    target = destination.path_for(name, f"model name {name!r}")
    store.fetch(key, target)
    destination.record(target)
