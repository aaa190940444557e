"""What is registered for a predictor (ids, path, the ModelMesh modelKey), and how mesh's vmodel status becomes
KServe's modelStatus and conditions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.puller.storage import S3Location, parse_model_key, resolve_location
from mesh.controller import status as st
from mesh.controller.registration import claim_of, model_spec, owner_namespace
from mesh.controller.resources import SpecError, parse_predictor
from mesh.controller.settings import ControllerSettings
from mesh.gen import model_mesh_pb2 as mm


def spec_of(
    model: dict[str, Any], namespace: str = "ns", annotations: dict[str, str] | None = None, vmodel_ids: str = "name"
) -> Any:
    isvc = {
        "metadata": {"name": "iris", "namespace": namespace, "annotations": annotations or {}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, **model}}},
    }
    return model_spec(parse_predictor(isvc), vmodel_of=ControllerSettings.from_env({}, vmodel_ids=vmodel_ids).vmodel_id)


def test_ids_name_the_isvc_and_change_with_the_storage_only() -> None:
    a = spec_of({"storageUri": "s3://bucket/a.joblib"})
    assert a.vmodel_id == "iris" and a.owner == "isvc/ns" and owner_namespace(a.owner) == "ns"
    assert a.model_id.startswith("ns.iris__isvc-") and len(a.model_id) == len("ns.iris__isvc-") + 10
    assert spec_of({"storageUri": "s3://bucket/a.joblib"}).model_id == a.model_id
    assert spec_of({"storageUri": "s3://bucket/b.joblib"}).model_id != a.model_id
    assert spec_of({"storageUri": "s3://bucket/a.joblib"}, namespace="other").model_id != a.model_id


def test_an_s3_uri_is_a_path_and_key_the_puller_resolves() -> None:
    spec = spec_of({"storageUri": "s3://models/iris/v1/"}, annotations={"serving.kserve.io/secretKey": "minio"})
    key = json.loads(spec.key)
    assert key == {
        "model_type": {"name": "sklearn"},
        "storage_key": "minio",
        "storage_params": {"type": "s3", "bucket": "models"},
    }
    assert parse_model_key(spec.key).storage_key == "minio"


def test_storage_key_and_path_go_through_to_the_puller(tmp_path: Any) -> None:
    (tmp_path / "localMinIO").write_text(json.dumps({"type": "s3", "bucket": "default-bucket"}))
    spec = spec_of({"storage": {"key": "localMinIO", "path": "sklearn/mnist.joblib", "parameters": {"bucket": "b2"}}})
    location = resolve_location(spec.path, parse_model_key(spec.key), tmp_path)
    assert isinstance(location, S3Location) and (location.bucket, location.key) == ("b2", "sklearn/mnist.joblib")


def test_a_file_uri_is_a_local_path() -> None:
    assert spec_of({"storageUri": "file:///mnt/models/iris.joblib"}).path == "/mnt/models/iris.joblib"


def test_an_http_uri_is_pulled_as_it_is() -> None:
    spec = spec_of({"storageUri": "https://models.example/iris.tar.gz"})
    assert spec.path == "https://models.example/iris.tar.gz"


def test_a_pvc_uri_is_a_path_where_runtime_pods_mount_the_claim() -> None:
    spec = spec_of({"storageUri": "pvc://team-models/sklearn/iris.joblib"})
    assert spec.path == "/mnt/pvc/team-models/sklearn/iris.joblib"
    assert claim_of(spec.path) == "team-models" and claim_of("/models/iris.joblib") is None
    for bad in ("pvc://Bad_Claim/m", "pvc://claim", "pvc://claim/", "pvc://claim/../etc/passwd"):
        with pytest.raises(SpecError, match="storageUri"):
            spec_of({"storageUri": bad})


def test_gcs_and_azure_uris_reach_the_puller_with_their_storage_type() -> None:
    gcs = spec_of({"storageUri": "gs://team-bucket/iris/v1/"})
    assert gcs.path == "gs://team-bucket/iris/v1/"
    assert json.loads(gcs.key)["storage_params"] == {"type": "gcs", "bucket": "team-bucket"}
    azure = spec_of({"storageUri": "https://acct.blob.core.windows.net/models/iris/"})
    assert azure.path == "https://acct.blob.core.windows.net/models/iris/"


@pytest.mark.parametrize("uri", ["gs:///m", "az://container/m", "/no/scheme"])
def test_storage_the_puller_cannot_read_is_refused(uri: str) -> None:
    with pytest.raises(SpecError):
        spec_of({"storageUri": uri})


def _model_status(state: int, errors: tuple[str, ...] = (), copies: tuple[tuple[str, int], ...] = ()) -> Any:
    return mm.ModelStatusInfo(
        status=state,
        errors=list(errors),
        modelCopyInfos=[
            mm.ModelStatusInfo.ModelCopyInfo(location=loc, copyStatus=s, time=1_700_000_000_000) for loc, s in copies
        ],
    )


def test_a_loaded_vmodel_is_ready_and_up_to_date() -> None:
    vmodel = mm.VModelStatusInfo(
        status=mm.VModelStatusInfo.DEFINED,
        activeModelId="m1",
        targetModelId="m1",
        activeModelStatus=_model_status(mm.ModelStatusInfo.LOADED, copies=(("rt-0", mm.ModelStatusInfo.LOADED),)),
    )
    model_status = st.from_vmodel(vmodel)
    assert model_status == {
        "transitionStatus": "UpToDate",
        "states": {"activeModelState": "Loaded"},
        "copies": {"failedCopies": 0, "totalCopies": 1},
    }
    status = st.isvc_status(model_status, st.Urls("grpc://h:8033", "http://h:8008"), 4, {}, now=0)
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("PredictorReady", "True"), ("Ready", "True")]
    assert status["url"] == "grpc://h:8033" and status["observedGeneration"] == 4 and st.settled(model_status)


def test_a_failed_new_target_blocks_the_transition_and_says_why() -> None:
    vmodel = mm.VModelStatusInfo(
        status=mm.VModelStatusInfo.TRANSITION_FAILED,
        activeModelId="old",
        targetModelId="new",
        activeModelStatus=_model_status(mm.ModelStatusInfo.LOADED),
        targetModelStatus=_model_status(
            mm.ModelStatusInfo.LOADING_FAILED, ("rt-1: no such file",), (("rt-1", mm.ModelStatusInfo.LOADING_FAILED),)
        ),
    )
    model_status = st.from_vmodel(vmodel)
    assert model_status["transitionStatus"] == "BlockedByFailedLoad"
    assert model_status["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    info = model_status["lastFailureInfo"]
    assert (info["reason"], info["location"], info["message"], info["modelRevisionName"]) == (
        "ModelLoadFailed",
        "rt-1",
        "no such file",
        "new",
    )
    assert info["time"] == "2023-11-14T22:13:20Z"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    loading = {"transitionStatus": "InProgress", "states": {"activeModelState": "Loading"}, "copies": {}}
    first = st.isvc_status(loading, None, 1, {}, now=100)
    again = st.isvc_status(loading, None, 1, first, now=200)
    assert again == first and not st.settled(loading)
    assert first["conditions"][1]["reason"] == "Loading"
    done = st.isvc_status({**loading, "states": {"activeModelState": "Loaded"}}, None, 1, first, now=300)
    assert done["conditions"][1]["lastTransitionTime"] == st.rfc3339(300)


def test_the_min_copies_annotation_is_a_count_and_not_the_models_spec() -> None:
    plain = spec_of({"storageUri": "s3://bucket/a.joblib"})
    kept = spec_of({"storageUri": "s3://bucket/a.joblib"}, annotations={"mesh.io/min-copies": "2"})
    assert (kept.min_copies, plain.min_copies) == (2, 0)
    assert kept.model_id == plain.model_id
    for bad in ("-1", "two", "65"):
        with pytest.raises(SpecError, match=f"mesh.io/min-copies must be a whole number from 0 to 64, not '{bad}'"):
            spec_of({"storageUri": "s3://bucket/a.joblib"}, annotations={"mesh.io/min-copies": bad})


def test_the_pinned_annotation_pins_the_model_and_is_not_its_spec() -> None:
    plain = spec_of({"storageUri": "s3://bucket/a.joblib"})
    pinned = spec_of({"storageUri": "s3://bucket/a.joblib"}, annotations={"mesh.io/pinned": "true"})
    assert pinned.pinned and not plain.pinned
    assert pinned.model_id == plain.model_id  # pinning is not a new model
    with pytest.raises(SpecError, match='mesh.io/pinned must be "true" or "false", not \'yes\''):
        spec_of({"storageUri": "s3://bucket/a.joblib"}, annotations={"mesh.io/pinned": "yes"})


def test_a_transformers_key_names_its_predictors_vmodel_as_the_controller_names_vmodels() -> None:
    """mesh.io/predictor on a custom model's InferenceService: its predict calls that InferenceService's model
    through the router, by the vmodel id the controller gives it (so it follows the predictor's new versions)."""
    custom = {"modelFormat": {"name": "custom"}, "storageUri": "s3://bucket/transformer/"}
    plain = spec_of(custom, annotations={"mesh.io/predictor": "iris-predictor"})
    namespaced = spec_of(custom, namespace="team-a", annotations={"mesh.io/predictor": "iris-predictor"},
                         vmodel_ids="namespaced")  # fmt: skip
    assert (plain.vmodel_id, namespaced.vmodel_id) == ("iris", "iris.team-a")
    assert parse_model_key(plain.key).predictor == "iris-predictor"
    assert parse_model_key(namespaced.key).predictor == "iris-predictor.team-a"
    assert parse_model_key(spec_of(custom).key).predictor is None
    assert spec_of(custom).model_id != plain.model_id  # another predictor is another model
    for bad in ("", "iris", "other-ns/iris"):
        with pytest.raises(SpecError, match="mesh.io/predictor names another InferenceService of this namespace"):
            spec_of(custom, annotations={"mesh.io/predictor": bad})
