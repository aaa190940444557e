"""The MLServer repository layout written from pulled files: generated and user-supplied model-settings.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.mlserver import layout
from mesh.errors import InvalidArgument, ModelLoadFailed


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("model_type", "implementation"),
    [
        ("sklearn", "mlserver_sklearn.SKLearnModel"),
        ("xgboost", "mlserver_xgboost.XGBoostModel"),
        ("lightgbm", "mlserver_lightgbm.LightGBMModel"),
        ("MLflow:2", "mlserver_mlflow.MLflowRuntime"),
    ],
)
def test_a_pulled_file_gets_its_types_implementation_and_its_absolute_path(
    tmp_path: Path, model_type: str, implementation: str
) -> None:
    model = _write(tmp_path / "m" / "model.bin")

    settings = layout.model_settings("my-model", model_type, model)

    assert settings == {"name": "my-model", "implementation": implementation, "parameters": {"uri": str(model)}}


def test_a_folder_holding_one_file_points_at_that_file(tmp_path: Path) -> None:
    model = _write(tmp_path / "m" / "iris.joblib")
    _write(tmp_path / "m" / ".hidden")

    assert layout.model_settings("m", "sklearn", tmp_path / "m")["parameters"]["uri"] == str(model)


def test_a_folder_of_several_files_and_an_mlflow_folder_stay_folders(tmp_path: Path) -> None:
    _write(tmp_path / "many" / "model.joblib")
    _write(tmp_path / "many" / "README")
    _write(tmp_path / "mlflow" / "MLmodel")

    assert layout.model_settings("m", "sklearn", tmp_path / "many")["parameters"]["uri"] == str(tmp_path / "many")
    assert layout.model_settings("m", "mlflow", tmp_path / "mlflow")["parameters"]["uri"] == str(tmp_path / "mlflow")


def test_a_type_without_an_mlserver_runtime_and_no_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="type 'onnx', which has no MLServer runtime"):
        layout.model_settings("m", "onnx", _write(tmp_path / "model.onnx"))


def test_own_settings_are_kept_with_the_mesh_id_as_name_and_an_absolute_uri(tmp_path: Path) -> None:
    folder = tmp_path / "native"
    _write(folder / "iris.joblib")
    own = {
        "name": "named-otherwise",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": 4,
        "parameters": {"uri": "./iris.joblib", "version": "v3"},
    }
    _write(folder / "model-settings.json", json.dumps(own))

    settings = layout.model_settings("mesh-id", "sklearn", folder)

    assert settings == {
        "name": "mesh-id",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": 4,
        "parameters": {"uri": str(folder / "iris.joblib"), "version": "v3"},
    }


def test_own_settings_without_uri_or_implementation_get_the_folder_and_the_types(tmp_path: Path) -> None:
    _write(tmp_path / "native" / "model-settings.json", "{}")

    settings = layout.model_settings("m", "xgboost", tmp_path / "native")

    assert settings["implementation"] == "mlserver_xgboost.XGBoostModel"
    assert settings["parameters"] == {"uri": str(tmp_path / "native")}


def test_own_settings_keep_a_remote_uri(tmp_path: Path) -> None:
    _write(tmp_path / "n" / "model-settings.json", json.dumps({"parameters": {"uri": "s3://bucket/model"}}))

    assert layout.model_settings("m", "mlflow", tmp_path / "n")["parameters"]["uri"] == "s3://bucket/model"


@pytest.mark.parametrize("uri", ["../outside.joblib", "/etc/passwd", "file:///etc/passwd", "a/../../x"])
def test_own_settings_whose_uri_leads_out_of_the_folder_are_refused(tmp_path: Path, uri: str) -> None:
    _write(tmp_path / "n" / "model-settings.json", json.dumps({"parameters": {"uri": uri}}))

    with pytest.raises(InvalidArgument, match="leads out of the model's folder"):
        layout.model_settings("m", "sklearn", tmp_path / "n")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"parameters": 3}'])
def test_unusable_own_settings_fail_the_load_with_what_is_wrong(tmp_path: Path, text: str) -> None:
    _write(tmp_path / "n" / "model-settings.json", text)

    with pytest.raises(ModelLoadFailed, match="model-settings.json of model 'm'"):
        layout.model_settings("m", "sklearn", tmp_path / "n")


def test_only_ids_with_a_slash_cannot_be_named_and_others_become_one_url_segment() -> None:
    with pytest.raises(InvalidArgument, match="contains '/'"):
        layout.check_model_name("a/b")
    for name in ("..", "sp ace?#%", "ünï", "x:1"):
        layout.check_model_name(name)
    assert layout.url_segment("..") == "%2E%2E"
    assert layout.url_segment("sp ace?#%") == "sp%20ace%3F%23%25"


def test_clearing_the_repository_removes_only_the_folders_an_adapter_wrote(tmp_path: Path) -> None:
    written = layout.write_model(tmp_path, "a model", {"name": "a model"})
    foreign = _write(tmp_path / "handmade" / "model-settings.json", "{}").parent
    _write(tmp_path / "settings.json", "{}")

    assert json.loads((written / "model-settings.json").read_text()) == {"name": "a model"}
    assert sorted(p.name for p in written.iterdir()) == [".mesh-model-id", "model-settings.json"]
    layout.clear_repository(tmp_path)

    assert not written.exists()
    assert foreign.exists() and (tmp_path / "settings.json").exists()


def test_a_hand_made_folder_of_the_same_name_is_neither_overwritten_nor_removed(tmp_path: Path) -> None:
    handmade = _write(tmp_path / "taken" / "model-settings.json", "{}")

    with pytest.raises(ModelLoadFailed, match="not ours"):
        layout.write_model(tmp_path, "taken", {"name": "taken"})
    layout.remove_model(tmp_path, "taken")

    assert handmade.read_text() == "{}"
