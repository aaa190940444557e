"""`mesh models register/unregister -f FILE`: thousands of models, idempotent, with a summary; bad files named."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.serve import REPO, ServeProcess, serving

from mesh import bulk
from mesh.cli.models import ProgressBar
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.management import management_channel
from mesh.processes import python_module_command

MODELS = 5000
CLI_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A router with no runtimes: registration needs none."""
    directory = tmp_path_factory.mktemp("bulk")
    args = ("--runtimes", "0", "--no-examples", "--kv", "memory://", "--rest-port", "-1")
    with serving(directory, *args) as serve:
        yield serve


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*python_module_command("mesh"), *args], cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def _registered(address: str) -> dict[str, tuple[str, str, str]]:
    with management_channel(address) as channel:
        listing = admin_grpc.MeshAdminStub(channel).ListModels(admin.ListModelsRequest(), timeout=30)
    return {m.modelId: (m.modelInfo.type, m.modelInfo.path, m.modelInfo.key) for m in listing.models}


def _write(path: Path, entries: object) -> Path:
    path.write_text(yaml.safe_dump(entries), encoding="utf-8")
    return path


@pytest.mark.slow
def test_registering_5000_models_from_a_file_is_idempotent(router: ServeProcess, tmp_path: Path) -> None:
    entries = [{"id": f"bulk-{i:05d}", "type": "echo", "path": f"models/bulk-{i:05d}.json"} for i in range(MODELS)]
    entries[7]["key"] = "secret-7"
    models = _write(tmp_path / "models.yaml", {"models": entries})
    address = ("--address", router.grpc_address)

    started = time.perf_counter()
    first = _cli("models", "register", "-f", str(models), *address)
    seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"registered {MODELS}, already present 0, failed 0 ({MODELS} models in ")
    print(f"\n{MODELS} registrations in {seconds:.1f} s with the CLI's start: {MODELS / seconds:.0f}/s")
    registered = _registered(router.grpc_address)
    assert len(registered) == MODELS
    # Relative paths are resolved against the file's folder, as `--path` is against the working directory.
    assert registered["bulk-00007"] == ("echo", str(tmp_path / "models" / "bulk-00007.json"), "secret-7")

    second = _cli("models", "register", "-f", str(models), "--json", *address)
    assert second.returncode == 0, second.stderr
    outcome = json.loads(second.stdout)
    assert (outcome["registered"], len(outcome["already_present"]), outcome["failed"]) == ([], MODELS, [])

    entries[42]["path"] = "models/another.json"
    changed = _write(tmp_path / "changed.yaml", entries)  # the top-level list form this time
    third = _cli("models", "register", "-f", str(changed), *address)
    assert third.returncode == 1
    assert third.stdout.splitlines()[0].startswith(f"registered 0, already present {MODELS - 1}, failed 1 ")
    assert third.stdout.splitlines()[1] == "  ALREADY_EXISTS (1): bulk-00042"
    assert "already registered" in third.stdout.splitlines()[2]
    assert _registered(router.grpc_address)["bulk-00042"][1].endswith("bulk-00042.json")  # left as it was

    removed = _cli("models", "unregister", "-f", str(models), *address)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"unregistered {MODELS}, not registered 0, failed 0 ")
    assert _registered(router.grpc_address) == {}
    again = _cli("models", "unregister", "-f", str(models), *address)
    assert again.stdout.startswith(f"unregistered 0, not registered {MODELS}, failed 0 ")


def test_a_models_file_is_a_list_or_a_models_mapping(tmp_path: Path) -> None:
    examples = bulk.read_specs(REPO / "examples" / "models.yaml", path_root=tmp_path)
    assert [s.model_id for s in examples][:2] == ["iris-logreg", "iris-tree"]
    assert len(examples) == 9
    assert examples[0] == bulk.ModelSpec("iris-logreg", "sklearn", str(tmp_path / "iris-logreg"))

    listed = _write(
        tmp_path / "list.yaml",
        [
            {"id": "a", "format": "sklearn", "path": "/abs/a.joblib"},
            {"id": "b", "type": "echo"},
            {"id": "c", "type": "sklearn", "path": "s3://bucket/c.joblib", "key": "k"},
        ],
    )
    assert bulk.read_specs(listed) == [
        bulk.ModelSpec("a", "sklearn", "/abs/a.joblib"),
        bulk.ModelSpec("b", "echo", ""),
        bulk.ModelSpec("c", "sklearn", "s3://bucket/c.joblib", "k"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [unclosed", "not valid YAML"),
        ("just a string", "expected a list of models"),
        ("- id: a\n  type: echo\n- id: b\n", "entry 2 (id 'b'): `type` is missing"),
        ("- type: echo\n", "entry 1: `id` is missing"),
        ("- id: 0123\n  type: echo\n", "entry 1 (id '83'): `id` must be a string (quote it), got 83"),
        ("- id: a\n  type: echo\n  paht: x\n", "entry 1 (id 'a'): unknown field(s) paht"),
        ("- id: a\n  type: echo\n- id: a\n  type: echo\n", "entry 2 repeats id 'a' of entry 1"),
        ("- [a, echo]\n", "entry 1: expected a mapping"),
    ],
)
def test_a_bad_models_file_is_an_error_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(bulk.SpecError, match=re.escape(message)) as raised:
        bulk.read_specs(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_the_cli_says_what_is_wrong_with_a_file_and_exits_2(tmp_path: Path) -> None:
    missing = _cli("models", "register", "-f", str(tmp_path / "nope.yaml"), "--address", "127.0.0.1:1")
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read it: ")
    (tmp_path / "bad.yaml").write_text("- id: x\n")
    bad = _cli("models", "unregister", "-f", str(tmp_path / "bad.yaml"), "--address", "127.0.0.1:1")
    assert (bad.returncode, bad.stderr) == (2, f"error: {tmp_path / 'bad.yaml'}: entry 1 (id 'x'): `type` is missing\n")


def test_the_progress_bar_draws_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar(0, 10)
    bar(10, 10)
    bar.close()
    drawn = stream.getvalue()
    assert drawn.startswith("\r[" + "." * ProgressBar.WIDTH + "] 0/10   0%")
    assert "\r[" + "#" * ProgressBar.WIDTH + "] 10/10 100%" in drawn
    assert drawn.endswith("\n") and drawn.count("\n") == 1
