"""MLServer's model repository, written from pulled files: `<repository>/<model folder>/model-settings.json`, one
folder per model id, holding only that file, whose `parameters.uri` points (absolute) at the pulled files.

MLServer finds a model on load by name: it reads every model-settings.json under its repository root, at any
depth, and loads those whose `name` matches. So the repository must hold nothing but what is written here: the
pulled files, which may bring a model-settings.json of their own, stay in the puller's folder, apart.

The rules follow ModelMesh's MLServer adapter (model-mesh-mlserver-adapter/server/server.go):
- a pulled folder with its own model-settings.json is already an MLServer model: its settings are kept, with `name`
  set to the model id and a relative `parameters.uri` made absolute (a missing one becomes the folder itself);
- otherwise the settings are generated: the implementation named by the model type, the uri the pulled path.

Everything here is plain file work (run it off the event loop), tested without a server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from adapters.common import repository as repository_folders
from mesh.errors import InvalidArgument, ModelLoadFailed

SETTINGS_FILE = "model-settings.json"

IMPLEMENTATIONS: dict[str, str] = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
    "mlflow": "mlserver_mlflow.MLflowRuntime",
}
"""Model type → the MLServer runtime class that serves it (its module is the pip package mlserver-<type>)."""

MODEL_TYPES: tuple[str, ...] = tuple(IMPLEMENTATIONS)

# Types whose model is a folder MLServer reads whole (an MLflow model is MLmodel plus its artifacts).
_FOLDER_TYPES = frozenset({"mlflow"})


def check_model_name(model_id: str) -> None:
    """Raise InvalidArgument unless the id can name an MLServer model (loaded through its REST repository API)."""
    repository_folders.check_url_name(model_id, "MLServer")


url_segment = repository_folders.url_segment


def base_type(model_type: str) -> str:
    """The type without case or version: ModelMesh's types may carry one after ':' ("SKLearn:1" → "sklearn")."""
    return model_type.split(":", 1)[0].strip().lower()


def model_settings(model_id: str, model_type: str, path: Path) -> dict[str, Any]:
    """The model-settings.json content for a pulled file or folder."""
    kind = base_type(model_type)
    if path.is_dir() and (path / SETTINGS_FILE).is_file():
        return _native_settings(model_id, kind, path)
    implementation = IMPLEMENTATIONS.get(kind)
    if implementation is None:
        raise InvalidArgument(
            f"model {model_id!r} has type {model_type!r}, which has no MLServer runtime here (known: "
            f"{', '.join(MODEL_TYPES)}); give the model folder a {SETTINGS_FILE} naming its implementation"
        )
    return {"name": model_id, "implementation": implementation, "parameters": {"uri": str(_model_uri(kind, path))}}


def _model_uri(kind: str, path: Path) -> Path:
    """The pulled path, or the one file of a pulled folder: MLServer looks inside a folder only for its well-known
    file names (model.joblib, model.bst...), so a folder holding just `iris.joblib` would not load."""
    if kind in _FOLDER_TYPES or not path.is_dir():
        return path
    entries = [entry for entry in path.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_file():
        return entries[0]
    return path


def _native_settings(model_id: str, kind: str, folder: Path) -> dict[str, Any]:
    source = folder / SETTINGS_FILE
    try:
        settings = json.loads(source.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadFailed(f"the {SETTINGS_FILE} of model {model_id!r} is not valid JSON: {exc}") from exc
    if not isinstance(settings, dict):
        raise ModelLoadFailed(f"the {SETTINGS_FILE} of model {model_id!r} is not a JSON object")
    parameters = settings.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ModelLoadFailed(f"the {SETTINGS_FILE} of model {model_id!r} has 'parameters' that is not an object")
    settings["name"] = model_id
    if not settings.get("implementation") and kind in IMPLEMENTATIONS:
        settings["implementation"] = IMPLEMENTATIONS[kind]
    parameters["uri"] = _absolute_uri(model_id, parameters.get("uri"), folder)
    settings["parameters"] = parameters
    return settings


def _absolute_uri(model_id: str, uri: object, folder: Path) -> str:
    """A local uri resolved against the model's folder, and refused if it leads out of it (a model's settings must
    not make the server read other files on its disk); a remote one (s3://, models:/...) is the runtime's to
    fetch and is kept."""
    if uri is None or uri == "":
        # MLServer's default is the settings file's own folder, which here is the repository's, not the model's.
        return str(folder)
    if not isinstance(uri, str):
        raise ModelLoadFailed(f"the {SETTINGS_FILE} of model {model_id!r} has a parameters.uri that is not a string")
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return uri
    local = parsed.path if parsed.scheme == "file" else uri
    target = Path(os.path.normpath(folder / local))
    root = folder.resolve()
    if not target.resolve().is_relative_to(root):
        raise InvalidArgument(
            f"the {SETTINGS_FILE} of model {model_id!r} has parameters.uri {uri!r}, which leads out of the model's"
            " folder"
        )
    return str(target)


def write_model(repository: Path, model_id: str, settings: dict[str, Any]) -> Path:
    """The model's folder in MLServer's repository, holding its model-settings.json (adapters/common/repository)."""
    return repository_folders.write_model(repository, model_id, SETTINGS_FILE, settings, "MLServer")


remove_model = repository_folders.remove_model
clear_repository = repository_folders.clear_repository
