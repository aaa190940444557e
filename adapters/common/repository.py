"""A model server's repository as adapters write it: one folder per model id (named by model_dir_name), holding a
marker and one settings file the server reads. The folders an adapter may delete are the ones carrying its marker,
so a hand-made folder of the same name is never touched. Plain file work: run it off the event loop."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapters.puller.names import model_dir_name
from mesh.errors import InvalidArgument, ModelLoadFailed

MARKER_FILE = ".mesh-model-id"
"""Written first in each model folder: the folders an adapter may delete are the ones carrying it."""


def check_apart(repository: Path, pulled: Path) -> None:
    """Raise InvalidArgument when a server's repository and the puller's folder overlap: the server finds models
    by the settings files under its repository, so pulled files there would be found as models too."""
    if repository.is_relative_to(pulled) or pulled.is_relative_to(repository):
        raise InvalidArgument(f"--model-repository {repository} and --models-dir {pulled} overlap")


def check_url_name(model_id: str, server: str) -> None:
    """Raise InvalidArgument unless the id can name a model in a server's REST repository API, where the name is one
    path segment: servers decode %2F before routing, so a '/' can't be carried. Every other character can."""
    if "/" in model_id:
        raise InvalidArgument(f"model id {model_id!r} contains '/', which {server}'s repository API cannot carry")


def url_segment(model_id: str) -> str:
    """The id as one percent-encoded URL path segment ('.' and '..' too, which clients would otherwise resolve)."""
    segment = quote(model_id, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def model_folder(repository: Path, model_id: str) -> Path:
    return repository / model_dir_name(model_id)


def write_model(repository: Path, model_id: str, file_name: str, settings: dict[str, Any], server: str) -> Path:
    """Write the model's folder (replacing an earlier one); the settings file appears whole, by a rename, since
    the server may be reading the repository for another model's load at the same moment."""
    folder = model_folder(repository, model_id)
    if folder.exists() and not _written_here(folder):
        raise ModelLoadFailed(f"{server}'s repository already has a folder {folder} for model {model_id!r}, not ours")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER_FILE).write_text(model_id, encoding="utf-8")
    staging = folder / f".{file_name}.tmp"
    staging.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    os.replace(staging, folder / file_name)
    return folder


def remove_model(repository: Path, model_id: str) -> None:
    """Remove the model's folder if an adapter wrote it (a hand-made one of the same name is left alone)."""
    folder = model_folder(repository, model_id)
    if _written_here(folder):
        shutil.rmtree(folder, ignore_errors=True)


def clear_repository(repository: Path) -> None:
    """Remove every model folder an adapter wrote; anything else is left alone."""
    if not repository.is_dir():
        return
    for entry in repository.iterdir():
        if _written_here(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _written_here(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER_FILE).is_file()
