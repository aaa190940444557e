"""The management API (mmesh.ModelMesh) and the `mesh models` CLI against a real `mesh serve`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from harness.serve import EXAMPLE_MODELS, ServeProcess
from tritonclient.utils import InferenceServerException

from mesh.gen import model_mesh_pb2 as mm
from mesh.gen import model_mesh_pb2_grpc as mm_grpc
from mesh.processes import python_module_command

REPO = Path(__file__).resolve().parents[2]

TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
Status = mm.ModelStatusInfo

pytestmark = pytest.mark.slow  # one shared `mesh serve`: a router and two runtime processes


@pytest.fixture(scope="module")
def management(channel: grpc.Channel) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(channel)


@pytest.fixture
def registered(management: mm_grpc.ModelMeshStub) -> Iterator[list[str]]:
    """Ids a test registers; each is unregistered afterwards so the shared server is left as it was."""
    ids: list[str] = []
    yield ids
    for model_id in ids:
        management.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=TIMEOUT_S)


def _text_model(directory: Path, transform: str) -> str:
    path = directory / f"{transform}.json"
    path.write_text(json.dumps({"transform": transform}), encoding="utf-8")
    return str(path)


def _register(
    management: mm_grpc.ModelMeshStub, model_id: str, model_type: str, path: str, **flags: bool
) -> mm.ModelStatusInfo:
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=path), **flags)
    return management.registerModel(request, timeout=TIMEOUT_S)


def _status(management: mm_grpc.ModelMeshStub, model_id: str) -> mm.ModelStatusInfo:
    return management.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=TIMEOUT_S)


def _infer_text(client: grpcclient.InferenceServerClient, model: str, text: str, **kwargs: object) -> str:
    array = np.array([text.encode()], dtype=object)
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor], client_timeout=TIMEOUT_S, **kwargs)
    return result.as_numpy("output")[0].decode()


def _infer_iris(client: grpcclient.InferenceServerClient, model: str) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    return client.infer(model, [tensor], client_timeout=TIMEOUT_S)


def _loaded_copies(status: mm.ModelStatusInfo) -> list[str]:
    return [c.location for c in status.modelCopyInfos if c.copyStatus == Status.LOADED]


def test_registered_model_loads_on_first_request(
    management: mm_grpc.ModelMeshStub,
    triton_grpc: grpcclient.InferenceServerClient,
    registered: list[str],
    tmp_path: Path,
) -> None:
    registered.append("e2e-reverse")
    status = _register(management, "e2e-reverse", "text", _text_model(tmp_path, "reverse"))
    assert status.status == Status.NOT_LOADED
    assert not status.modelCopyInfos

    assert _infer_text(triton_grpc, "e2e-reverse", "h\u00e9llo") == "oll\u00e9h"

    status = _status(management, "e2e-reverse")
    assert status.status == Status.LOADED
    [location] = _loaded_copies(status)
    assert location.startswith("runtime-")


def test_registering_again_is_idempotent_but_a_different_spec_already_exists(
    management: mm_grpc.ModelMeshStub, registered: list[str], tmp_path: Path
) -> None:
    registered.append("e2e-twice")
    path = _text_model(tmp_path, "reverse")
    assert _register(management, "e2e-twice", "text", path).status == Status.NOT_LOADED
    assert _register(management, "e2e-twice", "text", path).status == Status.NOT_LOADED

    for model_type, other_path in (("text", _text_model(tmp_path, "upper")), ("echo", path)):
        with pytest.raises(grpc.RpcError) as raised:
            _register(management, "e2e-twice", model_type, other_path)
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "e2e-twice" in raised.value.details()


def test_ensure_loaded_sync_returns_once_loaded(
    management: mm_grpc.ModelMeshStub, registered: list[str], tmp_path: Path
) -> None:
    registered.append("e2e-ensure")
    _register(management, "e2e-ensure", "text", _text_model(tmp_path, "upper"))
    status = management.ensureLoaded(mm.EnsureLoadedRequest(modelId="e2e-ensure", sync=True), timeout=TIMEOUT_S)
    assert status.status == Status.LOADED
    assert _loaded_copies(status)


def test_register_load_now_sync_returns_loaded(
    management: mm_grpc.ModelMeshStub, registered: list[str], tmp_path: Path
) -> None:
    registered.append("e2e-load-now")
    status = _register(management, "e2e-load-now", "text", _text_model(tmp_path, "lower"), loadNow=True, sync=True)
    assert status.status == Status.LOADED


def test_ensure_loaded_of_an_unknown_model_is_not_found(management: mm_grpc.ModelMeshStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        management.ensureLoaded(mm.EnsureLoadedRequest(modelId="e2e-ghost", sync=True), timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "e2e-ghost" in raised.value.details()
    assert _status(management, "e2e-ghost").status == Status.NOT_FOUND


def test_unregistered_model_is_gone(
    management: mm_grpc.ModelMeshStub, triton_grpc: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    _register(management, "e2e-gone", "text", _text_model(tmp_path, "upper"), loadNow=True, sync=True)
    assert _infer_text(triton_grpc, "e2e-gone", "abc") == "ABC"

    management.unregisterModel(mm.UnregisterModelRequest(modelId="e2e-gone"), timeout=TIMEOUT_S)

    assert _status(management, "e2e-gone").status == Status.NOT_FOUND
    with pytest.raises(InferenceServerException) as raised:
        _infer_text(triton_grpc, "e2e-gone", "abc")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "e2e-gone" in raised.value.message()
    # Unregistering what is not there is not an error (as in ModelMesh).
    management.unregisterModel(mm.UnregisterModelRequest(modelId="e2e-gone"), timeout=TIMEOUT_S)


def test_corrupt_model_fails_with_its_reason_and_is_not_reloaded_at_once(
    management: mm_grpc.ModelMeshStub,
    triton_grpc: grpcclient.InferenceServerClient,
    mesh_server: ServeProcess,
    registered: list[str],
    tmp_path: Path,
) -> None:
    registered.append("e2e-corrupt")
    corrupt = tmp_path / "model.joblib"
    corrupt.write_bytes(b"this is not a joblib file\n" * 8)
    _register(management, "e2e-corrupt", "sklearn", str(corrupt))

    with pytest.raises(InferenceServerException) as first:
        _infer_iris(triton_grpc, "e2e-corrupt")
    assert first.value.status() == "StatusCode.INTERNAL"
    message = first.value.message()
    assert "e2e-corrupt" in message and "failed to load" in message
    assert str(corrupt) in message  # the runtime's own reason travels with it

    status = _status(management, "e2e-corrupt")
    assert status.status == Status.LOADING_FAILED
    assert status.errors and all(str(corrupt) in error for error in status.errors)
    assert {c.copyStatus for c in status.modelCopyInfos} == {Status.LOADING_FAILED}
    assert not triton_grpc.is_model_ready("e2e-corrupt", client_timeout=TIMEOUT_S)

    # Within the failure backoff each runtime tries the load at most once; after that, requests get the recorded
    # failure without another load.
    runtimes = len(mesh_server.runtimes)
    for _ in range(runtimes + 2):
        with pytest.raises(InferenceServerException) as again:
            _infer_iris(triton_grpc, "e2e-corrupt")
        assert again.value.status() == "StatusCode.INTERNAL"
        assert "e2e-corrupt" in again.value.message()
    assert "not retried" in again.value.message()
    attempts = mesh_server.log().count("load of model e2e-corrupt on ")
    assert 1 <= attempts <= runtimes, f"{attempts} load attempts for {runtimes} runtimes"


def test_unregistering_a_failed_model_forgets_the_failure(
    management: mm_grpc.ModelMeshStub,
    triton_grpc: grpcclient.InferenceServerClient,
    registered: list[str],
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.json"
    model.write_text("{not json", encoding="utf-8")
    _register(management, "e2e-fixed", "text", str(model), loadNow=True, sync=True)
    assert _status(management, "e2e-fixed").status == Status.LOADING_FAILED

    management.unregisterModel(mm.UnregisterModelRequest(modelId="e2e-fixed"), timeout=TIMEOUT_S)
    model.write_text(json.dumps({"transform": "upper"}), encoding="utf-8")
    registered.append("e2e-fixed")
    _register(management, "e2e-fixed", "text", str(model))

    assert _infer_text(triton_grpc, "e2e-fixed", "ok") == "OK"


def test_vmodel_routes_by_header_and_by_name(
    management: mm_grpc.ModelMeshStub, triton_grpc: grpcclient.InferenceServerClient
) -> None:
    request = mm.SetVModelRequest(vModelId="e2e-alias", targetModelId="text-reverse", loadNow=True, sync=True)
    status = management.setVModel(request, timeout=TIMEOUT_S)
    try:
        assert status.activeModelId == "text-reverse"
        assert _infer_text(triton_grpc, "anything", "abc", headers={"mm-vmodel-id": "e2e-alias"}) == "cba"
        assert _infer_text(triton_grpc, "e2e-alias", "abc") == "cba"
    finally:
        management.deleteVModel(mm.DeleteVModelRequest(vModelId="e2e-alias"), timeout=TIMEOUT_S)
    with pytest.raises(InferenceServerException) as raised:
        _infer_text(triton_grpc, "anything", "abc", headers={"mm-vmodel-id": "e2e-alias"})
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def _cli(mesh_server: ServeProcess, *args: str, group: str = "models") -> subprocess.CompletedProcess[str]:
    command = [*python_module_command("mesh"), group, *args, "--address", mesh_server.grpc_address]
    return subprocess.run(
        [*command, "--timeout", str(TIMEOUT_S)], cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def test_cli_lists_every_model_with_its_type_and_status(
    mesh_server: ServeProcess, management: mm_grpc.ModelMeshStub
) -> None:
    management.ensureLoaded(mm.EnsureLoadedRequest(modelId="text-upper", sync=True), timeout=TIMEOUT_S)

    listed = _cli(mesh_server, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert set(EXAMPLE_MODELS) <= set(rows)
    assert rows["iris-forest"][1] == "sklearn"
    assert rows["echo"][1] == "echo"
    assert rows["text-upper"][1] == "text"
    assert "LOADED" in rows["text-upper"][3:]

    as_json = _cli(mesh_server, "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    models = {m["modelId"]: m for m in json.loads(as_json.stdout)["models"]}
    assert set(EXAMPLE_MODELS) <= set(models)
    assert models["text-upper"]["status"]["status"] == "LOADED"


def test_cli_status_shows_state_and_copies(mesh_server: ServeProcess, management: mm_grpc.ModelMeshStub) -> None:
    status = management.ensureLoaded(mm.EnsureLoadedRequest(modelId="text-reverse", sync=True), timeout=TIMEOUT_S)
    [location] = _loaded_copies(status)

    shown = _cli(mesh_server, "status", "text-reverse")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"text-reverse: LOADED [{location}=LOADED]"

    missing = _cli(mesh_server, "status", "e2e-nothing-here")
    assert missing.returncode == 1
    assert missing.stdout.strip() == "e2e-nothing-here: NOT_FOUND"


def test_cli_registers_a_model_that_requires_labels_and_says_why_nothing_holds_it(
    mesh_server: ServeProcess, management: mm_grpc.ModelMeshStub
) -> None:
    """`mesh serve`'s runtimes carry no labels: a model that requires one loads nowhere, and the answer says so."""
    args = ("register", "e2e-labelled", "--type", "echo", "--label", "tenant:x", "--load-now", "--sync")
    registered = _cli(mesh_server, *args)
    try:
        assert registered.returncode == 0, registered.stderr
        assert registered.stdout.startswith("e2e-labelled: LOADING_FAILED errors: cannot place model"), (
            registered.stdout
        )
        assert "carries the labels it requires: tenant:x" in registered.stdout
    finally:
        management.unregisterModel(mm.UnregisterModelRequest(modelId="e2e-labelled"), timeout=TIMEOUT_S)


def test_cli_registers_a_model_kept_with_min_copies_and_pinned_and_lists_how_it_is_kept(
    mesh_server: ServeProcess, management: mm_grpc.ModelMeshStub, tmp_path: Path
) -> None:
    path = _text_model(tmp_path, "upper")
    args = ("register", "e2e-kept", "--type", "text", "--path", path, "--min-copies", "1", "--pin")
    registered = _cli(mesh_server, *args)
    try:
        assert registered.returncode == 0, registered.stderr
        # No request and no --load-now: the minimum copy loads by itself (the next maintenance round).
        deadline = time.monotonic() + 30
        while _status(management, "e2e-kept").status != mm.ModelStatusInfo.LOADED:
            assert time.monotonic() < deadline, "the model's minimum copy was never loaded"
            time.sleep(0.05)
        row = next(line for line in _cli(mesh_server, "list").stdout.splitlines() if line.startswith("e2e-kept "))
        assert row.endswith("=LOADED], pinned, min copies 1"), row
        refused = _cli(mesh_server, *args[:6], "--min-copies", "-1")
        assert refused.returncode == 2 and "must be 0 or more, got -1" in refused.stderr
    finally:
        management.unregisterModel(mm.UnregisterModelRequest(modelId="e2e-kept"), timeout=TIMEOUT_S)


def test_cli_sets_inspects_lists_and_deletes_a_vmodel(mesh_server: ServeProcess) -> None:
    set_ = _cli(mesh_server, "set", "e2e-cli-alias", "text-upper", "--load-now", "--sync", group="vmodels")
    try:
        assert set_.returncode == 0, set_.stderr
        assert set_.stdout.startswith("e2e-cli-alias: DEFINED -> text-upper (LOADED"), set_.stdout
        shown = _cli(mesh_server, "status", "e2e-cli-alias", group="vmodels")
        assert shown.returncode == 0 and shown.stdout.startswith("e2e-cli-alias: DEFINED -> text-upper"), shown
        listed = _cli(mesh_server, "list", "--json", group="vmodels")
        assert listed.returncode == 0, listed.stderr
        rows = {v["id"]: v for v in json.loads(listed.stdout)["vmodels"]}
        assert rows["e2e-cli-alias"]["active_model"] == "text-upper"
        moved = _cli(mesh_server, "set", "e2e-cli-alias", "text-reverse", "--sync", "--load-now", group="vmodels")
        assert moved.returncode == 0 and "-> text-reverse" in moved.stdout, moved
        retarget = ("set", "e2e-cli-alias", "text-upper", "--expected-target", "text-upper")
        refused = _cli(mesh_server, *retarget, group="vmodels")  # the target is text-reverse now
        assert refused.returncode == 1 and refused.stderr.startswith("error: "), refused
        no_type = _cli(mesh_server, "set", "e2e-cli-alias", "x", "--path", "/m", group="vmodels")
        assert no_type.returncode == 2 and "give --type too" in no_type.stderr, no_type
    finally:
        deleted = _cli(mesh_server, "delete", "e2e-cli-alias", group="vmodels")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "e2e-cli-alias: deleted", deleted
    gone = _cli(mesh_server, "status", "e2e-cli-alias", group="vmodels")
    assert gone.returncode == 1 and gone.stdout.strip() == "e2e-cli-alias: NOT_FOUND", gone
