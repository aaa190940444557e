"""How pulled files become a Triton model folder, for every model type: plain file work, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.triton.layout import (
    CONFIG,
    MODEL_TYPES,
    Layout,
    check_model_name,
    clear_repository,
    plan_layout,
    remove_model,
    strip_top_level_name,
    write_layout,
)
from mesh.errors import InvalidArgument, ModelLoadFailed


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("model_type", "file_name", "link", "backend"),
    [
        ("onnx", "mnist.onnx", "1/model.onnx", "onnxruntime"),
        ("pytorch", "resnet.pt", "1/model.pt", "pytorch"),
        ("tensorflow", "frozen.pb", "1/model.graphdef", "tensorflow"),
        ("tensorrt", "engine.bin", "1/model.plan", "tensorrt"),
        ("python", "double.py", "1/model.py", "python"),
    ],
)
def test_a_model_file_is_linked_under_its_types_file_name_with_a_backend_config(
    tmp_path: Path, model_type: str, file_name: str, link: str, backend: str
) -> None:
    source = _file(tmp_path / file_name)
    assert plan_layout(model_type, source) == Layout({link: source}, f'backend: "{backend}"\n', "file as version 1")


@pytest.mark.parametrize(
    ("model_type", "link"),
    [("tensorflow", "1/model.savedmodel"), ("keras", "1/model.savedmodel"), ("onnx", "1/model.onnx")],
)
def test_a_model_folder_of_a_folder_format_is_linked_under_its_types_folder_name(
    tmp_path: Path, model_type: str, link: str
) -> None:
    source = tmp_path / "saved"
    _file(source / "saved_model.pb")
    _file(source / "variables" / "variables.index")
    assert plan_layout(model_type, source).links == {link: source}


def test_a_folder_holding_only_the_model_file_is_that_file(tmp_path: Path) -> None:
    model = _file(tmp_path / "upload" / "whatever.onnx")
    assert plan_layout("onnx", tmp_path / "upload").links == {"1/model.onnx": model}


def test_the_highest_numeric_version_folder_is_used_when_there_is_no_config(tmp_path: Path) -> None:
    source = tmp_path / "versions"
    _file(source / "1" / "model.onnx")
    newest = _file(source / "12" / "model.onnx")
    _file(source / "3" / "model.onnx")
    _file(source / "README")  # files beside version folders don't make it a plain folder
    assert plan_layout("onnx", source).links == {"12/model.onnx": newest}


def test_a_folder_with_non_numeric_folders_is_one_model_not_versions(tmp_path: Path) -> None:
    source = tmp_path / "model"
    _file(source / "1" / "a.py")
    _file(source / "helpers" / "b.py")
    _file(source / "model.py")
    assert plan_layout("python", source).links == {"1": source}


def test_a_python_folder_with_several_files_is_the_version_folder(tmp_path: Path) -> None:
    source = tmp_path / "pymodel"
    _file(source / "model.py")
    _file(source / "weights.npy")
    layout = plan_layout("python", source)
    assert layout.links == {"1": source}
    assert layout.config == 'backend: "python"\n'


def test_a_keras_file_is_refused_with_how_to_convert_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match=r"SavedModel folder.*model\.h5"):
        plan_layout("keras", _file(tmp_path / "model.h5"))


def test_an_unknown_type_without_a_config_is_refused_naming_the_known_types(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="'sklearn' has no Triton layout: use one of python, onnx"):
        plan_layout("sklearn", _file(tmp_path / "model.joblib"))


def test_a_folder_with_its_own_config_keeps_its_layout_without_the_name(tmp_path: Path) -> None:
    source = tmp_path / "native"
    _file(source / CONFIG, 'name: "resnet"\nplatform: "onnxruntime_onnx"\ninput [ { name: "x" } ]\n')
    _file(source / "1" / "model.onnx")
    _file(source / "2" / "model.onnx")
    _file(source / "labels.txt")
    layout = plan_layout("sklearn", source)  # any type: the config names the backend
    assert layout.links == {n: source / n for n in ("1", "2", "labels.txt")}
    assert layout.config == '\nplatform: "onnxruntime_onnx"\ninput [ { name: "x" } ]\n'


def test_a_config_beside_model_files_without_versions_makes_the_folder_version_1(tmp_path: Path) -> None:
    source = tmp_path / "flat"
    _file(source / CONFIG, 'backend: "python"\n')
    _file(source / "model.py")
    assert plan_layout("python", source).links == {"model.py": source / "model.py", "1": source}


def test_write_layout_replaces_the_model_folder_with_links_and_config(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    model = _file(tmp_path / "pulled" / "m.onnx")
    stale = _file(repository / "m1" / "9" / "old.onnx")
    folder = write_layout(repository, "m1", plan_layout("onnx", model))
    assert not stale.exists()
    assert (folder / "1" / "model.onnx").is_symlink()
    assert (folder / "1" / "model.onnx").resolve() == model.resolve()
    assert (folder / CONFIG).read_text() == 'backend: "onnxruntime"\n'

    remove_model(repository, "m1")
    assert not folder.exists()
    assert model.exists(), "removing the Triton folder must leave the puller's files alone"


def test_clear_repository_removes_every_entry_but_not_link_targets(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    target = _file(tmp_path / "pulled" / "keep.py")
    write_layout(repository, "a", plan_layout("python", target))
    (repository / "loose-link").symlink_to(target.parent)
    _file(repository / "stray")
    clear_repository(repository)
    assert list(repository.iterdir()) == []
    assert target.exists()


@pytest.mark.parametrize("model_id", ["m", "mnist__isvc-0123456789", "A.b_c-d", "7", "x" * 200])
def test_names_triton_can_hold_are_accepted(model_id: str) -> None:
    check_model_name(model_id)


@pytest.mark.parametrize(
    "model_id", ["", ".", "..", ".hidden", "a/b", "../up", "has space", "ünï", "a:b", "x" * 201, "new\nline"]
)
def test_names_triton_cannot_hold_are_invalid_arguments(model_id: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot name a Triton model"):
        check_model_name(model_id)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name: "a"\nbackend: "python"\n', '\nbackend: "python"\n'),
        ('name:"a" backend: "python"', ' backend: "python"'),
        ("name: 'a', max_batch_size: 8", " max_batch_size: 8"),
        ('name: "a" "b"\n', "\n"),  # adjacent strings are one value
        ('name: "a \\" b"\nx: 1', "\nx: 1"),  # an escaped quote doesn't end the string
        ('input [ { name: "x" } ]\nname: "m"\n', 'input [ { name: "x" } ]\n\n'),
        ('input < name: "x" >', 'input < name: "x" >'),
        ('# name: "in a comment"\nbackend: "b"', '# name: "in a comment"\nbackend: "b"'),
        ('platform: "name: \\"q\\""', 'platform: "name: \\"q\\""'),
        ('model_name: "keep" name_x: "keep"', 'model_name: "keep" name_x: "keep"'),
        ("", ""),
    ],
)
def test_strip_top_level_name_removes_only_the_models_own_name(text: str, expected: str) -> None:
    assert strip_top_level_name(text) == expected


def test_every_model_type_has_a_layout(tmp_path: Path) -> None:
    folder = tmp_path / "savedmodel"
    _file(folder / "saved_model.pb")
    _file(folder / "other.pb")
    for model_type in MODEL_TYPES:
        assert plan_layout(model_type, folder).config.startswith("backend: ")
