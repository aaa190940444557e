"""How pulled files become an entry of TorchServe's model store, and the torch-model-archiver arguments a folder of
parts gets: plain files, no TorchServe."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from adapters.puller import PulledModel
from adapters.torchserve import layout
from mesh.errors import InvalidArgument, ModelLoadFailed

ARCHIVER = Path("/venv/bin/torch-model-archiver")


def _pulled(tmp_path: Path, name: str, files: dict[str, str]) -> PulledModel:
    directory = tmp_path / "models" / "m"
    path = directory / name
    for relative, text in files.items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_text(text)
    return PulledModel("m", directory, path, 1, None)


def _mar(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", "{}")
    return path


@pytest.mark.parametrize("model_id", ["tiny", "a.b-c_d", "9", "x" * 200])
def test_ids_torch_model_archiver_accepts_are_accepted(model_id: str) -> None:
    layout.check_model_name(model_id)


@pytest.mark.parametrize("model_id", ["", "has space", ".hidden", "-dash", "a/b", "é", "x" * 201])
def test_other_ids_are_refused(model_id: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot name a TorchServe model"):
        layout.check_model_name(model_id)


def test_a_mar_file_is_linked_as_id_dot_mar(tmp_path: Path) -> None:
    directory = tmp_path / "models" / "m"
    mar = _mar(directory / "anything.zip")

    entry = layout.plan_entry("m", PulledModel("m", directory, mar, 1, None))

    assert (entry.name, entry.target, entry.archive) == ("m.mar", mar, None)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "models" / "m"
    directory.mkdir(parents=True)
    (directory / "model.pt").write_text("weights")

    with pytest.raises(ModelLoadFailed, match=r"model\.pt is not a \.mar archive"):
        layout.plan_entry("m", PulledModel("m", directory, directory / "model.pt", 1, None))


def test_a_folder_holding_one_mar_uses_it(tmp_path: Path) -> None:
    model = _pulled(tmp_path, "dir", {"README": "x"})
    mar = _mar(model.path / "tiny.mar")

    assert layout.plan_entry("m", model) == layout.StoreEntry("m.mar", mar, note="archive tiny.mar")


def test_an_unpacked_archive_is_linked_as_it_is(tmp_path: Path) -> None:
    model = _pulled(tmp_path, "dir", {"MAR-INF/MANIFEST.json": "{}", "handler.py": ""})

    entry = layout.plan_entry("m", model)

    assert (entry.name, entry.target, entry.archive) == ("m", model.path, None)


def test_a_folder_of_parts_is_archived_by_convention(tmp_path: Path) -> None:
    model = _pulled(
        tmp_path,
        "dir",
        {"handler.py": "", "model.py": "", "model.pt": "", "model-config.yaml": "", "index_to_name.json": "{}",
         ".hidden": ""},
    )  # fmt: skip

    entry = layout.plan_entry("m", model)

    export = model.directory / layout.ARCHIVE_DIR
    assert (entry.name, entry.target) == ("m", export / "m")
    assert entry.archive is not None
    p = model.path.resolve()
    assert entry.archive.argv(ARCHIVER, "m") == [
        str(ARCHIVER), "--model-name", "m", "--version", "1.0", "--handler", str(p / "handler.py"),
        "--serialized-file", str(p / "model.pt"), "--model-file", str(p / "model.py"),
        "--config-file", str(p / "model-config.yaml"), "--extra-files", str(p / "index_to_name.json"),
        "--export-path", str(export), "--archive-format", "no-archive", "--force",
    ]  # fmt: skip


def test_archive_json_names_the_parts_and_nothing_else_is_taken(tmp_path: Path) -> None:
    spec = {"handler": "image_classifier", "serialized_file": "w.bin", "model_file": None,
            "extra_files": ["labels.json"], "version": "2.0"}  # fmt: skip
    model = _pulled(
        tmp_path,
        "dir",
        {"archive.json": json.dumps(spec), "w.bin": "", "other.pt": "", "labels.json": "", "model.py": "", "sub/x": ""},
    )

    args = layout.plan_entry("m", model).archive

    p = model.path.resolve()
    assert args is not None
    assert (args.handler, args.serialized_file, args.model_file) == ("image_classifier", p / "w.bin", None)
    assert (args.extra_files, args.version) == ((p / "labels.json",), "2.0")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"handler.py": "", "a.pt": "", "b.pth": ""}, "several serialized files"),
        ({"handler.py": "", "m.pt": "", "assets/x": ""}, "subfolder 'assets'"),
        ({"archive.json": "[]", "handler.py": ""}, "must hold a JSON object"),
        ({"archive.json": "{", "handler.py": ""}, "not valid JSON"),
        ({"archive.json": '{"handlr": "h.py"}'}, "unknown keys"),
        ({"archive.json": '{"serialized_file": "../../x"}', "handler.py": ""}, "not inside the model folder"),
        ({"archive.json": '{"extra_files": ["a,b"]}', "handler.py": "", "a,b": ""}, "misreads"),
        ({"archive.json": '{"model_file": "net.py"}', "handler.py": ""}, "'net.py' is not in the model folder"),
        ({"README.md": ""}, "no .mar file"),
    ],
)
def test_folders_that_cannot_be_archived_are_refused_with_the_reason(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(ModelLoadFailed, match=message):
        layout.plan_entry("m", _pulled(tmp_path, "dir", files))


def test_links_replace_older_ones_and_clearing_empties_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first, second = tmp_path / "a", tmp_path / "b"
    layout.link(store, layout.StoreEntry("m.mar", first))
    layout.link(store, layout.StoreEntry("m.mar", second))
    assert Path(store / "m.mar").readlink() == second
    layout.link(store, layout.StoreEntry("n", first))

    layout.unlink(store, "m")
    assert sorted(p.name for p in store.iterdir()) == ["n"]
    layout.clear_store(store)
    assert list(store.iterdir()) == []
