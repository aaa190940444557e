"""Triton's model repository, written from pulled files: `<repository>/<model id>/<version>/model.X` plus a
config.pbtxt, the files linked (not copied) to where the puller put them.

The rules follow ModelMesh's Triton adapter (model-mesh-triton-adapter/server/adaptmodellayout.go):
- a folder with its own config.pbtxt is already a Triton model: its entries are linked as they are and its config
  is copied without the `name` field (Triton requires `name` to equal the folder's name, which is the model id);
- otherwise the model file or folder is linked as `<version>/model.X`, X named by the model type, `<version>` being
  the source's highest numeric folder (or 1), and a config.pbtxt naming the type's backend is written.

Everything here is plain file work (run it off the event loop); planning is separate from writing so the rules are
tested without a server.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import InvalidArgument, ModelLoadFailed

CONFIG = "config.pbtxt"

BACKENDS: dict[str, str] = {
    "python": "python",
    "onnx": "onnxruntime",
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "tensorrt": "tensorrt",
}
"""Model type → the Triton backend that serves it (named in the config.pbtxt written for it)."""

MODEL_TYPES: tuple[str, ...] = tuple(BACKENDS)

FILE_NAMES: dict[str, str] = {
    "python": "model.py",
    "onnx": "model.onnx",
    "pytorch": "model.pt",
    "tensorflow": "model.graphdef",
    "tensorrt": "model.plan",
}
"""What a single model file is called inside its version folder, by type (Triton's default_model_filename)."""

DIR_NAMES: dict[str, str] = {
    "onnx": "model.onnx",
    "tensorflow": "model.savedmodel",
    "keras": "model.savedmodel",
}
"""What a model that is a folder is called inside its version folder; other types' folders *are* the version."""

# Letters, digits, '_', '.', '-', not starting with '.': a folder name on any filesystem, a path segment in Triton's
# REST URLs without escaping, and never '.', '..' or hidden. 200 leaves room under NAME_MAX for tooling suffixes.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_DIGITS = re.compile(r"[0-9]+")


def check_model_name(model_id: str) -> None:
    """Raise InvalidArgument unless the id can name a Triton model (and its repository folder)."""
    if not _MODEL_NAME.fullmatch(model_id):
        raise InvalidArgument(
            f"model id {model_id!r} cannot name a Triton model: use 1-200 letters, digits, '_', '.' or '-', "
            "not starting with '.'"
        )


@dataclass(frozen=True)
class Layout:
    """One model's folder in the repository: symlinks (relative path → target) and the config text to write."""

    links: dict[str, Path] = field(default_factory=dict)
    config: str = ""
    note: str = ""
    """How the source was read, for the load's log line."""


def backend_config(model_type: str) -> str:
    """The config.pbtxt written when the model brings none: the backend only, Triton auto-completes the rest
    (inputs and outputs from the model file; a python model declares them in auto_complete_config)."""
    return f'backend: "{BACKENDS[model_type]}"\n'


def plan_layout(model_type: str, source: Path) -> Layout:
    """How the pulled file or folder `source` of a model of `model_type` becomes a Triton model folder."""
    if source.is_dir() and (source / CONFIG).is_file():
        return _native(source)
    if model_type not in BACKENDS:
        raise ModelLoadFailed(
            f"model type {model_type!r} has no Triton layout: use one of {', '.join(MODEL_TYPES)}, "
            f"or give the model folder its own {CONFIG}"
        )
    version = "1"
    if source.is_dir():
        entries = sorted(source.iterdir())
        highest = highest_version(entries)
        if highest is not None:
            version, source = highest.name, highest
            entries = sorted(source.iterdir())
        # A folder holding just the model file or folder (e.g. model.onnx, or a SavedModel folder) is that model.
        if len(entries) == 1 and (model_type in FILE_NAMES or model_type in DIR_NAMES):
            source = entries[0]
    config = backend_config(model_type)
    if source.is_dir():
        if model_type in DIR_NAMES:
            return Layout({f"{version}/{DIR_NAMES[model_type]}": source}, config, f"folder as version {version}")
        return Layout({version: source}, config, f"folder as version {version}")
    if model_type == "keras":
        raise ModelLoadFailed(
            f"a keras model must be a SavedModel folder for Triton's tensorflow backend, not the file {source.name} "
            "(convert an .h5 file with tf.keras.models.load_model(...).save(folder))"
        )
    name = FILE_NAMES.get(model_type, source.name)
    return Layout({f"{version}/{name}": source}, config, f"file as version {version}")


def highest_version(entries: list[Path]) -> Path | None:
    """The numeric folder with the highest number, when every folder among `entries` is numeric (files are
    ignored); None otherwise, as ModelMesh decides whether a folder holds versions."""
    best: tuple[int, Path] | None = None
    for entry in entries:
        if not entry.is_dir():
            continue
        if not _DIGITS.fullmatch(entry.name):
            return None
        # Triton ignores version folders whose name starts with 0 ("0", "01").
        if not entry.name.startswith("0") and (best is None or int(entry.name) > best[0]):
            best = (int(entry.name), entry)
    return best[1] if best else None


def _native(source: Path) -> Layout:
    """A folder that is already a Triton model: keep its layout, drop the `name` its config may carry."""
    config = strip_top_level_name((source / CONFIG).read_text(encoding="utf-8"))
    entries = [e for e in sorted(source.iterdir()) if e.name != CONFIG]
    links = {e.name: e for e in entries}
    if not any(e.is_dir() and _DIGITS.fullmatch(e.name) for e in entries):
        # config.pbtxt beside model.py with no version folder: the folder itself is version 1; its files stay
        # linked at the top too, where a config's label_filename looks for them.
        links["1"] = source
        return Layout(links, config, "own config.pbtxt, folder as version 1")
    return Layout(links, config, "own config.pbtxt and version folders")


def write_layout(repository: Path, model_id: str, layout: Layout) -> Path:
    """Replace `<repository>/<model_id>` with `layout`; returns the model folder."""
    folder = repository / model_id
    remove_model(repository, model_id)
    folder.mkdir(parents=True)
    for relative, target in layout.links.items():
        link = folder / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    (folder / CONFIG).write_text(layout.config, encoding="utf-8")
    return folder


def remove_model(repository: Path, model_id: str) -> None:
    """Delete the model's folder in the repository (the links only: their targets belong to the puller)."""
    folder = repository / model_id
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)  # rmtree removes symlinks without following them


def clear_repository(repository: Path) -> None:
    """Delete every model folder: the adapter owns the repository, and starts with nothing loaded."""
    repository.mkdir(parents=True, exist_ok=True)
    for entry in repository.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            os.unlink(entry)


_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z0-9_]*")


def strip_top_level_name(text: str) -> str:
    """The protobuf text `text` without its top-level `name: "..."` field (nested names, such as inputs' and
    outputs', are kept). A small scanner rather than a parse: Triton's ModelConfig proto is not part of mesh, and
    everything else in the file must reach Triton byte for byte."""
    out: list[str] = []
    depth = 0
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(text[i:end])
            i = end
        elif char in "\"'":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif char in "{[<":
            depth += 1
            out.append(char)
            i += 1
        elif char in "}]>":
            depth -= 1
            out.append(char)
            i += 1
        elif _IDENT_START.match(char) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            match = _IDENT.match(text, i + 1)
            assert match is not None  # the pattern matches the empty string
            word_end = match.end()
            if depth == 0 and text[i:word_end] == "name":
                end = _name_value_end(text, word_end)
                if end is not None:
                    i = end
                    continue
            out.append(text[i:word_end])
            i = word_end
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """The index just past the quoted string that opens at `start` (backslash escapes honoured)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote or text[i] == "\n":
            return i + 1
        i += 1
    return len(text)


def _name_value_end(text: str, i: int) -> int | None:
    """After the word `name` at index i: the end of `: "value"` (adjacent strings concatenate, an optional ',' or
    ';' separator follows), or None when what follows is not a string field."""
    i = _skip_space(text, i)
    if i >= len(text) or text[i] != ":":
        return None
    i = _skip_space(text, i + 1)
    if i >= len(text) or text[i] not in "\"'":
        return None
    while True:
        i = _string_end(text, i)
        following = _skip_space(text, i)
        if following >= len(text) or text[following] not in "\"'":
            break
        i = following
    if i < len(text) and text[i] in ",;":
        i += 1
    return i


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i
