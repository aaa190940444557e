"""Runtime selection (pure): the named runtime, autoSelect by format and version, namespace over cluster scope,
priority, and why nothing matched."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.controller.resources import (
    CLUSTER_SERVING_RUNTIME,
    SERVING_RUNTIME,
    Predictor,
    Runtime,
    SpecError,
    parse_predictor,
    parse_runtime,
)
from mesh.controller.selection import NoRuntime, select_runtime


def runtime(name: str, formats: list[dict[str, Any]], namespace: str = "", **spec: Any) -> Runtime:
    kind = SERVING_RUNTIME if namespace else CLUSTER_SERVING_RUNTIME
    body = {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"supportedModelFormats": formats, "multiModel": True, "containers": [{"name": "c"}], **spec},
    }
    return parse_runtime(body, kind)


def predictor(fmt: str = "sklearn", version: str | None = None, runtime_name: str | None = None) -> Predictor:
    model: dict[str, Any] = {"modelFormat": {"name": fmt}, "storageUri": "s3://bucket/model"}
    if version is not None:
        model["modelFormat"]["version"] = version
    if runtime_name is not None:
        model["runtime"] = runtime_name
    isvc = {"metadata": {"name": "iris", "namespace": "ns"}, "spec": {"predictor": {"model": model}}}
    return parse_predictor(isvc)


AUTO = [{"name": "sklearn", "version": "1", "autoSelect": True}]


def test_auto_select_takes_a_runtime_listing_the_format_with_auto_select() -> None:
    chosen = select_runtime(predictor("SKLearn"), [], [runtime("manual", [{"name": "sklearn"}]), runtime("auto", AUTO)])
    assert isinstance(chosen, Runtime) and chosen.name == "auto"


def test_a_namespace_runtime_comes_before_cluster_runtimes() -> None:
    chosen = select_runtime(predictor(), [runtime("local", AUTO, "ns")], [runtime("a-cluster", AUTO)])
    assert isinstance(chosen, Runtime) and chosen.kind == SERVING_RUNTIME and chosen.name == "local"


def test_a_namespace_runtime_shadows_the_cluster_runtime_of_the_same_name() -> None:
    local = runtime("same", [{"name": "sklearn"}], "ns")  # not auto-selectable
    chosen = select_runtime(predictor(), [local], [runtime("same", AUTO)])
    assert isinstance(chosen, NoRuntime) and chosen.reason == "NoSupportingRuntime"
    named = select_runtime(predictor(runtime_name="same"), [local], [runtime("same", AUTO)])
    assert named is local


def test_higher_priority_then_name_decides_among_matches() -> None:
    low = runtime("a", [{"name": "sklearn", "autoSelect": True, "priority": 1}])
    high = runtime("b", [{"name": "sklearn", "autoSelect": True, "priority": 5}])
    assert select_runtime(predictor(), [], [low, high]) is high
    assert select_runtime(predictor(), [], [runtime("z", AUTO), runtime("y", AUTO)]).name == "y"  # type: ignore[union-attr]


def test_a_version_must_match_when_the_predictor_gives_one() -> None:
    runtimes = [runtime("v1", AUTO), runtime("v2", [{"name": "sklearn", "version": "2", "autoSelect": True}])]
    assert select_runtime(predictor(version="2"), [], runtimes).name == "v2"  # type: ignore[union-attr]
    missing = select_runtime(predictor(version="3"), [], runtimes)
    assert isinstance(missing, NoRuntime) and "version 3" in missing.message


@pytest.mark.parametrize(
    ("spec", "reason"),
    [({"disabled": True}, "RuntimeDisabled"), ({"multiModel": False}, "RuntimeDisabled"), ({}, None)],
)
def test_disabled_and_single_model_runtimes_serve_nothing(spec: dict[str, Any], reason: str | None) -> None:
    only = runtime("only", AUTO, **spec)
    assert isinstance(select_runtime(predictor(), [], [only]), NoRuntime) == (reason is not None)
    named = select_runtime(predictor(runtime_name="only"), [], [only])
    assert (named.reason if isinstance(named, NoRuntime) else None) == reason


def test_a_named_runtime_must_exist_and_support_the_format() -> None:
    unknown = select_runtime(predictor(runtime_name="nope"), [], [runtime("auto", AUTO)])
    assert isinstance(unknown, NoRuntime) and unknown.reason == "RuntimeNotRecognized"
    wrong = select_runtime(predictor("onnx", runtime_name="auto"), [], [runtime("auto", AUTO)])
    assert isinstance(wrong, NoRuntime) and wrong.reason == "NoSupportingRuntime" and "'onnx'" in wrong.message


def test_the_older_framework_form_names_the_format() -> None:
    isvc = {
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"predictor": {"sklearn": {"storageUri": "s3://b/m"}}},
    }
    assert parse_predictor(isvc).model_format == "sklearn"


@pytest.mark.parametrize(
    ("predictor_spec", "message"),
    [
        ({}, "no model"),
        ({"model": {"storageUri": "s3://b/m"}}, "modelFormat.name"),
        ({"model": {"modelFormat": {"name": "sklearn"}}}, "names no model"),
        ({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/m", "storage": {"path": "p"}}}, "both"),
    ],
)
def test_predictors_that_cannot_be_served_say_why(predictor_spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_predictor({"metadata": {"name": "m", "namespace": "ns"}, "spec": {"predictor": predictor_spec}})
