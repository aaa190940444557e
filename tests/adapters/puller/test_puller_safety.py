"""Nothing a model id, model path, symlink or object key says can make the puller read outside the allowed
sources or write outside its root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from puller_helpers import MODEL_FILES, S3Store, everything_under, files_under, unique_prefix

from adapters.puller import Puller
from adapters.puller.names import model_dir_name
from mesh.errors import InvalidArgument

MINIO_KEY = json.dumps({"storage_key": "localMinIO"})


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(allowed volume with a model folder, a secret folder beside it, the puller root)."""
    volume = tmp_path / "volume"
    (volume / "model").mkdir(parents=True)
    (volume / "model" / "weights.bin").write_bytes(b"w")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "password.txt").write_bytes(b"hunter2")
    return volume, secret, tmp_path / "models"


def snapshot(tmp_path: Path, root: Path) -> set[str]:
    """Everything under tmp_path outside the puller root."""
    return {name for name in everything_under(tmp_path) if not (tmp_path / name).is_relative_to(root)}


async def test_dot_dot_in_a_local_path_is_refused(tmp_path: Path, layout: tuple[Path, Path, Path]) -> None:
    volume, _, root = layout
    with pytest.raises(InvalidArgument, match="model path 'model/../../secret' has a '..' component"):
        await Puller(root, local_roots=[volume]).pull("m", "model/../../secret")
    with pytest.raises(InvalidArgument, match="has a '..' component"):
        await Puller(root).pull("m", "../secret")
    assert everything_under(root) == set()


async def test_an_absolute_path_outside_the_local_roots_is_refused(layout: tuple[Path, Path, Path]) -> None:
    volume, secret, root = layout
    with pytest.raises(InvalidArgument, match=f"resolves to '{secret}', outside the allowed local roots"):
        await Puller(root, local_roots=[volume]).pull("m", str(secret))
    assert everything_under(root) == set()


async def test_a_symlink_in_a_local_root_pointing_outside_it_is_refused(layout: tuple[Path, Path, Path]) -> None:
    volume, secret, root = layout
    (volume / "sneaky").symlink_to(secret)

    with pytest.raises(InvalidArgument, match="outside the allowed local roots"):
        await Puller(root, local_roots=[volume]).pull("m", "sneaky")
    assert everything_under(root) == set()


async def test_a_symlink_inside_a_model_folder_pointing_outside_it_is_refused(
    layout: tuple[Path, Path, Path],
) -> None:
    volume, secret, root = layout
    link = volume / "model" / "extra.txt"
    link.symlink_to(secret / "password.txt")

    # Refused even with no local roots: the folder's contents must come from the folder.
    for puller in (Puller(root, local_roots=[volume]), Puller(root)):
        with pytest.raises(InvalidArgument, match=f"'{link}' is a symlink to '{secret / 'password.txt'}', outside"):
            await puller.pull("m", str(volume / "model"))
    assert everything_under(root) == set()


async def test_a_symlink_loop_inside_a_model_folder_is_refused(layout: tuple[Path, Path, Path]) -> None:
    volume, _, root = layout
    (volume / "model" / "again").symlink_to(volume / "model")

    with pytest.raises(InvalidArgument, match="is a symlink loop"):
        await Puller(root, local_roots=[volume]).pull("m", str(volume / "model"))


async def test_a_model_path_in_a_symlink_loop_is_refused(layout: tuple[Path, Path, Path]) -> None:
    volume, _, root = layout
    (volume / "loop").symlink_to(volume / "loop")

    with pytest.raises(InvalidArgument, match="is in a symlink loop"):
        await Puller(root, local_roots=[volume]).pull("m", "loop")


async def test_a_broken_symlink_inside_a_model_folder_is_refused(layout: tuple[Path, Path, Path]) -> None:
    volume, _, root = layout
    (volume / "model" / "dangling").symlink_to(volume / "model" / "gone")

    with pytest.raises(InvalidArgument, match="dangling' in the model folder is a broken symlink"):
        await Puller(root, local_roots=[volume]).pull("m", str(volume / "model"))


@pytest.mark.parametrize("bad_name", ["../../escape.txt", "/etc/passwd", "./x", "sub/../../x", "ctl\x01.txt"])
async def test_an_s3_object_key_that_could_escape_is_refused_by_name(
    s3_puller: Puller, s3_store: S3Store, root: Path, tmp_path: Path, bad_name: str
) -> None:
    prefix = unique_prefix()
    s3_store.put(f"{prefix}/model/good.txt", b"fine")
    bad_key = f"{prefix}/model/{bad_name}"
    s3_store.put(bad_key, b"evil")
    before = snapshot(tmp_path, root)

    with pytest.raises(InvalidArgument) as raised:
        await s3_puller.pull("model", f"{prefix}/model", MINIO_KEY)

    assert repr(bad_key) in raised.value.message
    assert s3_store.bucket in raised.value.message
    assert snapshot(tmp_path, root) == before
    assert everything_under(root) == set()  # the staging folder is cleaned up


@pytest.mark.parametrize("bad_path", ["sklearn/../sklearn/mnist", "s3://bucket/a/../b", "sklearn/\x00mnist"])
async def test_an_s3_model_path_that_could_escape_is_refused(s3_puller: Puller, root: Path, bad_path: str) -> None:
    with pytest.raises(InvalidArgument):
        await s3_puller.pull("m", bad_path, MINIO_KEY)
    assert everything_under(root) == set()


@pytest.mark.parametrize("model_id", ["../../etc", "..", ".", "/etc/passwd", "a/../../b", "ns:model/v1", "x\x00y"])
async def test_a_model_id_never_names_a_folder_outside_the_root(
    root: Path, tmp_path: Path, layout: tuple[Path, Path, Path], model_id: str
) -> None:
    volume, _, _ = layout
    before = snapshot(tmp_path, root)

    pulled = await Puller(root).pull(model_id, str(volume / "model"))

    assert pulled.directory.parent == root
    assert files_under(root) == {f"{pulled.directory.name}/model/weights.bin": b"w"}
    assert snapshot(tmp_path, root) == before


async def test_removing_a_traversal_model_id_deletes_nothing_outside_the_root(
    tmp_path: Path, layout: tuple[Path, Path, Path]
) -> None:
    _, secret, root = layout
    puller = Puller(root)
    puller.remove("../secret")
    puller.remove(f"../{secret.name}/password.txt")
    assert (secret / "password.txt").read_bytes() == b"hunter2"


def test_distinct_model_ids_get_distinct_single_component_names() -> None:
    ids = ["a/b", "a%2Fb", "a_b", ".hidden", "%2Ehidden", "..", "...", "x" * 500, "x" * 499 + "y", "é", "ns:m"]
    names = [model_dir_name(model_id) for model_id in ids]

    assert len(set(names)) == len(ids)
    for name in names:
        assert "/" not in name and "\x00" not in name
        assert not name.startswith(".")  # never '.', '..', hidden, or a staging folder's name
        assert len(name.encode()) <= 255


def test_an_empty_model_id_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="model id is empty"):
        model_dir_name("")


async def test_a_storage_key_that_is_a_path_is_refused(s3_puller: Puller) -> None:
    for storage_key in ["../localMinIO", "..data", "a/b"]:
        with pytest.raises(InvalidArgument, match="is not a plain name"):
            await s3_puller.pull("m", "sklearn/mnist", json.dumps({"storage_key": storage_key}))


async def test_files_pulled_with_a_safe_s3_folder_are_all_inside_the_model_folder(
    s3_puller: Puller, root: Path
) -> None:
    pulled = await s3_puller.pull("mnist", "sklearn/mnist", MINIO_KEY)

    assert files_under(root) == {f"mnist/mnist/{name}": body for name, body in MODEL_FILES.items()}
    assert pulled.directory == root / "mnist"
