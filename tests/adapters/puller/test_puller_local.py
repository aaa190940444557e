"""Pulling from the local filesystem: copies (never links to) the source, inside the allowed roots only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from puller_helpers import MODEL_FILES, files_under

from adapters.puller import Puller
from mesh.errors import InvalidArgument, ModelLoadFailed


def make_model_folder(folder: Path, files: dict[str, bytes] = MODEL_FILES) -> Path:
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A mounted volume of models: the one local root the puller allows."""
    folder = tmp_path / "volume"
    make_model_folder(folder / "sklearn" / "mnist")
    (folder / "sklearn" / "svm.joblib").write_bytes(b"svm")
    return folder


async def test_a_local_folder_is_copied_with_nested_files(root: Path, volume: Path) -> None:
    pulled = await Puller(root, local_roots=[volume]).pull("mnist", str(volume / "sklearn" / "mnist"))

    assert pulled.path == pulled.directory / "mnist"
    assert files_under(pulled.path) == MODEL_FILES
    assert pulled.disk_size_bytes == sum(len(body) for body in MODEL_FILES.values())


async def test_the_keys_type_and_predictor_come_with_the_pulled_model(root: Path, volume: Path) -> None:
    key = '{"model_type": {"name": "custom"}, "predictor": "iris-predictor"}'
    pulled = await Puller(root, local_roots=[volume]).pull("iris", str(volume / "sklearn" / "mnist"), key)
    assert (pulled.model_type, pulled.predictor) == ("custom", "iris-predictor")
    with pytest.raises(InvalidArgument, match="model key's predictor must be a model id"):
        await Puller(root, local_roots=[volume]).pull("iris", str(volume / "sklearn" / "mnist"), '{"predictor": 3}')


async def test_a_relative_path_is_looked_up_under_the_local_roots(root: Path, tmp_path: Path, volume: Path) -> None:
    empty_root = tmp_path / "empty"
    empty_root.mkdir()

    pulled = await Puller(root, local_roots=[empty_root, volume]).pull("svm", "sklearn/svm.joblib")

    assert pulled.path == pulled.directory / "svm.joblib"
    assert pulled.path.read_bytes() == b"svm"


async def test_a_file_uri_is_a_local_path(root: Path, volume: Path) -> None:
    pulled = await Puller(root, local_roots=[volume]).pull("svm", f"file://{volume}/sklearn/svm.joblib")

    assert pulled.path.read_bytes() == b"svm"


async def test_the_pulled_files_survive_the_source_being_replaced_or_deleted(root: Path, volume: Path) -> None:
    source = volume / "sklearn" / "mnist"
    pulled = await Puller(root, local_roots=[volume]).pull("mnist", str(source))

    replacement = source / "model.joblib.new"
    replacement.write_bytes(b"new weights")
    os.replace(replacement, source / "model.joblib")
    assert (pulled.path / "model.joblib").read_bytes() == MODEL_FILES["model.joblib"]

    for path in sorted(source.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    assert files_under(pulled.path) == MODEL_FILES
    assert not any(path.is_symlink() for path in pulled.path.rglob("*"))


async def test_a_symlink_inside_the_folder_to_a_file_inside_is_copied_as_a_file(root: Path, volume: Path) -> None:
    source = volume / "sklearn" / "mnist"
    (source / "alias.joblib").symlink_to(source / "model.joblib")

    pulled = await Puller(root, local_roots=[volume]).pull("mnist", str(source))

    alias = pulled.path / "alias.joblib"
    assert not alias.is_symlink()
    assert alias.read_bytes() == MODEL_FILES["model.joblib"]


async def test_a_configmap_style_folder_of_links_into_a_data_folder_is_copied(root: Path, volume: Path) -> None:
    source = volume / "configmap"
    make_model_folder(source / "..2026_01_01", {"model.txt": b"hello"})
    (source / "..data").symlink_to("..2026_01_01")
    (source / "model.txt").symlink_to("..data/model.txt")

    pulled = await Puller(root, local_roots=[volume]).pull("cm", str(source))

    assert (pulled.path / "model.txt").read_bytes() == b"hello"


async def test_without_local_roots_any_absolute_path_is_allowed(root: Path, volume: Path) -> None:
    pulled = await Puller(root).pull("svm", str(volume / "sklearn" / "svm.joblib"))

    assert pulled.path.read_bytes() == b"svm"


async def test_a_missing_local_path_is_a_load_failure_naming_it(root: Path, volume: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="local model path 'sklearn/absent' does not exist"):
        await Puller(root, local_roots=[volume]).pull("m", "sklearn/absent")


async def test_a_fifo_in_the_folder_is_refused_rather_than_read(root: Path, volume: Path) -> None:
    os.mkfifo(volume / "sklearn" / "mnist" / "pipe")

    with pytest.raises(InvalidArgument, match="pipe' in the model folder is not a regular file or folder"):
        await Puller(root, local_roots=[volume]).pull("mnist", str(volume / "sklearn" / "mnist"))


async def test_a_folder_holding_the_puller_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="contains the puller's own folder"):
        await Puller(tmp_path / "models").pull("everything", str(tmp_path))
