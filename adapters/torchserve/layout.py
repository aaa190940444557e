"""From pulled files to an entry of TorchServe's model store, and the torch-model-archiver call a folder needs.

A model is one of (docs/runtimes/torchserve.md):
- a `.mar` file (any name; a zip), or a folder holding exactly one: linked as `<id>.mar`;
- an archive already unpacked (a folder with MAR-INF/MANIFEST.json, torch-model-archiver's "no-archive"
  format): linked as `<id>`;
- a folder of parts (handler.py, the serialized weights, optionally model.py and more), with an optional
  `archive.json` naming them: archived here by torch-model-archiver (no-archive format, inside the model's own
  pulled folder, so it goes with the pulled files), then linked as `<id>`.
The store holds only links, under names derived from the model id, so it can be emptied at any time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from adapters.puller import PulledModel
from mesh.errors import InvalidArgument, ModelLoadFailed

MODEL_TYPES = ("pytorch-mar",)
# torch-model-archiver's own rule for model names (model_packaging_utils.py); 200 leaves room for ".mar".
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
MANIFEST = Path("MAR-INF", "MANIFEST.json")
DESCRIPTOR = "archive.json"
ARCHIVE_DIR = ".torchserve-archive"
"""Where a folder is archived, inside the model's pulled folder (hidden, so never taken for a part)."""
SERIALIZED_SUFFIXES = (".pt", ".pth", ".pt2", ".bin", ".ckpt", ".safetensors", ".onnx", ".torchscript")
DEFAULT_HANDLER = "handler.py"
DEFAULT_MODEL_FILE = "model.py"
DEFAULT_CONFIG_FILE = "model-config.yaml"
DEFAULT_REQUIREMENTS = "requirements.txt"
DESCRIPTOR_KEYS = frozenset(
    {"handler", "serialized_file", "model_file", "extra_files", "config_file", "requirements_file", "version"}
)
# The archiver reads extra files as a comma-separated list of paths or glob patterns.
_UNSAFE_IN_ARGS = re.compile(r"[,*?\[\]]")


def check_model_name(model_id: str) -> None:
    """Raise InvalidArgument unless the id can name a TorchServe model (and its store entry)."""
    if not _MODEL_NAME.fullmatch(model_id):
        raise InvalidArgument(
            f"model id {model_id!r} cannot name a TorchServe model: use 1-200 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class ArchiveArgs:
    """torch-model-archiver's arguments for a folder of parts (absolute paths, except a built-in handler name)."""

    handler: str
    serialized_file: Path | None
    model_file: Path | None
    extra_files: tuple[Path, ...]
    config_file: Path | None
    requirements_file: Path | None
    version: str
    export_path: Path

    def argv(self, archiver: Path, model_id: str) -> list[str]:
        argv = [str(archiver), "--model-name", model_id, "--version", self.version, "--handler", self.handler]
        for flag, value in (
            ("--serialized-file", self.serialized_file),
            ("--model-file", self.model_file),
            ("--config-file", self.config_file),
            ("--requirements-file", self.requirements_file),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if self.extra_files:
            argv += ["--extra-files", ",".join(str(p) for p in self.extra_files)]
        return [*argv, "--export-path", str(self.export_path), "--archive-format", "no-archive", "--force"]


@dataclass(frozen=True)
class StoreEntry:
    """What the store gets for a model: a link `name` → `target`, after archiving when `archive` is set."""

    name: str
    """The url TorchServe registers: `<id>.mar` or `<id>`."""
    target: Path
    archive: ArchiveArgs | None = None
    note: str = ""


def plan_entry(model_id: str, model: PulledModel) -> StoreEntry:
    """How the pulled files become a store entry; ModelLoadFailed says what was expected when nothing fits."""
    path = model.path
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelLoadFailed(
                f"model {model_id}: {path.name} is not a .mar archive (a zip); give a .mar file or a folder "
                f"with {DEFAULT_HANDLER} (see docs/runtimes/torchserve.md)"
            )
        return StoreEntry(f"{model_id}.mar", path, note=f"archive {path.name}")
    if not path.is_dir():
        raise ModelLoadFailed(f"model {model_id}: nothing was pulled at {path}")
    if (path / MANIFEST).is_file():
        return StoreEntry(model_id, path, note="unpacked archive")
    if (path / DESCRIPTOR).is_file() or (path / DEFAULT_HANDLER).is_file():
        export = model.directory / ARCHIVE_DIR
        if export == path:
            raise ModelLoadFailed(f"model {model_id}: a model folder may not be named {ARCHIVE_DIR}")
        return StoreEntry(model_id, export / model_id, archive_args(model_id, path, export), "archived by the adapter")
    archives = [p for p in _visible(path) if p.suffix == ".mar" and p.is_file()]
    if len(archives) == 1:
        return StoreEntry(f"{model_id}.mar", archives[0], note=f"archive {archives[0].name}")
    raise ModelLoadFailed(
        f"model {model_id}: the folder {path.name} holds "
        + (f"{len(archives)} .mar files" if archives else f"no .mar file, no {MANIFEST} and no {DEFAULT_HANDLER}")
        + "; give one .mar, an unpacked archive, or the parts to archive (see docs/runtimes/torchserve.md)"
    )


def archive_args(model_id: str, folder: Path, export: Path) -> ArchiveArgs:
    """The archiver's arguments from archive.json where it names them, else from the folder's conventions."""
    spec = _read_descriptor(model_id, folder)

    def part(key: str, default: str | None) -> Path | None:
        name = spec.get(key, default if default and (folder / default).exists() else None)
        return None if name is None else _inside(model_id, folder, name, key)

    handler = str(spec.get("handler", DEFAULT_HANDLER))
    # A file of the folder, else the name of one of TorchServe's built-in handlers (e.g. image_classifier).
    handler_path = folder / handler
    if handler_path.is_file():
        handler = str(_inside(model_id, folder, handler, "handler"))
    serialized = part("serialized_file", None) if "serialized_file" in spec else _serialized_file(model_id, folder)
    named = {
        "model_file": part("model_file", DEFAULT_MODEL_FILE),
        "config_file": part("config_file", DEFAULT_CONFIG_FILE),
        "requirements_file": part("requirements_file", DEFAULT_REQUIREMENTS),
    }
    if "extra_files" in spec:
        if not isinstance(spec["extra_files"], list):
            raise ModelLoadFailed(f"model {model_id}: {DESCRIPTOR}'s extra_files must be a list of names")
        extra = tuple(_inside(model_id, folder, str(name), "extra_files") for name in spec["extra_files"])
    else:
        taken = {p for p in (handler_path, serialized, *named.values()) if p is not None}
        extra = _conventional_extras(model_id, folder, taken)
    return ArchiveArgs(
        handler=handler,
        serialized_file=serialized,
        extra_files=extra,
        version=str(spec.get("version", "1.0")),
        export_path=export,
        **named,
    )


def _read_descriptor(model_id: str, folder: Path) -> dict[str, object]:
    path = folder / DESCRIPTOR
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadFailed(f"model {model_id}: {DESCRIPTOR} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise ModelLoadFailed(f"model {model_id}: {DESCRIPTOR} must hold a JSON object")
    unknown = sorted(set(spec) - DESCRIPTOR_KEYS)
    if unknown:
        known = ", ".join(sorted(DESCRIPTOR_KEYS))
        raise ModelLoadFailed(f"model {model_id}: {DESCRIPTOR} has unknown keys {unknown}; known: {known}")
    return spec


def _inside(model_id: str, folder: Path, name: str, key: str) -> Path:
    """The folder's file `name`, refusing what leaves the folder or would be misread by the archiver."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or path == folder.resolve():
        raise ModelLoadFailed(f"model {model_id}: {key} {name!r} is not inside the model folder")
    if _UNSAFE_IN_ARGS.search(name):
        raise ModelLoadFailed(f"model {model_id}: {key} {name!r} has a character torch-model-archiver misreads (,*?[])")
    if not path.exists():
        raise ModelLoadFailed(f"model {model_id}: {key} {name!r} is not in the model folder")
    return path


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _serialized_file(model_id: str, folder: Path) -> Path | None:
    found = [p for p in _visible(folder) if p.is_file() and p.suffix in SERIALIZED_SUFFIXES]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelLoadFailed(f"model {model_id}: several serialized files ({names}); name one in {DESCRIPTOR}")
    return found[0].resolve() if found else None


def _conventional_extras(model_id: str, folder: Path, taken: set[Path]) -> tuple[Path, ...]:
    """Every other visible file of the folder. A subfolder is refused: the archiver would spill its contents into
    the archive's top level, which is rarely what the handler expects."""
    extras = []
    for entry in _visible(folder):
        if entry.name == DESCRIPTOR or entry in taken or entry.resolve() in taken:
            continue
        if entry.is_dir():
            raise ModelLoadFailed(
                f"model {model_id}: subfolder {entry.name!r}: torch-model-archiver copies a folder's contents to "
                f"the archive's top level; name what to include in {DESCRIPTOR}'s extra_files, or give a .mar"
            )
        extras.append(_inside(model_id, folder, entry.name, "extra file"))
    return tuple(extras)


def link(store: Path, entry: StoreEntry) -> None:
    """Point the store entry at its target, replacing any older link of the same name in one step."""
    store.mkdir(parents=True, exist_ok=True)
    temporary = store / f".link-{uuid.uuid4().hex}"
    os.symlink(entry.target, temporary)
    os.replace(temporary, store / entry.name)


def unlink(store: Path, model_id: str) -> None:
    """Remove the model's store entries (either form); nothing to do when absent."""
    for name in (f"{model_id}.mar", model_id):
        path = store / name
        if path.is_symlink():
            path.unlink()


def clear_store(store: Path) -> None:
    """Empty the store: the adapter owns it, and starts with nothing loaded."""
    store.mkdir(parents=True, exist_ok=True)
    for entry in store.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
